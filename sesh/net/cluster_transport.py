"""The cluster's TCP transport: the receiver (incoming connections from peers) and one outgoing link per
peer, both speaking :mod:`sesh.protocol.cluster` frames.

Theory of operation. Every node listens on its receiver port (Tomcat's NioReceiver, ``autoBind``: the
next ports are tried when one is taken) and keeps one outgoing :class:`PeerLink` to each member. A link
carries this node's messages to the peer and the peer's replies back (replies name their request in the
frame's ``ref``), so a request and its reply share one ordered connection. Messages a peer sends on its
own initiative arrive on *its* link, i.e. on a connection this node accepted.

- Each link and each accepted connection has a **bounded send queue**: a peer that stops reading cannot
  make this node buffer without limit. ``send_nowait`` drops (and counts) when the queue is full; the
  awaited ``request`` waits for room within its timeout. A write that makes no progress for
  ``send_timeout`` breaks the connection (a stalled peer is timed out, never waited for forever).
- A link reconnects with exponential backoff. When the connection breaks, every request waiting for a
  reply fails with :class:`PeerUnavailable` at once (and so does one made while the link is down, at the
  next connection attempt that fails), and request frames still queued for the old
  connection are discarded rather than delivered late. A refused connection marks the link ``refused``,
  so callers can tell a dead process on a live host (fast
  "gone", like TcpFailureDetector) from a slow one. Both are reported through ``on_lost``: the node
  checks the member at once instead of waiting for an acknowledgement to time out or for its heartbeats
  to stop for drop-time.
- **Coalescing.** A connection's writer sends every frame queued by the time it runs in one write, so
  with many requests in flight their deltas (and, on the other side, their acknowledgements) cost one
  system call and one wake-up of the peer per scheduler pass, not one per frame; the reader applies
  every complete frame of each receive. The frames stay separate (their own sequence number and MAC).
- Incoming frames are handed to the node's ``dispatch``; it may return a coroutine function to run
  concurrently (work that must wait for a lock), bounded per connection so that one peer cannot start
  unbounded work here.
"""

from __future__ import annotations

import errno
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from sesh.log import get_logger
from sesh.net.fdstream import FdStream, WaitTimer
from sesh.net.server import set_nodelay
from sesh.protocol.cluster import (
    KIND_REPLY,
    KIND_REPLY_PART,
    NEED_DATA,
    NONCE_SIZE,
    Closed,
    ClusterProtocolError,
    Frame,
    Hello,
    StreamCodec,
)

log = get_logger("cluster")

# Frames waiting to be written to one peer. Big enough for a burst of deltas from every request in
# flight on this node (plus heartbeats); past it the peer is not keeping up and we stop queueing.
SEND_QUEUE = 4096
# Work started by frames from one peer and still running (proposals waiting for a session lock):
# bounds what one peer, honest or not, can make this node do at once.
CONCURRENT_PER_PEER = 256
# Replies buffered for one request that streams (a state transfer's chunks) before the reader waits.
REPLY_BUFFER = 64
# One write takes queued frames until it holds this many, or this many payload bytes (a state
# transfer's chunks are up to a MiB each: those go out one or two at a time, never all joined).
WRITE_BATCH = 256
WRITE_BATCH_BYTES = 256 * 1024
# How often a link looks for requests whose reply is overdue: the precision of their timeouts.
EXPIRY_CHECK = 0.1
HANDSHAKE_TIMEOUT = 5.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class PeerUnavailable(Exception):
    """No reply from the peer: not connected, connection broken, refused, or timed out."""


# What ends one connection (the peer's fault or the network's), caught where it happens: inside a
# nursery it would otherwise arrive wrapped in an exception group and take the whole node down.
_CONNECTION_ENDED = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    PeerUnavailable,
    ClusterProtocolError,
)


@dataclass(slots=True)
class TransportCounters:
    """What one node's transport did, by peer address where it matters (shown in /sesh/status)."""

    frames_sent: int = 0
    writes: int = 0  # system calls that sent them: frames queued together leave in one
    frames_received: int = 0
    dropped: int = 0  # frames not queued because a peer's send queue was full
    rejected: dict[str, int] = field(default_factory=dict)  # bad frames from peers, by reason
    connects: int = 0
    connect_failures: int = 0
    accepted: int = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class _Wire:
    """One connected TCP stream with its codec: handshake, then frames both ways. Read and written
    through :class:`~sesh.net.fdstream.FdStream`: every replicated write crosses a link twice (the
    frame, its acknowledgement), and trio's SocketStream would add a trip through the scheduler to
    each read and write even when the kernel had the bytes or the room."""

    def __init__(
        self, stream: trio.SocketStream, timer: WaitTimer, secret: bytes | None, counters: TransportCounters
    ) -> None:
        self.stream = stream
        self.io = FdStream(stream, timer)
        self.codec = StreamCodec(secret, secrets.token_bytes(NONCE_SIZE))
        self.counters = counters

    async def send(self, data: bytes, timeout: float) -> None:  # noqa: ASYNC109 the stream times the write itself (no progress for timeout breaks it)
        """Send ``data``; a peer that takes none of it for ``timeout`` seconds breaks the connection."""
        await self.io.send_all(data, timeout)

    async def handshake(self) -> None:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await self.io.send_all(self.codec.hello())
            while not self.codec.ready:
                event = await self._next()
                if event is None:
                    raise PeerUnavailable("peer closed the connection during the handshake")

    async def _next(self) -> Hello | Frame | None:
        while True:
            try:
                event = self.codec.next_event()
            except ClusterProtocolError as exc:
                self.counters.reject(exc.reason)
                raise
            if event is NEED_DATA:
                data = await self.io.receive_some()
                assert data is not None  # None only when a receive timeout is given
                self.codec.receive_data(data)
                continue
            if isinstance(event, Closed):
                return None
            assert isinstance(event, Hello | Frame)
            return event

    async def read_frame(self) -> Frame | None:
        """The next frame, or None when the peer closed the connection."""
        event = await self._next()
        if isinstance(event, Hello):  # the codec refuses a second HELLO, so this cannot happen
            raise ClusterProtocolError("duplicate-hello")
        if event is not None:
            self.counters.frames_received += 1
        return event

    async def write_loop(self, queue: trio.MemoryReceiveChannel[tuple[int, bytes, int]],
                         send_timeout: float, wanted: Callable[[int, int], bool],
                         written: Callable[[], None] | None = None) -> None:
        """Write queued frames until the queue closes. Every frame queued by the time this task runs
        goes out in one write: with many requests in flight, the deltas (or the acknowledgements) of
        one scheduler pass cost one system call and one wake-up of the peer, not one each."""
        async for first in queue:
            batch = [first]
            size = len(first[1])
            while len(batch) < WRITE_BATCH and size < WRITE_BATCH_BYTES:
                try:
                    item = queue.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):  # (closed: what is left is sent, then the loop ends)
                    break
                batch.append(item)
                size += len(item[1])
            try:
                frames = [self.codec.encode(kind, payload, ref) for kind, payload, ref in batch if wanted(kind, ref)]
                if frames:
                    await self.send(frames[0] if len(frames) == 1 else b"".join(frames), send_timeout)
                    self.counters.frames_sent += len(frames)
                    self.counters.writes += 1
            finally:
                if written is not None:  # written, or lost with the connection: no longer queued
                    for _ in batch:
                        written()


class _Replies:
    """What one request waits for: partial replies first (a state transfer's chunks, at most
    REPLY_BUFFER of them buffered), then the final one; or why none will come. Lighter than a memory
    channel per request, which cost more than the rest of a replicated write's bookkeeping; and timed
    by its link's expiry check (:meth:`PeerLink._expire_waits`) rather than by a cancel scope per wait,
    which measured more than the rest of the wait."""

    __slots__ = ("_arrived", "deadline", "expired", "failure", "frames")

    def __init__(self) -> None:
        self.frames: deque[Frame] = deque()
        self.failure = ""
        self._arrived = trio.Event()
        self.deadline = math.inf  # while parked: when the wait times out
        self.expired = False

    def put(self, frame: Frame) -> bool:
        if len(self.frames) >= REPLY_BUFFER:
            return False
        self.frames.append(frame)
        self._arrived.set()
        return True

    def fail(self, reason: str) -> None:
        if not self.failure:
            self.failure = reason
            self._arrived.set()

    def expire(self) -> None:
        self.expired = True
        self._arrived.set()

    async def next(self, timeout: float) -> Frame | None:  # noqa: ASYNC109 None is the answer for no reply in time, not a failure
        """The next reply (buffered ones before a failure); None if none came within ``timeout``
        (give or take the link's EXPIRY_CHECK period)."""
        while not self.frames:
            if self.failure:
                raise PeerUnavailable(self.failure)
            if self._arrived.is_set():
                self._arrived = trio.Event()
            self.expired = False
            self.deadline = trio.current_time() + timeout
            try:
                await self._arrived.wait()
            finally:
                self.deadline = math.inf
            if self.expired and not self.frames and not self.failure:
                return None
        return self.frames.popleft()


class PeerLink:
    """The outgoing connection to one peer's receiver, kept up with backoff while the peer is a member."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes | None,
        counters: TransportCounters,
        *,
        send_timeout: float,
        connect_timeout: float,
        queue_size: int = SEND_QUEUE,
        greeting: Callable[[], tuple[int, bytes]] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.host = host
        # Called when a working connection ends (reset, EOF, write timeout) or a connection is refused:
        # the first sign that the peer may be dead.
        self.on_lost = on_lost
        # A frame sent first on every new connection (a static member's heartbeat: the peer learns of
        # us the moment we can reach it, not a heartbeat period later).
        self.greeting = greeting
        self._wake = trio.Event()
        self.port = port
        self.secret = secret
        self.counters = counters
        self.send_timeout = send_timeout
        self.connect_timeout = connect_timeout
        self.queue_size = queue_size
        self._queue_in, self._queue_out = trio.open_memory_channel[tuple[int, bytes, int]](queue_size)
        self._waiters: dict[int, _Replies] = {}
        self._next_ref = 0
        self.connected = False
        self.refused = False  # the last connection attempt was refused: nothing listens there
        self.attempted = trio.Event()  # set after the first connection attempt, whatever its outcome
        self._connected_event = trio.Event()
        self.dropped = 0
        self._unsent = 0
        # run() ended (or never will): nothing times or answers a request any more, so none is taken.
        self.stopped = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def queue_depth(self) -> int:
        """Frames queued and not yet written (one taken from the queue counts until it is on the wire)."""
        return self._unsent

    def _written(self) -> None:
        self._unsent -= 1

    # --- sending ------------------------------------------------------------------------------------

    def send_nowait(self, kind: int, payload: bytes) -> bool:
        """Queue a frame that wants no reply; False (and counted) when the queue is full."""
        try:
            self._queue_in.send_nowait((kind, payload, 0))
            self._unsent += 1
            return True
        except trio.WouldBlock:
            self.dropped += 1
            self.counters.dropped += 1
            return False

    async def request(
        self,
        kind: int,
        payload: bytes,
        timeout: float,  # noqa: ASYNC109 it bounds each wait for the next reply, not the whole request
        on_part: Callable[[Frame], Awaitable[None]] | None = None,
    ) -> Frame:
        """Send a request and wait for its final reply, handing any partial replies to ``on_part``.

        :class:`PeerUnavailable` if the link is refused, the queue stays full, the connection breaks
        or a wait for the next reply exceeds ``timeout``.
        """
        if self.refused and not self.connected:
            raise PeerUnavailable(f"{self.address}: connection refused")
        if self.stopped:
            raise PeerUnavailable(f"{self.address}: no longer a member's link")
        self._next_ref += 1
        ref = self._next_ref
        replies = self._waiters[ref] = _Replies()
        try:
            try:
                self._queue_in.send_nowait((kind, payload, ref))
            except trio.WouldBlock:  # the peer is behind: wait for room, within the timeout
                with trio.move_on_after(timeout) as scope:
                    await self._queue_in.send((kind, payload, ref))
                if scope.cancelled_caught:
                    self.dropped += 1
                    self.counters.dropped += 1
                    raise PeerUnavailable(f"{self.address}: send queue full for {timeout:g}s") from None
            self._unsent += 1
            while True:
                reply = await replies.next(timeout)
                if reply is None:
                    raise PeerUnavailable(f"{self.address}: no reply within {timeout:g}s")
                if reply.kind == KIND_REPLY:
                    return reply
                if on_part is not None:
                    await on_part(reply)
        finally:
            self._waiters.pop(ref, None)

    def _deliver(self, frame: Frame) -> None:
        waiter = self._waiters.get(frame.ref)
        if waiter is None:
            return  # the request timed out meanwhile: a late reply is dropped
        if not waiter.put(frame):
            # The consumer of a streamed reply is REPLY_BUFFER frames behind; fail the request rather
            # than block every other reply on this link behind it.
            self._waiters.pop(frame.ref, None)
            waiter.fail(f"{self.address}: reply stream overflowed")

    def stop(self) -> None:
        """For a link whose run() never started (the peer left first): fail its requests, take no more."""
        self.stopped = True
        self._fail_waiters()

    def fail_pending(self) -> None:
        """Fail every request waiting for a reply now (the peer was declared gone: its replies no
        longer count), rather than when each one times out."""
        self._fail_waiters()

    def _lost(self) -> None:
        if self.on_lost is not None:
            self.on_lost()

    def _fail_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.fail(f"{self.address}: connection lost")

    def wake(self) -> None:
        """Retry a connection now instead of after the backoff (the peer was just heard from)."""
        self._wake.set()

    async def _backoff(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = trio.Event()

    def _wanted(self, kind: int, ref: int) -> bool:
        # A request queued for a connection that broke has already failed; do not deliver it late.
        return ref == 0 or ref in self._waiters

    # --- the connection loop ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, reconnect with backoff; until cancelled (the peer stopped being a member)."""
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                timer = WaitTimer()  # times this link's sends (a peer that takes nothing for send_timeout)
                await nursery.start(timer.run)
                nursery.start_soon(self._expire_waits)
                await self._connect_and_serve(timer)
                nursery.cancel_scope.cancel()
        finally:
            self.stop()

    async def _expire_waits(self) -> None:
        """Time out the requests whose reply is overdue: one check per period for every request of the
        link, instead of a cancel scope per request."""
        while True:
            await trio.sleep(EXPIRY_CHECK)
            if self._waiters:
                now = trio.current_time()
                for waiter in list(self._waiters.values()):
                    if waiter.deadline <= now:
                        waiter.expire()

    async def _connect_and_serve(self, timer: WaitTimer) -> None:
        backoff = BACKOFF_MIN
        try:
            while True:
                try:
                    with trio.fail_after(self.connect_timeout):
                        stream = await connect(self.host, self.port)
                except (OSError, trio.TooSlowError) as exc:
                    self.refused = isinstance(exc, ConnectionRefusedError)
                    self.counters.connect_failures += 1
                    self.attempted.set()
                    # Requests made while the link was down (after the last connection broke, before
                    # this attempt) have nobody to send them: they fail now, not after their timeout.
                    self._fail_waiters()
                    if self.refused:
                        self._lost()
                    await self._backoff(backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
                self.refused = False
                set_nodelay(stream)
                self.counters.connects += 1
                try:
                    await self._serve(stream, timer)
                    backoff = BACKOFF_MIN
                except _CONNECTION_ENDED:
                    pass
                finally:
                    worked = self.connected
                    self.connected = False
                    self._connected_event = trio.Event()
                    self._fail_waiters()
                    self.attempted.set()
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
                if worked:
                    self._lost()  # a connection that worked broke: the peer died, or the network
                await self._backoff(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            self._fail_waiters()

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    async def _serve(self, stream: trio.SocketStream, timer: WaitTimer) -> None:
        wire = _Wire(stream, timer, self.secret, self.counters)
        await wire.handshake()
        if self.greeting is not None:
            kind, payload = self.greeting()
            await wire.send(wire.codec.encode(kind, payload), self.send_timeout)
        self.connected = True
        self._connected_event.set()
        self.attempted.set()
        async with trio.open_nursery() as nursery:

            async def write() -> None:
                try:
                    await wire.write_loop(self._queue_out, self.send_timeout, self._wanted, self._written)
                except _CONNECTION_ENDED:
                    pass
                finally:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(write)
            try:
                while True:
                    frame = await wire.read_frame()
                    if frame is None:
                        break
                    if frame.kind in (KIND_REPLY, KIND_REPLY_PART):
                        self._deliver(frame)
                    else:
                        self.counters.reject("unexpected-kind")
            except _CONNECTION_ENDED:
                pass
            nursery.cancel_scope.cancel()


class Replier:
    """How the node answers a frame that arrived on an accepted connection: on that same connection."""

    def __init__(self, queue: trio.MemorySendChannel[tuple[int, bytes, int]], counters: TransportCounters,
                 peer: str) -> None:
        self._queue = queue
        self._counters = counters
        self.peer = peer

    def reply_nowait(self, ref: int, payload: bytes, *, last: bool = True, count_drop: bool = True) -> bool:
        """Queue a reply if there is room; False if not (counted as dropped unless ``count_drop`` is
        false: the caller then waits for room with :meth:`reply`)."""
        try:
            self._queue.send_nowait((KIND_REPLY if last else KIND_REPLY_PART, payload, ref))
            return True
        except trio.WouldBlock:
            if count_drop:
                self._counters.dropped += 1
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._counters.dropped += 1
            return False

    async def reply(self, ref: int, payload: bytes, *, last: bool = True) -> None:
        """Reply, waiting for room in the queue (back-pressure for a state transfer's chunks, each of
        which also yields: encoding them is the expensive part). A final reply that finds room is
        queued without a trip through the scheduler."""
        item = (KIND_REPLY if last else KIND_REPLY_PART, payload, ref)
        if last:
            try:
                self._queue.send_nowait(item)
                return
            except trio.WouldBlock:
                pass
        await self._queue.send(item)


Dispatch = Callable[[Frame, Replier], Callable[[], Awaitable[None]] | None]


async def open_receiver(host: str, port: int, auto_bind: int) -> trio.SocketListener:
    """Listen on ``host:port``, or the next of ``auto_bind`` ports when it is taken (Tomcat's autoBind)."""
    last: OSError | None = None
    for candidate in range(port, min(65536, port + max(1, auto_bind))) if port else [0]:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            await sock.bind((host, candidate))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            last = exc
            if exc.errno != errno.EADDRINUSE:
                break
            continue
        return trio.SocketListener(sock)
    raise OSError(last.errno if last else errno.EADDRINUSE,
                  f"cannot listen for cluster peers on {host}:{port} (+{auto_bind} ports): {last}")


async def serve_receiver(
    listener: trio.SocketListener,
    secret: bytes | None,
    dispatch: Dispatch,
    counters: TransportCounters,
    *,
    send_timeout: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept peers' connections and hand their frames to ``dispatch`` until cancelled."""

    async def handle(stream: trio.SocketStream) -> None:
        counters.accepted += 1
        wire = _Wire(stream, timer, secret, counters)
        queue_in, queue_out = trio.open_memory_channel[tuple[int, bytes, int]](SEND_QUEUE)
        try:
            peer = "{}:{}".format(*stream.socket.getpeername()[:2])
        except OSError:
            peer = "?"
        replier = Replier(queue_in, counters, peer)
        limiter = trio.CapacityLimiter(CONCURRENT_PER_PEER)
        try:
            await wire.handshake()
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    try:
                        await wire.write_loop(queue_out, send_timeout, lambda _k, _r: True)
                    except _CONNECTION_ENDED:
                        pass
                    finally:
                        nursery.cancel_scope.cancel()

                async def run_limited(work: Callable[[], Awaitable[None]]) -> None:
                    async with limiter:
                        try:
                            await work()
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass  # the peer left before its answer was ready
                        except Exception:  # a bug, not input: report it, keep the node serving
                            counters.reject("handler-error")
                            log.exception("cluster message handler failed", peer=peer)

                nursery.start_soon(write)
                try:
                    while True:
                        frame = await wire.read_frame()
                        if frame is None:
                            break
                        try:
                            work = dispatch(frame, replier)
                        except Exception:  # a bug, not input: drop the frame, keep the node serving
                            counters.reject("handler-error")
                            log.exception("cluster message handler failed", peer=peer)
                            continue
                        if work is not None:
                            if limiter.borrowed_tokens >= limiter.total_tokens:
                                counters.reject("too-much-work")
                                continue
                            nursery.start_soon(run_limited, work)
                except _CONNECTION_ENDED:
                    nursery.cancel_scope.cancel()
                # The peer closed its side: let running work finish and replies drain, then close.
                queue_in.close()
        except _CONNECTION_ENDED:
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    # Not stopped by the shutdown request: while this node's last requests finish, the coordinator still
    # forwards their writes here and waits for the acknowledgements. The backend cancels this task once
    # its requests are done.
    timer = WaitTimer()  # times the replies' sends on every accepted connection
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(timer.run)
            task_status.started()
            while True:
                stream = await listener.accept()
                set_nodelay(stream)
                nursery.start_soon(handle, stream)
    finally:
        listener.socket.close()


async def connect(host: str, port: int) -> trio.SocketStream:
    """A TCP connection to ``host:port`` (first address only). Unlike trio's happy-eyeballs
    ``open_tcp_stream``, a refusal surfaces as :class:`ConnectionRefusedError`, which the failure
    detection needs to tell "nothing listens" from "no answer"."""
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, kind, proto, _name, address = infos[0]
    sock = trio.socket.socket(family, kind, proto)
    try:
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def probe(host: str, port: int, timeout: float) -> bool | None:  # noqa: ASYNC109 a timeout is an answer here (None: unreachable), not a failure
    """TcpFailureDetector's check: True if something accepts on ``host:port``; False if refused (the
    process is gone but the host answers, a fast "gone"); None if it timed out (host unreachable)."""
    try:
        with trio.fail_after(timeout):
            stream = await connect(host, port)
    except trio.TooSlowError:
        return None
    except ConnectionRefusedError:
        return False
    except OSError:
        return None
    await trio.aclose_forcefully(stream)
    return True
