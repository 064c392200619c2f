"""FdStream over real loopback TCP sockets: reads, parks, timeouts, EOF, resets, closes, partial
writes, fairness, and the idle guard's expiry and shutdown."""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from sesh.net.fdstream import MAX_RECEIVES_WITHOUT_YIELD, RECEIVE_SIZE, FdStream
from sesh.net.shutdown import Shutdown


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_receives_what_is_there_and_parks_for_the_rest() -> None:
    client, server = await _pair()
    io = FdStream(server)
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


async def test_receive_timeout_returns_none() -> None:
    client, server = await _pair()
    io = FdStream(server)
    with trio.fail_after(2):
        assert await io.receive_some(0.05) is None
    await client.aclose()
    await server.aclose()


async def test_reset_is_broken_resource() -> None:
    client, server = await _pair()
    io = FdStream(server)
    # SO_LINGER 0: close() sends RST instead of FIN.
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    await trio.sleep(0.05)
    with pytest.raises(trio.BrokenResourceError):
        await io.receive_some(1)
    await server.aclose()


async def test_send_to_a_gone_peer_is_broken_resource() -> None:
    client, server = await _pair()
    io = FdStream(server)
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()
    await trio.sleep(0.05)
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(10):
            await io.send_all(b"x" * 1000)
    await server.aclose()


async def test_closed_socket_is_closed_resource_even_while_parked() -> None:
    client, server = await _pair()
    io = FdStream(server)

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
        await io.send_all(b"x")
    await client.aclose()


async def test_large_send_completes_through_partial_writes() -> None:
    client, server = await _pair()
    io = FdStream(server)
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


async def test_two_receivers_are_busy() -> None:
    client, server = await _pair()
    io = FdStream(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(io.receive_some)
        await trio.sleep(0.02)
        with pytest.raises(trio.BusyResourceError):
            await io.receive_some()
        await client.send_all(b"x")
    await client.aclose()
    await server.aclose()


async def test_cancelled_caller_is_cancelled_even_when_data_is_there() -> None:
    client, server = await _pair()
    io = FdStream(server)
    await client.send_all(b"x")
    await trio.sleep(0.02)
    with trio.CancelScope() as scope:
        scope.cancel()
        await io.receive_some()
    assert scope.cancelled_caught
    assert await io.receive_some() == b"x"  # nothing was lost
    await client.aclose()
    await server.aclose()


async def test_a_reader_that_never_parks_still_yields() -> None:
    writer, reader = socket.socketpair()
    io = FdStream(trio.SocketStream(trio.socket.from_stdlib_socket(reader)))
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


async def test_idle_guard_expires_and_resets() -> None:
    client, server = await _pair()
    io = FdStream(server)
    shutdown = Shutdown()
    with trio.CancelScope() as guard:
        await client.send_all(b"first")
        assert await io.receive_idle(guard, 0.05, shutdown) == b"first"
        assert guard.deadline == float("inf")
        await io.receive_idle(guard, 0.05, shutdown, park_first=True)
        raise AssertionError("the guard should have expired")
    assert guard.cancelled_caught
    await client.aclose()
    await server.aclose()


async def test_idle_guard_is_cancelled_by_shutdown() -> None:
    client, server = await _pair()
    io = FdStream(server)
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
