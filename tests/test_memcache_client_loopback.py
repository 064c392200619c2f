"""The trio memcached client over real sockets: against Debian's memcached, and against small fake servers
that stay silent, reset connections or come back after being down."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from sesh.net.fdstream import WaitTimer
from sesh.net.memcache_client import (
    NodeClient,
    StoreError,
    StoreNodeAddress,
    StoreTimeout,
    StoreUnavailable,
    call_each,
)
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


async def test_down_node_fails_fast_then_is_probed_again(autojump_clock: trio.testing.MockClock) -> None:
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


@pytest.mark.parametrize("timed", [False, True], ids=["cancel-scope", "wait-timer"])
async def test_silent_node_times_out_within_the_operation_timeout(
    autojump_clock: trio.testing.MockClock, timed: bool
) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, silent, listeners)
        timer = WaitTimer()
        if timed:
            await nursery.start(timer.run)
        client = NodeClient(StoreNodeAddress("n1", "127.0.0.1", port), operation_timeout=0.2, timer=timer)
        assert client.timed() == timed
        started = trio.current_time()
        with pytest.raises(StoreTimeout, match=r"no answer within 0\.2s"):
            await client.get(b"k")
        assert 0.2 <= trio.current_time() - started < 1.0
        stats = client.statistics()
        assert stats.timeouts == 1 and not stats.available and stats.connections == 0
        await client.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("timed", [False, True], ids=["cancel-scope", "wait-timer"])
async def test_call_each_sends_to_every_node_before_reading_and_keeps_their_outcomes_apart(
    autojump_clock: trio.testing.MockClock, timed: bool
) -> None:
    """Two nodes that answer only once *both* have their request (so calls made one after the other
    would time out) and a silent one in between: one round trip, and the silent node's timeout is its
    own."""
    arrived = [trio.Event(), trio.Event()]

    def answering(number: int) -> Callable[[trio.SocketStream], Awaitable[None]]:
        async def server(stream: trio.SocketStream) -> None:
            while data := await stream.receive_some(4096):
                arrived[number].set()
                for event in arrived:
                    await event.wait()
                await stream.send_all(b"VERSION %d\r\n" % number * data.count(b"\r\n"))
        return server

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        ports = []
        for handler in (answering(0), silent, answering(1)):
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            ports.append(listeners[0].socket.getsockname()[1])
            nursery.start_soon(trio.serve_listeners, handler, listeners)
        timer = WaitTimer()
        if timed:
            await nursery.start(timer.run)
        clients = [NodeClient(StoreNodeAddress(f"n{i}", "127.0.0.1", port), operation_timeout=0.2, timer=timer)
                   for i, port in enumerate(ports)]
        started = trio.current_time()
        outcomes = await call_each([(client, [Version()]) for client in clients])
        assert trio.current_time() - started < 1.0
        assert outcomes[0] == [VersionReply("0")] and outcomes[2] == [VersionReply("1")]
        assert isinstance(outcomes[1], StoreTimeout)
        assert [c.available() for c in clients] == [True, False, True]
        assert [c.statistics().connections for c in clients] == [1, 0, 1]
        for client in clients:
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


class VersionNode:
    """A store node on a loopback port that answers every line with ``VERSION 1``; it keeps each accepted
    connection and the cancel scope that closes it."""

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []
        self.scopes: list[trio.CancelScope] = []
        self.port = 0

    async def serve(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, self._versions, listeners)

    async def _versions(self, stream: trio.SocketStream) -> None:
        self.streams.append(stream)
        async with stream:
            with trio.CancelScope() as scope:
                self.scopes.append(scope)
                while data := await stream.receive_some(1024):
                    await stream.send_all(b"VERSION 1\r\n" * data.count(b"\r\n"))


async def test_idle_connection_closed_by_the_node_is_replaced_transparently() -> None:
    """A node that restarted (or dropped idle connections) is not a failure: the request is resent."""
    node = VersionNode()
    async with trio.open_nursery() as nursery:
        await node.serve(nursery)
        client = client_for(node.port)
        assert await client.version() == "1"
        node.scopes[0].cancel()  # the node drops the idle connection
        await trio.sleep(0.05)
        assert await client.version() == "1"
        stats = client.statistics()
        assert stats.failures == 0 and stats.available and len(node.streams) == 2
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_connections_reset_by_the_node_are_replaced_even_when_the_send_fails() -> None:
    """A node that reset its connections (SO_LINGER 0: the RST is already in, so the next send on a
    pooled connection fails, not its read): the request goes out once more on a new connection, and
    the node is not marked down. Every idle connection is as old, so none of them is tried."""
    import socket
    import struct

    node = VersionNode()
    async with trio.open_nursery() as nursery:
        await node.serve(nursery)
        client = client_for(node.port)
        async with trio.open_nursery() as calls:  # two connections in the pool
            for _ in range(2):
                calls.start_soon(client.version)
        assert len(node.streams) == 2
        for stream, scope in zip(node.streams, node.scopes, strict=True):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            scope.cancel()  # closed with linger 0: a reset
        await trio.sleep(0.05)
        assert await client.version() == "1"
        stats = client.statistics()
        assert stats.failures == 0 and stats.available and len(node.streams) == 3
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_call_behind_a_slow_one_ends_within_its_own_operation_timeout() -> None:
    """The operation timeout bounds the whole call, also when it first waited for the call ahead of it on
    the same connection: behind a call to a node that never answers, it fails one timeout after it
    started (a fresh timeout once the call ahead has ended would take it to twice that)."""
    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(1024):
                pass

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, silent, listeners)
        timer = WaitTimer()
        await nursery.start(timer.run)
        client = NodeClient(StoreNodeAddress("n", "127.0.0.1", port), operation_timeout=1.0, max_connections=1,
                            timer=timer)
        ended: list[float] = []
        started = trio.current_time()

        async def call() -> None:
            with pytest.raises(StoreUnavailable):
                await client.version()
            ended.append(trio.current_time() - started)

        async with trio.open_nursery() as calls:
            calls.start_soon(call)
            await trio.sleep(0.05)
            calls.start_soon(call)  # pipelined behind the first on the one connection
        assert len(ended) == 2 and ended[1] < 1.6, ended
        await client.aclose()
        nursery.cancel_scope.cancel()


def _stat(port: int, name: bytes) -> int:
    """One counter of memcached's ``stats``, read on a connection of its own."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            data += sock.recv(65536)
    for line in data.split(b"\r\n"):
        parts = line.split(b" ")
        if len(parts) == 3 and parts[1] == name:
            return int(parts[2])
    raise AssertionError(f"no stat {name!r}")


async def test_numbers_memcached_cannot_parse_are_refused_before_sending(
    memcached: Callable[..., MemcachedProcess],
) -> None:
    """The issue's ``cas KEY 0 1000000000000000019884624838656 ...``: memcached answers CLIENT_ERROR and
    then runs the value as commands. Here the value is a command deleting another user's key."""
    mc = memcached()
    client = client_for(mc.port)
    try:
        await client.store("set", b"victim", b"someone else's session", 60)
        item = await client.get(b"k")
        assert item is None
        await client.store("set", b"k", b"v", 60)
        item = await client.get(b"k")
        assert item is not None and item.cas_unique is not None
        sets = _stat(mc.port, b"cmd_set")
        with pytest.raises(StoreError, match="refused: exptime"):
            await client.store(
                "cas", b"k", b"delete victim", 1000000000000000019884624838656, cas_unique=item.cas_unique
            )
        with pytest.raises(StoreError, match="refused: exptime"):
            await client.touch(b"k", 1 << 31)
        assert _stat(mc.port, b"cmd_set") == sets  # nothing was sent
        assert (await client.get(b"victim")).value == b"someone else's session"  # type: ignore[union-attr]
        stats = client.statistics()
        assert stats.available and stats.failures == 0
    finally:
        await client.aclose()


async def test_error_replies_drop_the_connection_and_fail_the_calls_behind_as_store_errors() -> None:
    """A server that did not parse a request (ERROR/CLIENT_ERROR) is out of step: that call and the
    ones pipelined behind it fail as store errors, the connection is closed, the next call gets a new
    one, and the node is not marked down for it."""
    opened: list[int] = []
    closed = trio.Event()

    async def server(stream: trio.SocketStream) -> None:
        number = len(opened)
        opened.append(number)
        try:
            buffered = b""
            while data := await stream.receive_some(4096):
                buffered += data
                if number == 0:
                    if buffered.count(b"\r\n") < 3:  # both pipelined calls sent (set + data, version)
                        continue
                    # A CLIENT_ERROR for the set, then ERROR for its value read as a command.
                    await stream.send_all(b"CLIENT_ERROR bad command line format\r\nERROR\r\nVERSION x\r\n")
                    buffered = b""
                else:
                    await stream.send_all(b"VERSION fine\r\n" * buffered.count(b"\r\n"))
                    buffered = b""
        finally:
            if number == 0:
                closed.set()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, server, listeners)
        client = NodeClient(StoreNodeAddress("n1", "127.0.0.1", port), max_connections=1)
        outcomes: dict[str, BaseException | object] = {}

        async def run(name: str, call: Callable[[], object]) -> None:
            try:
                outcomes[name] = await call()  # type: ignore[misc]
            except Exception as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as calls:
            calls.start_soon(run, "set", lambda: client.store("set", b"k", b"v", 60))
            await trio.sleep(0.05)  # the version is pipelined behind the set on the one connection
            calls.start_soon(run, "version", client.version)
        assert isinstance(outcomes["set"], StoreError) and "CLIENT_ERROR" in str(outcomes["set"])
        assert isinstance(outcomes["version"], StoreError), outcomes["version"]
        assert not isinstance(outcomes["version"], StoreUnavailable)
        assert client.statistics().connections == 0
        with trio.fail_after(5):
            await closed.wait()  # the client really closed the connection it could not trust
        assert await client.version() == "fine"
        stats = client.statistics()
        assert opened == [0, 1] and stats.available and stats.failures == 0
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_bytes_beyond_the_replies_asked_for_never_reach_the_next_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    opened: list[int] = []

    async def server(stream: trio.SocketStream) -> None:
        number = len(opened)
        opened.append(number)
        while data := await stream.receive_some(4096):
            reply = b"VERSION %d\r\n" % number
            # The first connection answers twice: a broken server, or one that read a value as a command.
            await stream.send_all(reply * data.count(b"\r\n") + (b"VERSION stale\r\n" if number == 0 else b""))

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, server, listeners)
        client = client_for(port, availability_ttl=0.05, max_backoff=0.05)
        # Sent together, so the extra bytes arrive with the reply and are seen at once.
        with pytest.raises(StoreUnavailable, match="unsolicited"):
            await client.version()
        await trio.sleep(0.1)
        assert await client.version() == "1"
        assert opened == [0, 1]
        await client.aclose()
        nursery.cancel_scope.cancel()
