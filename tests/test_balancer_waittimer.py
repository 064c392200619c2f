"""The WaitTimer the balancer uses to time its waits for members and its keep-alive waits: one task
instead of a cancel scope (or a moved deadline) per wait. Real loopback sockets."""

from __future__ import annotations

import math

import trio

from sesh.net.fdstream import FdStream, WaitTimer
from sesh.net.shutdown import Shutdown


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_timed_receive_returns_data_or_none_after_its_timeout(nursery: trio.Nursery) -> None:
    timer = WaitTimer()
    await nursery.start(timer.run)
    client, server = await _pair()
    io = FdStream(server)

    async def later() -> None:
        await trio.sleep(0.05)
        await client.send_all(b"later")

    nursery.start_soon(later)
    assert await io.receive_some(5, park_first=True, timer=timer) == b"later"
    start = trio.current_time()
    with trio.fail_after(2):
        assert await io.receive_some(0.1, timer=timer) is None
    assert trio.current_time() - start >= 0.1
    await client.aclose()
    await server.aclose()


async def test_waits_with_different_timeouts_expire_in_deadline_order(nursery: trio.Nursery) -> None:
    timer = WaitTimer()
    await nursery.start(timer.run)
    pairs = [await _pair() for _ in range(3)]
    ended: list[float] = []

    async def wait(io: FdStream, timeout: float) -> None:
        assert await io.receive_some(timeout, timer=timer) is None
        ended.append(timeout)

    with trio.fail_after(3):
        async with trio.open_nursery() as waits:
            # The long wait is started first: the timer must still wake for the shorter ones.
            for (_, server), timeout in zip(pairs, (0.3, 0.1, 0.2), strict=True):
                waits.start_soon(wait, FdStream(server), timeout)
    assert ended == [0.1, 0.2, 0.3]
    for client, server in pairs:
        await client.aclose()
        await server.aclose()


async def test_idle_wait_expiry_cancels_the_guard(nursery: trio.Nursery) -> None:
    timer = WaitTimer()
    await nursery.start(timer.run)
    client, server = await _pair()
    io = FdStream(server)
    with trio.fail_after(2):
        with trio.CancelScope() as guard:
            await io.receive_idle(guard, 0.1, Shutdown(), timer=timer)
    assert guard.cancelled_caught
    assert guard.deadline == math.inf  # the timer ended it, not a deadline
    await client.aclose()
    await server.aclose()


async def test_timer_not_running_falls_back_to_a_cancel_scope() -> None:
    client, server = await _pair()
    io = FdStream(server)
    with trio.fail_after(2):
        assert await io.receive_some(0.05, timer=WaitTimer()) is None
    await client.aclose()
    await server.aclose()
