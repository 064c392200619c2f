"""The trio memcached client over real sockets: against Debian's memcached, and against small fake servers
that stay silent, reset connections or come back after being down."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from sesh.net.memcache_client import NodeClient, StoreError, StoreNodeAddress, StoreTimeout, StoreUnavailable
from sesh.protocol.memcache_client import Get, Store, Values, Version, VersionReply
from tests.procs import MemcachedProcess, free_port


def client_for(port: int, **kwargs: float) -> NodeClient:
    return NodeClient(StoreNodeAddress("n1", "127.0.0.1", port), **kwargs)  # type: ignore[arg-type]


async def test_operations_against_memcached(memcached: Callable[..., MemcachedProcess]) -> None:
    client = client_for(memcached().port)
    try:
        assert (await client.version()).startswith("1.")
        assert await client.get(b"k") is None
        assert await client.store("add", b"k", b"one", 60) == "STORED"
        assert await client.store("add", b"k", b"two", 60) == "NOT_STORED"
        item = await client.get(b"k")
        assert item is not None and item.value == b"one" and item.cas_unique is not None
        assert await client.store("cas", b"k", b"two", 60, cas_unique=item.cas_unique) == "STORED"
        # The CAS value changed with the write, so a second write based on the first read is detected.
        assert await client.store("cas", b"k", b"three", 60, cas_unique=item.cas_unique) == "EXISTS"
        assert (await client.get(b"k")).value == b"two"  # type: ignore[union-attr]
        assert await client.touch(b"k", 120)
        assert await client.delete(b"k")
        assert not await client.delete(b"k")
        assert await client.store("cas", b"k", b"x", 60, cas_unique=item.cas_unique) == "NOT_FOUND"
        await client.store("set", b"a", b"\r\nEND\r\n", 60)
        values = await client.get_many([b"a", b"missing", b"b"])
        assert [v.value for v in values.items] == [b"\r\nEND\r\n"]
    finally:
        await client.aclose()


async def test_server_errors_are_store_errors_not_node_failures(memcached: Callable[..., MemcachedProcess]) -> None:
    client = client_for(memcached().port)
    try:
        with pytest.raises(StoreError, match="SERVER_ERROR"):  # above memcached's default -I 1m
            await client.store("set", b"big", b"x" * (2 * 1024 * 1024), 60)
        assert client.available()
        assert client.statistics().failures == 0
    finally:
        await client.aclose()


async def test_concurrent_calls_pipeline_on_a_bounded_pool(memcached: Callable[..., MemcachedProcess]) -> None:
    client = NodeClient(StoreNodeAddress("n1", "127.0.0.1", memcached().port), max_connections=2)
    try:
        for i in range(20):
            await client.store("set", b"k%d" % i, b"v%d" % i, 60)
        results: dict[int, bytes] = {}

        async def read(i: int) -> None:
            item = await client.get(b"k%d" % (i % 20))
            assert item is not None
            results[i] = item.value

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(read, i)
        assert results == {i: b"v%d" % (i % 20) for i in range(200)}
        assert client.statistics().connections == 2
        # One call can also pipeline several requests itself.
        replies = await client.call([Store("set", b"p", b"1", 60), Get((b"p",)), Version()])
        assert isinstance(replies[1], Values) and replies[1].items[0].value == b"1"
        assert isinstance(replies[2], VersionReply)
    finally:
        await client.aclose()


async def test_down_node_fails_fast_then_is_probed_again() -> None:
    port = free_port()  # nothing listens here
    client = client_for(port, availability_ttl=0.2, max_backoff=0.4)
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await client.version()
    assert not client.available()
    # Marked down: the next call does not even try to connect.
    with pytest.raises(StoreUnavailable, match="marked down"):
        await client.version()
    assert client.statistics().failures == 1

    async def answer_versions(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(1024):
            await stream.send_all(b"VERSION fake\r\n" * data.count(b"\r\n"))

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, answer_versions, listeners)
        await trio.sleep(0.25)
        assert client.available()
        assert await client.version() == "fake"
        stats = client.statistics()
        assert stats.available and stats.recoveries == 1 and stats.consecutive_failures == 0
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_silent_node_times_out_within_the_operation_timeout() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, silent, listeners)
        client = client_for(port, operation_timeout=0.2)
        started = trio.current_time()
        with pytest.raises(StoreTimeout, match=r"no answer within 0\.2s"):
            await client.get(b"k")
        assert trio.current_time() - started < 1.0
        stats = client.statistics()
        assert stats.timeouts == 1 and not stats.available and stats.connections == 0
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_resetting_node_is_a_failure() -> None:
    async def reset(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, reset, listeners)
        client = client_for(port)
        with pytest.raises(StoreUnavailable, match=r"closed the connection|reset"):
            await client.get(b"k")
        assert client.statistics().failures == 1
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_garbage_reply_is_a_failure() -> None:
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.send_all(b"HELLO WORLD\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, garbage, listeners)
        client = client_for(port)
        with pytest.raises(StoreUnavailable, match="expected VERSION"):
            await client.version()
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_cancelled_call_drops_its_connection(memcached: Callable[..., MemcachedProcess]) -> None:
    client = client_for(memcached().port)
    try:
        await client.store("set", b"k", b"v", 60)
        with trio.move_on_after(0):
            await client.get(b"k")
        # Whatever state the cancelled call left, the next call gets a connection in step.
        assert (await client.get(b"k")).value == b"v"  # type: ignore[union-attr]
        assert client.statistics().failures == 0
    finally:
        await client.aclose()


async def test_idle_connection_closed_by_the_node_is_replaced_transparently() -> None:
    """A node that restarted (or dropped idle connections) is not a failure: the request is resent."""
    connections: list[trio.CancelScope] = []

    async def versions(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.CancelScope() as scope:
                connections.append(scope)
                while data := await stream.receive_some(1024):
                    await stream.send_all(b"VERSION 1\r\n" * data.count(b"\r\n"))

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, versions, listeners)
        client = client_for(port)
        assert await client.version() == "1"
        connections[0].cancel()  # the node drops the idle connection
        await trio.sleep(0.05)
        assert await client.version() == "1"
        stats = client.statistics()
        assert stats.failures == 0 and stats.available and len(connections) == 2
        await client.aclose()
        nursery.cancel_scope.cancel()
