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
:class:`StoreTimeout`; callers put any wider deadline (a backup timeout, shutdown) around the call. With
a running :class:`~sesh.net.fdstream.WaitTimer` (msm's backends run one) the waits are timed by it rather
than by a cancel scope per call (about 12 us of CPU each on a 2-core test machine, against a dict insert
and a pop).

:func:`call_each` sends requests to several nodes and then reads every node's replies, from one task:
msm's non-sticky mode reads a session and its backup, and writes both copies, in one round trip that way.

A failure (refused or reset connection, timeout, a reply that is not memcached's) marks the node
*unavailable* for ``availability_ttl`` seconds (msm's node-availability cache: 1 s), doubling with every
further failure in a row up to ``max_backoff``; calls during that time fail at once with
:class:`StoreUnavailable`, so a dead node costs a request nothing. When the time is up one call is let
through as a probe (the others still fail fast); its success makes the node available again and counts
a *recovery*, which users watch to rebuild what the node lost while it was down.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import trio

from sesh.net.availability import Availability, AvailabilityTracked
from sesh.net.fdstream import FdStream, SendTimeout, WaitTimer
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
# The event of "no call before this one": already set.
_DONE = trio.Event()
_DONE.set()


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


# An operation's outcome as call_each gives it: the replies, or what went wrong on that node.
Outcome: TypeAlias = "list[Reply] | StoreUnavailable | StoreError"


class _Exchange:
    """One call's requests on one connection, from their send to the read of their replies."""

    __slots__ = ("connection", "deadline", "done", "previous", "probe", "requests", "stale")

    def __init__(self, requests: Sequence[Request], probe: bool, deadline: float) -> None:
        self.requests = requests
        self.probe = probe
        self.deadline = deadline
        self.connection: _Connection | None = None  # while its requests are queued on it
        self.done = _DONE  # set once this call is done with the connection: the next one may read
        self.previous = _DONE  # the event of the call queued before it: its replies come first
        self.stale = False  # queued on a connection that had sat idle (the node may have closed it)


class _Connection:
    """One TCP connection and its codec; calls are pipelined through an event chain (see module doc).

    The socket is read and written through :class:`FdStream` (no scheduler round trip when the kernel
    takes the request at once, as it nearly always does), and a call whose turn has come neither takes
    the send lock nor waits on an event already set: each of those is a schedule point in trio, and a
    store call is mostly such overhead around two system calls."""

    __slots__ = ("broken", "codec", "in_flight", "io", "out_of_step", "send_lock", "stream", "tail", "used")

    def __init__(self, stream: trio.SocketStream, max_value: int, timer: WaitTimer | None) -> None:
        self.stream = stream
        self.io = FdStream(stream, timer, receive_size=RECEIVE_SIZE)
        self.codec = ClientCodec(max_value)
        self.send_lock = trio.Lock()  # held only by a send that did not fit in the socket's buffer
        self.tail = _DONE
        self.in_flight = 0
        self.broken = False
        self.out_of_step = ""  # why replies can no longer be matched to requests (set with broken)
        self.used = False  # a call completed on it: it may sit idle in the pool since

    def _queue(self, exchange: _Exchange) -> bytes:
        """Encode the exchange's requests and put it at the tail of the reply chain; the bytes to send.
        From here on the exchange must be :meth:`release`\\ d."""
        self._check_usable()
        data = self.codec.send_batch(exchange.requests)
        exchange.stale = self.used and self.in_flight == 0
        exchange.done = trio.Event()
        exchange.previous, self.tail = self.tail, exchange.done
        exchange.connection = self
        self.in_flight += 1
        return data

    def release(self, exchange: _Exchange, *, in_step: bool) -> None:
        """The exchange is done with the connection. Unless all its replies were read, they may still
        arrive: nobody can read the connection in step any more."""
        exchange.connection = None
        self.in_flight -= 1
        exchange.done.set()
        if not in_step:
            self.broken = True

    def _check_usable(self) -> None:
        if self.out_of_step:
            raise _OutOfStep(self.out_of_step)
        if self.broken:
            raise _Broken("connection broken by an earlier call")

    async def send(self, exchange: _Exchange, timeout: float) -> None:  # noqa: ASYNC109 it bounds each wait for room (FdStream.send_all)
        """Queue the exchange behind the calls already on this connection and send its requests."""
        lock = self.send_lock
        if lock.locked():  # another call's request is still going out: ours goes after it
            async with lock:
                await self.io.send_all(self._queue(exchange), timeout)
            return
        data = self._queue(exchange)
        sent = self.io.send_nowait(data)  # the common case: the kernel takes it all at once
        if sent < len(data):
            async with lock:  # (free: nothing ran since it was checked) later calls queue behind
                await self.io.send_all(memoryview(data)[sent:], timeout)

    async def receive(self, exchange: _Exchange, timeout: float, *, park_first: bool) -> list[Reply] | None:  # noqa: ASYNC109 it bounds each wait parked (FdStream.receive_some)
        """The exchange's replies, read once the calls before it have read theirs; None when the node
        sent nothing for ``timeout`` seconds parked, or the exchange's deadline passed between two
        reads. ``park_first``: its requests have just left, so their replies cannot be here yet."""
        previous = exchange.previous
        if not previous.is_set():
            # No timer of its own: the call ahead is reading (each of its waits is timed) or ends.
            await previous.wait()
            park_first = False
        self._check_usable()
        codec = self.codec
        count = len(exchange.requests)
        replies: list[Reply] = []
        while len(replies) < count:
            event = codec.next_event()
            if isinstance(event, NeedData):
                # Tried once without parking even past the deadline: a reply that came in while an
                # earlier call or node was waited for is taken.
                chunk = None if park_first else self.io.receive_nowait()
                park_first = False
                if chunk is None:
                    remaining = exchange.deadline - trio.current_time()
                    if remaining <= 0:
                        return None
                    # (math.inf: untimed, the caller's cancel scope has the deadline)
                    wait = timeout if timeout == math.inf else min(timeout, remaining)
                    chunk = await self.io.receive_some(wait, park_first=True)
                    if chunk is None:
                        return None
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


async def call_each(calls: Sequence[tuple[NodeClient, Sequence[Request]]]) -> list[Outcome]:
    """Each node's requests, pipelined on one of its connections: every node's requests are sent
    first, then every node's replies read, in this one task. So a request that writes (or reads) two
    store nodes waits for one round trip, without a task per node. Each node's outcome is its own: a
    node that fails, refuses or times out costs the others nothing (it is in its slot of the list).

    Timing: a client with a running :class:`WaitTimer` has each wait parked for its node's bytes timed
    by it (``operation_timeout``; a call whose replies take several reads ends once its deadline has
    passed), which costs a dict insert and a pop instead of a cancel scope per call. Without one, each
    phase of a call runs under a cancel scope with the call's deadline. Either way the nodes' replies
    are read in turn, each after the first tried once without parking: a reply that came in while an
    earlier node was waited for is taken even when that wait took the whole timeout."""
    exchanges: list[_Exchange | None] = [None] * len(calls)
    outcomes: list[Outcome | None] = [None] * len(calls)
    try:
        for i, (client, requests) in enumerate(calls):
            admitted = client._admit(requests)
            if isinstance(admitted, StoreUnavailable):
                outcomes[i] = admitted
                continue
            exchanges[i] = admitted
            failure = await client._send(admitted)
            if failure is not None:
                outcomes[i] = client._end(admitted, failure)
        park_first = True  # the first node's requests just left; the others' replies may be in by then
        for i, exchange in enumerate(exchanges):
            if exchange is not None and outcomes[i] is None:
                outcomes[i] = await calls[i][0]._receive(exchange, park_first=park_first)
                park_first = False
    finally:
        for i, exchange in enumerate(exchanges):
            if exchange is not None and outcomes[i] is None:  # cancelled from outside
                calls[i][0]._abandon(exchange)
    return outcomes  # type: ignore[return-value]  # every slot is set once the loops are through


def item_of(client: NodeClient, outcome: Outcome, key: bytes) -> Value | StoreUnavailable | StoreError | None:
    """What :meth:`NodeClient.get` returns or raises, from the outcome of a ``Get((key,))``."""
    if not isinstance(outcome, list):
        return outcome
    (reply,) = outcome
    if isinstance(reply, ErrorReply):
        return client.refused(reply)
    assert isinstance(reply, Values)
    return reply.get(key)


def word_of(client: NodeClient, outcome: Outcome) -> str | StoreUnavailable | StoreError:
    """What :meth:`NodeClient.store` returns or raises, from the outcome of a ``Store``."""
    if not isinstance(outcome, list):
        return outcome
    (reply,) = outcome
    if isinstance(reply, ErrorReply):
        return client.refused(reply)
    assert isinstance(reply, Status)
    return reply.word


class NodeClient(AvailabilityTracked):
    """The client of one store node. All methods raise :class:`StoreUnavailable` (or its subclass
    :class:`StoreTimeout`) when the node fails, and :class:`StoreError` when it refuses a request.
    ``timer``: a :class:`WaitTimer` that, while running, times the waits for the node's replies (see
    :func:`call_each`)."""

    def __init__(
        self,
        address: StoreNodeAddress,
        *,
        operation_timeout: float = 1.0,
        max_connections: int = 8,
        availability_ttl: float = 1.0,
        max_backoff: float = 4.0,
        max_value: int = DEFAULT_MAX_VALUE,
        timer: WaitTimer | None = None,
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
        self._timer = timer
        self._connections: list[_Connection] = []
        self._opening = 0
        self._availability = Availability(ttl=availability_ttl, max_backoff=max_backoff)
        self._operations = 0
        self._timeouts = 0

    # --- calls --------------------------------------------------------------------------------------

    async def call(self, requests: Sequence[Request]) -> list[Reply]:
        """Send ``requests`` pipelined on one connection; their replies, in order."""
        (outcome,) = await call_each([(self, requests)])
        if isinstance(outcome, list):
            return outcome
        raise outcome

    def timed(self) -> bool:
        """Whether the client's timer times its waits (else each phase of a call has a cancel scope)."""
        return self._timer is not None and self._timer.running

    def _admit(self, requests: Sequence[Request]) -> _Exchange | StoreUnavailable:
        probe = self._availability.admit()
        if probe is None:
            return StoreUnavailable(self.node_id, f"marked down after: {self._availability.last_error}")
        self._operations += 1
        return _Exchange(requests, probe, trio.current_time() + self.operation_timeout)

    async def _send(self, exchange: _Exchange) -> StoreUnavailable | StoreError | None:
        """Queue the exchange on a connection and send it; what went wrong, if anything."""
        try:
            connection = self._pick()
            if connection is None:
                connection = await self._open(exchange.deadline)
            if self.timed():
                await connection.send(exchange, self.operation_timeout)
            else:
                with trio.fail_at(exchange.deadline):
                    await connection.send(exchange, math.inf)
        except LocalProtocolError as exc:
            # Refused before anything was sent (an exptime or key memcached cannot parse): this
            # request's fault, not the node's, and the connection is still in step.
            return StoreError(f"store node {self.node_id or '(default)'}: request refused: {exc}")
        except _OutOfStep as exc:
            return StoreError(f"store node {self.node_id or '(default)'}: {exc}")
        except (SendTimeout, trio.TooSlowError):
            return self._timed_out()
        except (*_NODE_FAILURES, _Broken) as exc:
            if exchange.stale:
                return await self._resend(exchange)
            return StoreUnavailable(self.node_id, _describe(exc))
        return None

    async def _resend(self, exchange: _Exchange) -> StoreUnavailable | StoreError | None:
        """The exchange went out on a pooled connection that had sat idle, and the node had closed it
        (a restart, an idle timeout): nothing sent on it reached a live server, so it is sent once more,
        on a new connection, as HTTP clients do. The other idle connections are as old: dropped too."""
        connection = exchange.connection
        if connection is not None:
            connection.release(exchange, in_step=False)
        for other in self._connections:
            if other.in_flight == 0:
                other.broken = True
        self._drop_broken()
        exchange.stale = False
        return await self._send(exchange)

    async def _receive(self, exchange: _Exchange, *, park_first: bool) -> Outcome:
        """The exchange's replies (its outcome, the bookkeeping done)."""
        while True:
            connection = exchange.connection
            assert connection is not None
            try:
                if self.timed():
                    replies = await connection.receive(exchange, self.operation_timeout, park_first=park_first)
                else:
                    with trio.fail_at(exchange.deadline):
                        replies = await connection.receive(exchange, math.inf, park_first=park_first)
            except trio.TooSlowError:
                return self._end(exchange, self._timed_out())
            except _OutOfStep as exc:
                return self._end(exchange, StoreError(f"store node {self.node_id or '(default)'}: {exc}"))
            except (*_NODE_FAILURES, _Broken) as exc:
                if exchange.stale and not isinstance(exc, ProtocolError):  # (see _resend; once: it clears stale)
                    failure = await self._resend(exchange)
                    if failure is not None:
                        return self._end(exchange, failure)
                    park_first = True
                    continue
                return self._end(exchange, StoreUnavailable(self.node_id, _describe(exc)))
            return self._end(exchange, replies if replies is not None else self._timed_out())

    def _end(self, exchange: _Exchange, outcome: Outcome) -> Outcome:
        """Release the exchange's connection and note what the call says of the node."""
        connection = exchange.connection
        if connection is not None:
            connection.release(exchange, in_step=isinstance(outcome, list))
        if isinstance(outcome, list):
            self._availability.succeeded()
        elif isinstance(outcome, StoreUnavailable):
            if isinstance(outcome, StoreTimeout):
                self._timeouts += 1
            self._availability.failed(outcome.reason)
        self._availability.end_probe(exchange.probe)
        if connection is None or connection.broken:  # (an in-step call leaves the pool as it was)
            self._drop_broken()
        return outcome

    def _abandon(self, exchange: _Exchange) -> None:
        """A call cancelled from outside: its connection is out of step, the node is not to blame."""
        if exchange.connection is not None:
            exchange.connection.release(exchange, in_step=False)
        self._availability.end_probe(exchange.probe)
        self._drop_broken()

    def _timed_out(self) -> StoreTimeout:
        return StoreTimeout(self.node_id, f"no answer within {self.operation_timeout:g}s")

    def _pick(self) -> _Connection | None:
        """An idle connection, else (the pool full) the least busy one; None: open another."""
        best: _Connection | None = None
        live = 0
        for connection in self._connections:
            if connection.broken:
                continue
            if connection.in_flight == 0:
                return connection
            live += 1
            if best is None or connection.in_flight < best.in_flight:
                best = connection
        if best is not None and live + self._opening >= self.max_connections:
            return best
        return None

    async def _open(self, deadline: float) -> _Connection:
        self._opening += 1
        try:
            with trio.fail_at(deadline):
                stream = await trio.open_tcp_stream(self.address.host, self.address.port)
        finally:
            self._opening -= 1
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(stream, self.max_value, self._timer)
        self._connections.append(connection)
        return connection

    def _drop_broken(self) -> None:
        connections = self._connections
        if not any(c.broken for c in connections):
            return
        self._connections = [c for c in connections if not c.broken]
        for connection in connections:
            if connection.broken:
                connection.stream.socket.close()  # wakes any task parked on it

    async def aclose(self) -> None:
        """Close every connection (calls still running on them fail)."""
        connections, self._connections = self._connections, []
        for connection in connections:
            connection.broken = True
            connection.stream.socket.close()
        await trio.lowlevel.checkpoint()

    # --- operations ---------------------------------------------------------------------------------

    async def _one(self, request: Request) -> Reply:
        (reply,) = await self.call([request])
        if isinstance(reply, ErrorReply):
            raise self.refused(reply)
        return reply

    def refused(self, reply: ErrorReply) -> StoreError:
        return StoreError(f"store node {self.node_id or '(default)'}: {reply.kind} {reply.message}".rstrip())

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
