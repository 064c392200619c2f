"""The accept loop's connection cap, over real loopback sockets (in-process server on port 0)."""

from __future__ import annotations

import logging
import resource
from functools import partial

import pytest
import trio

from sesh.net.server import FD_HEADROOM, ConnectionCounter, default_connection_limit, open_listeners, serve_connections
from sesh.net.shutdown import Shutdown


def test_default_cap_stays_below_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = default_connection_limit()
    assert 8 <= limit <= max(8, soft - FD_HEADROOM)
    assert default_connection_limit(2) <= limit // 2 + 1


async def test_over_the_cap_a_connection_is_answered_and_closed_while_the_others_are_served(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    listeners = await open_listeners("127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    counter = ConnectionCounter(2)

    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(1024):
            await stream.send_all(data)

    shutdown = Shutdown()
    nursery.start_soon(partial(serve_connections, listeners, echo, shutdown, counter, refusal=b"busy\n"))
    held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    for stream in held:
        await stream.send_all(b"ping")
        assert await stream.receive_some(10) == b"ping"
    with caplog.at_level(logging.WARNING):
        refused = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await refused.receive_some(10) == b"busy\n"
            assert await refused.receive_some(10) == b""
    await refused.aclose()
    assert counter.statistics().refused_connections == 1
    assert any("connection limit reached" in r.getMessage() for r in caplog.records)
    await held[0].send_all(b"still")  # the connections inside the cap are unaffected
    assert await held[0].receive_some(10) == b"still"
    await held[1].aclose()
    with trio.fail_after(5):
        # The closed connection's handler ends on its own time; the counter is a plain int.
        while counter.current > 1:  # noqa: ASYNC110
            await trio.sleep(0.01)
    again = await trio.open_tcp_stream("127.0.0.1", port)
    await again.send_all(b"in")
    assert await again.receive_some(10) == b"in"
    for stream in (held[0], again):
        await stream.aclose()
    shutdown.request()
