"""FdStream's waits timed by a WaitTimer (sesh/net/fdstream.py), as the balancer times its waits for
members and its keep-alive waits: one task instead of a cancel scope (or a moved deadline) per wait.
Real loopback sockets, on trio's MockClock (the clock jumps whenever every task waits).

Each test tells which timer ended a wait: only the WaitTimer sets the stream's ``_timed_out`` (it ends
the wait through notify_closing on the socket), while the fallback for a timer that is not running is a
cancel scope, which leaves it alone."""

from __future__ import annotations

import math

import trio
import trio.testing

from sesh.net.fdstream import FdStream, WaitTimer
from sesh.net.shutdown import Shutdown


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_timed_receive_returns_data_or_none_after_its_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    timer = WaitTimer()
    await nursery.start(timer.run)
    client, server = await _pair()
    io = FdStream(server)

    async def later() -> None:
        await trio.sleep(0.05)
        await client.send_all(b"later")

    nursery.start_soon(later)
    assert await io.receive_some(5, park_first=True, timer=timer) == b"later"
    assert not io._timed_out
    start = trio.current_time()
    with trio.fail_after(2):
        assert await io.receive_some(0.1, timer=timer) is None
    assert math.isclose(trio.current_time() - start, 0.1)
    assert io._timed_out  # the WaitTimer ended it, not a cancel scope
    await client.aclose()
    await server.aclose()


async def test_waits_with_different_timeouts_expire_in_deadline_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    timer = WaitTimer()
    await nursery.start(timer.run)
    pairs = [await _pair() for _ in range(3)]
    ended: list[tuple[float, float]] = []
    start = trio.current_time()

    async def wait(io: FdStream, timeout: float) -> None:
        assert await io.receive_some(timeout, timer=timer) is None
        assert io._timed_out
        ended.append((timeout, trio.current_time() - start))

    with trio.fail_after(3):
        async with trio.open_nursery() as waits:
            # The long wait is started first: the timer must still wake for the shorter ones.
            for (_, server), timeout in zip(pairs, (0.3, 0.1, 0.2), strict=True):
                waits.start_soon(wait, FdStream(server), timeout)
    assert [timeout for timeout, _ in ended] == [0.1, 0.2, 0.3]
    for timeout, after in ended:
        assert math.isclose(after, timeout)
    for client, server in pairs:
        await client.aclose()
        await server.aclose()


async def test_idle_wait_expiry_cancels_the_guard(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
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


async def test_timer_not_running_falls_back_to_a_cancel_scope(autojump_clock: trio.testing.MockClock) -> None:
    client, server = await _pair()
    io = FdStream(server)
    start = trio.current_time()
    with trio.fail_after(2):
        assert await io.receive_some(0.05, timer=WaitTimer()) is None
    assert math.isclose(trio.current_time() - start, 0.05)
    assert not io._timed_out  # a cancel scope ended it
    await client.aclose()
    await server.aclose()
