"""FdStream and its WaitTimer over real loopback TCP sockets: reads, parks, timeouts (which timer ended
a wait), EOF, resets, closes, partial writes, fairness, and the idle wait's expiry and shutdown."""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
import trio

from sesh.net.fdstream import MAX_RECEIVES_WITHOUT_YIELD, RECEIVE_SIZE, FdStream, SendTimeout, WaitTimer
from sesh.net.shutdown import Shutdown


@pytest.fixture
async def timer(nursery: trio.Nursery) -> WaitTimer:
    """The one mechanism that times every parked wait, running for the test."""
    timer = WaitTimer()
    await nursery.start(timer.run)
    return timer


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_receives_what_is_there_and_parks_for_the_rest(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    await client.send_all(b"ready")
    assert await io.receive_some() == b"ready"

    async def later() -> None:
        await trio.sleep(0.05)
        await client.send_all(b"later")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        assert await io.receive_some(5, park_first=True) == b"later"
    await client.aclose()
    assert await io.receive_some() == b""  # EOF
    await server.aclose()


async def test_receive_timeout_returns_none(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    with trio.fail_after(2):
        assert await io.receive_some(0.05) is None
    await client.aclose()
    await server.aclose()


async def test_reset_is_broken_resource(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    # SO_LINGER 0: close() sends RST instead of FIN.
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    await trio.sleep(0.05)
    with pytest.raises(trio.BrokenResourceError):
        await io.receive_some(1)
    await server.aclose()


async def test_send_to_a_gone_peer_is_broken_resource(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    await trio.sleep(0.05)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(10):
            await io.send_all(b"x" * 1000)
    await server.aclose()


async def test_closed_socket_is_closed_resource_even_while_parked(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)

    async def close_soon() -> None:
        await trio.sleep(0.05)
        io.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await io.receive_some(5)
    with pytest.raises(trio.ClosedResourceError):
        await io.receive_some(5)
    with pytest.raises(trio.ClosedResourceError):
        await io.receive_some(5, park_first=True)
    with pytest.raises(trio.ClosedResourceError):
        await io.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await io.send_parts([b"x", b"y"])
    await client.aclose()


async def test_large_send_completes_through_partial_writes(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    data = bytes(range(256)) * 40_000  # 10 MB: far more than any socket buffer
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(data):
            chunk = await client.receive_some(RECEIVE_SIZE)
            assert chunk
            received.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await io.send_all(data)
    assert bytes(received) == data
    await client.aclose()
    await server.aclose()


async def test_two_receivers_are_busy(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(io.receive_some)
        await trio.sleep(0.02)
        with pytest.raises(trio.BusyResourceError):
            await io.receive_some()
        await client.send_all(b"x")
    await client.aclose()
    await server.aclose()


async def test_cancelled_caller_is_cancelled_even_when_data_is_there(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    await client.send_all(b"x")
    await trio.sleep(0.02)
    with trio.CancelScope() as scope:
        scope.cancel()
        await io.receive_some()
    assert scope.cancelled_caught
    assert await io.receive_some() == b"x"  # nothing was lost
    await client.aclose()
    await server.aclose()


async def test_a_reader_that_never_parks_still_yields(timer: WaitTimer) -> None:
    writer, reader = socket.socketpair()
    io = FdStream(trio.SocketStream(trio.socket.from_stdlib_socket(reader)), timer)
    other_ran = 0

    async def other() -> None:
        nonlocal other_ran
        while True:
            other_ran += 1
            await trio.lowlevel.checkpoint()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.sleep(0.01)
            before = other_ran
            # trio orders each batch of runnable tasks at random, so one yield may not let the other
            # task run before this loop ends; forty yields all missing it is a one-in-a-trillion chance.
            for _ in range(MAX_RECEIVES_WITHOUT_YIELD * 40):
                writer.send(b"y")  # always something there: each read returns without parking
                assert await io.receive_some() == b"y"
            assert other_ran > before
            nursery.cancel_scope.cancel()
    finally:
        writer.close()
        io.close()


async def test_idle_wait_expires_without_touching_the_guard(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    shutdown = Shutdown()
    with trio.CancelScope() as guard:
        await client.send_all(b"first")
        assert await io.receive_idle(guard, 0.05, shutdown) == b"first"
        assert guard.deadline == float("inf")
        assert await io.receive_idle(guard, 0.05, shutdown, park_first=True) is None
    assert not guard.cancel_called  # an expiry is the timer's answer, not a cancellation
    await client.aclose()
    await server.aclose()


async def test_idle_guard_is_cancelled_by_shutdown(timer: WaitTimer) -> None:
    client, server = await _pair()
    io = FdStream(server, timer)
    shutdown = Shutdown()

    async def stop_soon() -> None:
        await trio.sleep(0.05)
        shutdown.request()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_soon)
        with trio.CancelScope() as guard:
            await io.receive_idle(guard, 60, shutdown, park_first=True)
        assert guard.cancelled_caught
    await client.aclose()
    await server.aclose()


# -- the WaitTimer: one task times every parked wait (these tests were tests/test_balancer_waittimer.py) --


class _RecordingTimer(WaitTimer):
    """A WaitTimer that records which waits it ended, so a test can tell who ended a wait."""

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[tuple[FdStream, str]] = []

    def _expire(self, side: Any) -> None:
        self.ended.append((side.stream, "receive" if side is side.stream._rx else "send"))
        super()._expire(side)


async def test_timed_receive_returns_data_or_none_after_its_timeout(nursery: trio.Nursery) -> None:
    timer = _RecordingTimer()
    await nursery.start(timer.run)
    client, server = await _pair()
    io = FdStream(server, timer)

    async def later() -> None:
        await trio.sleep(0.05)
        await client.send_all(b"later")

    nursery.start_soon(later)
    assert await io.receive_some(5, park_first=True) == b"later"
    assert timer.ended == []  # the data ended that wait, not the timer
    start = trio.current_time()
    # The caller's own scope is far longer: only the timer can end this wait at 0.1 s.
    with trio.fail_after(2):
        assert await io.receive_some(0.1) is None
    assert trio.current_time() - start >= 0.1
    assert timer.ended == [(io, "receive")]  # it was this stream's receive the timer ended
    await client.aclose()
    await server.aclose()


async def test_waits_with_different_timeouts_expire_in_deadline_order(timer: WaitTimer) -> None:
    pairs = [await _pair() for _ in range(3)]
    ended: list[float] = []

    async def wait(io: FdStream, after: float) -> None:
        assert await io.receive_some(after) is None
        ended.append(after)

    with trio.fail_after(3):
        async with trio.open_nursery() as waits:
            # The long wait is started first: the timer must still wake for the shorter ones.
            for (_, server), after in zip(pairs, (0.3, 0.1, 0.2), strict=True):
                waits.start_soon(wait, FdStream(server, timer), after)
    assert ended == [0.1, 0.2, 0.3]
    for client, server in pairs:
        await client.aclose()
        await server.aclose()


async def test_a_send_timeout_leaves_the_receive_on_the_same_socket_waiting(nursery: trio.Nursery) -> None:
    timer = _RecordingTimer()
    await nursery.start(timer.run)
    client, server = await _pair()
    io = FdStream(server, timer)
    received: list[bytes | None] = []

    async def receive() -> None:
        received.append(await io.receive_some())  # untimed: woken by the send's expiry, parks again

    nursery.start_soon(receive)
    await trio.sleep(0.02)
    with trio.fail_after(5), pytest.raises(SendTimeout):
        await io.send_all(b"x" * (64 * 1024 * 1024), 0.1)  # the client reads nothing
    assert timer.ended == [(io, "send")]
    await trio.sleep(0.05)
    assert received == []
    await client.send_all(b"still here")
    await trio.sleep(0.05)
    assert received == [b"still here"]
    await client.aclose()
    await server.aclose()


async def test_a_timed_wait_needs_a_running_timer() -> None:
    client, server = await _pair()
    io = FdStream(server, WaitTimer())
    with trio.fail_after(2), pytest.raises(RuntimeError):
        await io.receive_some(0.05)
    await client.aclose()
    await server.aclose()
