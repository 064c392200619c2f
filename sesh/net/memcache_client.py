"""A trio-native memcached client: one bounded, pipelining connection pool per store node, per-operation
timeouts, a node-availability cache and reconnect with backoff.

Theory of operation. A :class:`NodeClient` talks to one store node (msm's "memcached node"). Each call
takes a connection from the node's pool: an idle one if there is one, a new one while the pool is below
``max_connections``, and otherwise the least busy one, on which the call is *pipelined* behind the
others (memcached answers in order, so replies are matched by position). There is no reader task: the
calls queued on a connection form a chain of events, and each call reads its own replies when the one
before it has read its own. A call that fails or is cancelled half-way leaves the connection out of step,
so the connection is marked broken, dropped from the pool and closed; the calls behind it fail too. The
same happens when the node answers ``ERROR`` or ``CLIENT_ERROR`` (it did not parse a request as meant,
and memcached then reads the value that followed as commands) or sends bytes nobody asked for: the call
gets its error as :class:`StoreError`, the calls behind it fail with :class:`StoreError` too, and no
reply meant for one request ever reaches another. A request the codec refuses (an exptime or key
memcached cannot parse) fails with :class:`StoreError` before anything is sent.

Every operation runs under ``operation_timeout`` (msm's ``operationTimeout``): the node's contract with
its users is "an answer or an error within this time", so the client owns that deadline and turns it into
:class:`StoreTimeout`; callers put any wider deadline (a backup timeout, shutdown) around the call.

A failure (refused or reset connection, timeout, a reply that is not memcached's) marks the node
*unavailable* for ``availability_ttl`` seconds (msm's node-availability cache: 1 s), doubling with every
further failure in a row up to ``max_backoff``; calls during that time fail at once with
:class:`StoreUnavailable`, so a dead node costs a request nothing. When the time is up one call is let
through as a probe (the others still fail fast); its success makes the node available again and counts
a *recovery*, which users watch to rebuild what the node lost while it was down.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from sesh.net.availability import Availability, AvailabilityTracked
from sesh.net.fdstream import FdStream
from sesh.protocol.memcache_client import (
    DEFAULT_MAX_VALUE,
    DESYNC_ERRORS,
    ClientCodec,
    Delete,
    ErrorReply,
    Get,
    LocalProtocolError,
    NeedData,
    ProtocolError,
    Reply,
    Request,
    Status,
    Store,
    StoreCommand,
    Touch,
    Value,
    Values,
    Version,
    VersionReply,
)

# One read takes a whole pipelined burst of replies; values larger than this arrive in several reads.
RECEIVE_SIZE = 64 * 1024
# Failures that mean "the node or the path to it is broken", as opposed to a bug in this process.
_NODE_FAILURES = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError)


@dataclass(frozen=True, slots=True)
class StoreNodeAddress:
    node_id: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.node_id}:{self.host}:{self.port}" if self.node_id else f"{self.host}:{self.port}"


class StoreUnavailable(Exception):
    """The node could not be used: down (or believed down), unreachable, resetting, or broken."""

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(f"store node {node_id or '(default)'} unavailable: {reason}")
        self.node_id = node_id
        self.reason = reason


class StoreTimeout(StoreUnavailable):
    """The node did not answer within the operation timeout."""


class StoreError(Exception):
    """The node answered this one request with an error (SERVER_ERROR out of memory, too large...)."""


class _Broken(Exception):
    pass


class _OutOfStep(Exception):
    """The connection was put out of step by the server's answer to an earlier request (see
    :attr:`ClientCodec.desynchronized`): this call's replies cannot be told apart from garbage."""


@dataclass(frozen=True, slots=True)
class NodeClientStatistics:
    node_id: str
    address: str
    available: bool
    connections: int
    operations: int
    failures: int  # operations that failed because of the node (refused, reset, timeout, garbage)
    timeouts: int
    consecutive_failures: int
    recoveries: int  # times the node came back after being marked unavailable
    last_error: str


class _Connection:
    """One TCP connection and its codec; calls are pipelined through an event chain (see module doc).

    The socket is read and written through :class:`FdStream` (no scheduler round trip when the kernel
    takes the request at once, as it nearly always does), and a call whose turn has come neither takes
    the send lock nor waits on an event already set: each of those is a schedule point in trio, and a
    store call is mostly such overhead around two system calls."""

    __slots__ = ("broken", "codec", "in_flight", "io", "out_of_step", "send_lock", "stream", "tail", "used")

    def __init__(self, stream: trio.SocketStream, max_value: int) -> None:
        self.stream = stream
        self.io = FdStream(stream, receive_size=RECEIVE_SIZE)
        self.codec = ClientCodec(max_value)
        self.send_lock = trio.Lock()  # held only by a send that did not fit in the socket's buffer
        self.tail = trio.Event()
        self.tail.set()
        self.in_flight = 0
        self.broken = False
        self.out_of_step = ""  # why replies can no longer be matched to requests (set with broken)
        self.used = False  # a roundtrip completed on it: it may sit idle in the pool since

    def _queue(self, requests: Sequence[Request], done: trio.Event) -> tuple[trio.Event, bytes]:
        """Encode ``requests`` and take the tail of the reply chain: the event of the call before (its
        replies are read first) and the bytes to send."""
        self._check_usable()
        data = self.codec.send_batch(requests)
        previous, self.tail = self.tail, done
        return previous, data

    def _check_usable(self) -> None:
        if self.out_of_step:
            raise _OutOfStep(self.out_of_step)
        if self.broken:
            raise _Broken("connection broken by an earlier call")

    async def roundtrip(self, requests: Sequence[Request]) -> list[Reply]:
        done = trio.Event()
        queued = False
        self.in_flight += 1
        try:
            lock = self.send_lock
            if lock.locked():  # another call's request is still going out: ours goes after it
                async with lock:
                    previous, data = self._queue(requests, done)
                    queued = True
                    await self.io.send_all(data)
            else:  # the common case: the kernel takes it all at once, nothing to wait for
                previous, data = self._queue(requests, done)
                queued = True
                sent = self.io.send_nowait(data)
                if sent < len(data):
                    async with lock:  # (free: nothing ran since it was checked) later calls queue behind
                        await self.io.send_all(memoryview(data)[sent:])
            if not previous.is_set():
                await previous.wait()
            self._check_usable()
            replies: list[Reply] = []
            codec = self.codec
            park_first = True  # the request just left: its reply cannot be here yet
            while len(replies) < len(requests):
                event = codec.next_event()
                if isinstance(event, NeedData):
                    chunk = await self.io.receive_some(park_first=park_first)
                    park_first = False
                    if not chunk:
                        raise _Broken("the node closed the connection")
                    codec.receive_data(chunk)
                    continue
                replies.append(event)
            if codec.desynchronized:
                # The server did not read one of our requests as meant (memcached then reads the value
                # that followed as commands): this call has its answer, but the connection is dropped so
                # that no later call gets a reply meant for something else.
                error = next((r for r in replies if isinstance(r, ErrorReply) and r.kind in DESYNC_ERRORS), None)
                said = f"{error.kind} {error.message}".rstrip() if error is not None else "an error"
                self.out_of_step = f"connection dropped: the store answered an earlier request with {said}"
                self.broken = True
            else:
                # Bytes beyond the replies asked for mean the server is out of step with us: refuse the
                # connection now (ProtocolError) rather than give the stale bytes to the next call.
                codec.check_idle()
            self.used = True
            return replies
        except BaseException:
            if queued:  # our replies may still arrive: nobody can read this connection in step any more
                self.broken = True
            raise
        finally:
            self.in_flight -= 1
            done.set()
class NodeClient(AvailabilityTracked):
    """The client of one store node. All methods raise :class:`StoreUnavailable` (or its subclass
    :class:`StoreTimeout`) when the node fails, and :class:`StoreError` when it refuses a request."""

    def __init__(
        self,
        address: StoreNodeAddress,
        *,
        operation_timeout: float = 1.0,
        max_connections: int = 8,
        availability_ttl: float = 1.0,
        max_backoff: float = 4.0,
        max_value: int = DEFAULT_MAX_VALUE,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.address = address
        self.node_id = address.node_id
        self.operation_timeout = operation_timeout
        self.max_connections = max_connections
        self.availability_ttl = availability_ttl
        self.max_backoff = max_backoff
        self.max_value = max_value
        self._connections: list[_Connection] = []
        self._opening = 0
        self._availability = Availability(ttl=availability_ttl, max_backoff=max_backoff)
        self._operations = 0
        self._timeouts = 0

    # --- calls --------------------------------------------------------------------------------------

    async def call(self, requests: Sequence[Request]) -> list[Reply]:
        """Send ``requests`` pipelined on one connection; their replies, in order."""
        probe = self._availability.admit()
        if probe is None:
            raise StoreUnavailable(self.node_id, f"marked down after: {self._availability.last_error}")
        self._operations += 1
        failure = ""
        try:
            with trio.move_on_after(self.operation_timeout) as scope:
                for attempt in range(2):
                    connection = None
                    try:
                        connection = await self._connection()
                        stale = connection.used and connection.in_flight == 0
                        replies = await connection.roundtrip(requests)
                    except LocalProtocolError as exc:
                        # Refused before anything was sent (an exptime or key memcached cannot parse):
                        # this request's fault, not the node's, and the connection is still in step.
                        raise StoreError(f"store node {self.node_id or '(default)'}: request refused: {exc}") from None
                    except _OutOfStep as exc:
                        raise StoreError(f"store node {self.node_id or '(default)'}: {exc}") from None
                    except (*_NODE_FAILURES, _Broken) as exc:
                        failure = _describe(exc)
                        # An idle pooled connection may have been closed by the node (a restart, an idle
                        # timeout) while nobody used it; what was sent on it never reached a live server,
                        # so it is sent once more on a new connection, as HTTP clients do.
                        if attempt == 0 and connection is not None and stale and not isinstance(exc, ProtocolError):
                            await self._drop_broken()
                            continue
                        break
                    self._availability.succeeded()
                    return replies
            if scope.cancelled_caught:
                self._timeouts += 1
                failure = f"no answer within {self.operation_timeout:g}s"
            self._availability.failed(failure)
            if scope.cancelled_caught:
                raise StoreTimeout(self.node_id, failure)
            raise StoreUnavailable(self.node_id, failure)
        finally:
            self._availability.end_probe(probe)
            await self._drop_broken()

    async def _connection(self) -> _Connection:
        live = [c for c in self._connections if not c.broken]
        best = min(live, key=lambda c: c.in_flight, default=None)
        if best is not None and (best.in_flight == 0 or len(live) + self._opening >= self.max_connections):
            return best
        self._opening += 1
        try:
            stream = await trio.open_tcp_stream(self.address.host, self.address.port)
        finally:
            self._opening -= 1
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(stream, self.max_value)
        self._connections.append(connection)
        return connection

    async def _drop_broken(self) -> None:
        broken = [c for c in self._connections if c.broken]
        if not broken:
            return
        self._connections = [c for c in self._connections if not c.broken]
        for connection in broken:
            await trio.aclose_forcefully(connection.stream)

    async def aclose(self) -> None:
        """Close every connection (calls still running on them fail)."""
        connections, self._connections = self._connections, []
        for connection in connections:
            connection.broken = True
            await trio.aclose_forcefully(connection.stream)

    # --- operations ---------------------------------------------------------------------------------

    async def _one(self, request: Request) -> Reply:
        (reply,) = await self.call([request])
        if isinstance(reply, ErrorReply):
            raise StoreError(f"store node {self.node_id or '(default)'}: {reply.kind} {reply.message}".rstrip())
        return reply

    async def get(self, key: bytes) -> Value | None:
        """The item with its CAS value (``gets``), or None on a miss."""
        reply = await self._one(Get((key,)))
        assert isinstance(reply, Values)
        return reply.get(key)

    async def get_many(self, keys: Sequence[bytes]) -> Values:
        reply = await self._one(Get(tuple(keys)))
        assert isinstance(reply, Values)
        return reply

    async def store(
        self, command: StoreCommand, key: bytes, value: bytes, exptime: int, *, cas_unique: int | None = None
    ) -> str:
        """STORED, NOT_STORED (add/replace lost), EXISTS (cas lost) or NOT_FOUND (cas on a gone item)."""
        reply = await self._one(Store(command, key, value, exptime, 0, cas_unique))
        assert isinstance(reply, Status)
        return reply.word

    async def delete(self, key: bytes) -> bool:
        reply = await self._one(Delete(key))
        assert isinstance(reply, Status)
        return reply.word == "DELETED"

    async def touch(self, key: bytes, exptime: int) -> bool:
        reply = await self._one(Touch(key, exptime))
        assert isinstance(reply, Status)
        return reply.word == "TOUCHED"

    async def version(self) -> str:
        reply = await self._one(Version())
        assert isinstance(reply, VersionReply)
        return reply.version

    def statistics(self) -> NodeClientStatistics:
        return NodeClientStatistics(
            node_id=self.node_id,
            address=f"{self.address.host}:{self.address.port}",
            available=self.available(),
            connections=sum(1 for c in self._connections if not c.broken),
            operations=self._operations,
            failures=self._availability.failures,
            timeouts=self._timeouts,
            consecutive_failures=self._availability.in_row,
            recoveries=self._availability.recoveries,
            last_error=self._availability.last_error,
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
