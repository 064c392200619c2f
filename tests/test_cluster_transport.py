"""The cluster transport over real loopback sockets, in-process: receiver, links, limits, stalls."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from sesh.net.cluster_transport import (
    PeerLink,
    PeerUnavailable,
    Replier,
    TransportCounters,
    open_receiver,
    probe,
    serve_receiver,
)
from sesh.protocol.cluster import KIND_ACCESSED, KIND_PROPOSE, NONCE_SIZE, Frame, Hello, StreamCodec
from tests.procs import free_port

SECRET = b"transport-secret"


def echo_dispatch(seen: list[Frame]) -> Callable[[Frame, Replier], Callable[[], Awaitable[None]] | None]:
    def dispatch(frame: Frame, replier: Replier) -> Callable[[], Awaitable[None]] | None:
        seen.append(frame)
        if frame.ref:
            replier.reply_nowait(frame.ref, b"re:" + frame.payload)
        return None

    return dispatch


async def start_receiver(nursery: trio.Nursery, secret: bytes | None, seen: list[Frame],
                         counters: TransportCounters) -> int:
    listener = await open_receiver("127.0.0.1", 0, 1)
    port: int = listener.socket.getsockname()[1]
    await nursery.start(lambda task_status: serve_receiver(
        listener, secret, echo_dispatch(seen), counters, send_timeout=2, task_status=task_status))
    return port


def link_to(port: int, secret: bytes | None, counters: TransportCounters, **kw: int | float) -> PeerLink:
    return PeerLink("127.0.0.1", port, secret, counters, send_timeout=kw.pop("send_timeout", 2),
                    connect_timeout=2, **kw)  # type: ignore[arg-type]


async def test_requests_get_their_replies_and_one_way_frames_arrive_in_order() -> None:
    seen: list[Frame] = []
    server, client = TransportCounters(), TransportCounters()
    async with trio.open_nursery() as nursery:
        port = await start_receiver(nursery, SECRET, seen, server)
        link = link_to(port, SECRET, client)
        nursery.start_soon(link.run)
        for i in range(5):
            assert link.send_nowait(KIND_ACCESSED, b"%d" % i)
        replies = []

        async def ask(i: int) -> None:
            replies.append((await link.request(KIND_PROPOSE, b"q%d" % i, 5)).payload)

        async with trio.open_nursery() as asks:
            for i in range(20):
                asks.start_soon(ask, i)
        assert sorted(replies) == sorted(b"re:q%d" % i for i in range(20))
        assert [f.payload for f in seen if f.kind == KIND_ACCESSED] == [b"%d" % i for i in range(5)]
        assert link.queue_depth() == 0 and server.rejected == {}
        nursery.cancel_scope.cancel()


async def test_wrong_secret_is_rejected_and_requests_fail_instead_of_hanging() -> None:
    seen: list[Frame] = []
    server, client = TransportCounters(), TransportCounters()
    async with trio.open_nursery() as nursery:
        port = await start_receiver(nursery, SECRET, seen, server)
        link = link_to(port, b"another-secret", client)
        nursery.start_soon(link.run)
        with pytest.raises(PeerUnavailable):
            await link.request(KIND_PROPOSE, b"q", 1)
        assert client.rejected.get("bad-mac", 0) >= 1  # the server's HELLO fails here...
        with trio.fail_after(5):
            while True:  # ...and ours there, as soon as the server has read it
                if server.rejected.get("bad-mac", 0) >= 1:
                    break
                await trio.sleep(0.01)
        assert seen == []
        nursery.cancel_scope.cancel()


async def test_send_queue_is_bounded_and_drops_are_counted() -> None:
    counters = TransportCounters()
    link = link_to(free_port(), None, counters, queue_size=3)  # nothing listens there, nothing is sent
    results = [link.send_nowait(KIND_ACCESSED, b"x") for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert link.dropped == 2 and counters.dropped == 2 and link.queue_depth() == 3


async def test_refused_connection_is_reported_fast_and_probe_tells_refused_from_alive() -> None:
    port = free_port()
    counters = TransportCounters()
    link = link_to(port, None, counters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        with trio.fail_after(5):
            await link.attempted.wait()
        assert link.refused and not link.connected
        with pytest.raises(PeerUnavailable, match="refused"):
            await link.request(KIND_PROPOSE, b"q", 5)
        assert await probe("127.0.0.1", port, 1) is False
        seen: list[Frame] = []
        alive = await start_receiver(nursery, None, seen, TransportCounters())
        assert await probe("127.0.0.1", alive, 1) is True
        nursery.cancel_scope.cancel()


async def test_link_reconnects_after_the_peer_restarts() -> None:
    seen: list[Frame] = []
    counters = TransportCounters()
    first = trio.CancelScope()
    ports: list[int] = []

    async def first_receiver(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with first:
            async with trio.open_nursery() as inner:
                ports.append(await start_receiver(inner, None, seen, TransportCounters()))
                task_status.started()
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(first_receiver)
        link = link_to(ports[0], None, counters)
        nursery.start_soon(link.run)
        assert (await link.request(KIND_PROPOSE, b"a", 5)).payload == b"re:a"
        first.cancel()  # the peer dies: its listener and connections close
        with pytest.raises(PeerUnavailable):
            await link.request(KIND_PROPOSE, b"lost", 2)
        listener = await open_receiver("127.0.0.1", ports[0], 1)  # it comes back on the same port
        await nursery.start(lambda task_status: serve_receiver(
            listener, None, echo_dispatch(seen), TransportCounters(), send_timeout=2, task_status=task_status))
        link.wake()
        with trio.fail_after(10):
            await link.wait_connected()
        assert (await link.request(KIND_PROPOSE, b"b", 5)).payload == b"re:b"
        assert counters.connects >= 2
        nursery.cancel_scope.cancel()


async def test_a_peer_that_stops_reading_is_timed_out() -> None:
    """A peer completes the handshake and then never reads: the link's write times out, the
    connection is dropped and waiting requests fail, instead of buffering without limit."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    stalled = trio.Event()

    async def stalling_peer() -> None:
        conn, _ = await listener.accept()
        with conn:
            codec = StreamCodec(None, os.urandom(NONCE_SIZE))
            await conn.send(codec.hello())
            while not isinstance(codec.next_event(), Hello):
                codec.receive_data(await conn.recv(65536))
            stalled.set()
            await trio.sleep_forever()  # never reads again

    counters = TransportCounters()
    link = link_to(port, None, counters, send_timeout=0.3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalling_peer)
        nursery.start_soon(link.run)
        await stalled.wait()
        with trio.fail_after(5):
            await link.wait_connected()
        big = b"x" * (4 * 1024 * 1024)
        for _ in range(16):  # far more than the socket buffers hold
            assert link.send_nowait(KIND_ACCESSED, big)
        with trio.fail_after(10):
            while True:
                if not link.connected:
                    break
                await trio.sleep(0.05)
        assert link.queue_depth() < 16  # some were written before the peer's buffers filled
        nursery.cancel_scope.cancel()
    listener.close()


async def test_auto_bind_takes_the_next_free_port() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        listener = await open_receiver("127.0.0.1", port, 50)
        got = listener.socket.getsockname()[1]
        assert port < got < port + 50
        listener.socket.close()
        with pytest.raises(OSError, match="cannot listen"):
            await open_receiver("127.0.0.1", port, 1)
    finally:
        taken.close()


async def test_a_dead_peer_fails_queued_requests_at_once_and_is_reported() -> None:
    """The peer dies (its listener and connections close): a request sent after that, while the link
    reconnects, fails as soon as the connection is refused, not when its timeout expires; ``on_lost``
    tells the node both times (the connection ended, the reconnection was refused)."""
    seen: list[Frame] = []
    lost: list[float] = []
    peer = trio.CancelScope()
    ports: list[int] = []

    async def receiver(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with peer:
            async with trio.open_nursery() as inner:
                ports.append(await start_receiver(inner, None, seen, TransportCounters()))
                task_status.started()
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(receiver)
        link = link_to(ports[0], None, TransportCounters())
        broke, refused = trio.Event(), trio.Event()

        def on_lost() -> None:
            lost.append(trio.current_time())
            (broke if len(lost) == 1 else refused).set()

        link.on_lost = on_lost
        nursery.start_soon(link.run)
        assert (await link.request(KIND_PROPOSE, b"a", 5)).payload == b"re:a"
        peer.cancel()
        with trio.fail_after(3):  # a hang guard far below the request's own 30 s timeout
            await broke.wait()  # the connection ended; the link reconnects after its backoff
            assert not link.connected and not refused.is_set()
            with pytest.raises(PeerUnavailable):
                await link.request(KIND_PROPOSE, b"queued while down", 30)
            await refused.wait()
        assert link.refused
        nursery.cancel_scope.cancel()


async def test_fail_pending_releases_requests_waiting_for_a_reply() -> None:
    """A peer that accepts requests and never answers them (stalled): once the node declares it gone,
    the requests waiting for it fail at once."""
    listener = await open_receiver("127.0.0.1", 0, 1)
    port = listener.socket.getsockname()[1]
    asked = trio.Event()

    def silent(frame: Frame, replier: Replier) -> None:
        asked.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_receiver(
            listener, None, silent, TransportCounters(), send_timeout=2, task_status=task_status))
        link = link_to(port, None, TransportCounters())
        nursery.start_soon(link.run)
        failed = trio.Event()

        async def ask() -> None:
            with pytest.raises(PeerUnavailable):
                await link.request(KIND_PROPOSE, b"q", 30)
            failed.set()

        nursery.start_soon(ask)
        with trio.fail_after(3):
            await asked.wait()
            link.fail_pending()
            await failed.wait()
        nursery.cancel_scope.cancel()


async def test_frames_queued_in_one_pass_leave_in_one_write_and_in_order() -> None:
    """Coalescing: what a link's queue holds when its writer runs goes out as one write (one wake-up of
    the peer), still as separate frames, in order. The peer here is a raw socket with the codec."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    counters = TransportCounters()
    link = link_to(port, SECRET, counters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        sock, _ = await listener.accept()
        codec = StreamCodec(SECRET, os.urandom(NONCE_SIZE))
        await sock.send(codec.hello())
        while not codec.ready:
            codec.receive_data(await sock.recv(65536))
            assert isinstance(codec.next_event(), Hello)
        await link.wait_connected()
        for i in range(50):
            assert link.send_nowait(KIND_ACCESSED, b"frame %d" % i)
        await trio.sleep(0.2)  # every frame has been written by now
        codec.receive_data(await sock.recv(1 << 20))  # one receive: they left together
        frames = []
        while isinstance(event := codec.next_event(), Frame):
            frames.append(event.payload)
        assert frames == [b"frame %d" % i for i in range(50)]
        assert counters.frames_sent == 50 and counters.writes == 1
        nursery.cancel_scope.cancel()
    sock.close()
    listener.close()


async def test_a_request_nobody_answers_times_out_and_a_stopped_link_takes_none() -> None:
    listener = await open_receiver("127.0.0.1", 0, 1)
    port = listener.socket.getsockname()[1]

    def silent(frame: Frame, replier: Replier) -> None:
        return None

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_receiver(
            listener, None, silent, TransportCounters(), send_timeout=2, task_status=task_status))
        link = link_to(port, None, TransportCounters())
        nursery.start_soon(link.run)
        started = trio.current_time()
        with trio.fail_after(3), pytest.raises(PeerUnavailable, match="no reply within"):
            await link.request(KIND_PROPOSE, b"q", 0.3)
        assert trio.current_time() - started >= 0.3
        nursery.cancel_scope.cancel()
    with trio.fail_after(1), pytest.raises(PeerUnavailable, match="no longer"):
        await link.request(KIND_PROPOSE, b"q", 30)  # run() ended: nothing would answer or time it
