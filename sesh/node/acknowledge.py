"""The acknowledge rule, as the node host applies it to every backend: a response that reports success
is sent only after the request's delta is durable where the mode promises it, and a delta that cannot
be applied is never followed by a success answer.

Theory of operation. Three mechanisms, cheapest first:

1. **Serialize in-process.** Requests on one session id run one at a time on a node, in arrival order
   (:class:`SessionQueues`, a bounded FIFO per session). Browsers do send parallel requests on one
   session; on one node they now never race each other, so the only races left are between nodes.
   A request that finds its session's queue full is answered 503 with ``Retry-After`` and counted:
   the queue is bounded so that one hot session cannot hold every connection of the node.
2. **Detect across nodes.** Backends check their writes (msm: memcached ``cas``); a write that lost a
   race and cannot be merged makes ``close_slot`` raise :class:`~sesh.node.backend.SessionConflict`.
   The response head has not left yet: the node host calls ``close_slot`` before it sends the head.
3. **Re-run or refuse.** A handler declared safe to re-run (the demo page; an ASGI app with
   ``--app-rerun``) is run again on a freshly opened slot, which sees the winner's session, up to
   ``--session-reruns`` times; the request body is kept (:class:`ReplayableBody`) so the re-run reads
   the same bytes. Otherwise, or when the re-runs are used up, or when the backend says a re-run would
   apply the request twice (``SessionConflict.rerun`` false: the store could not take the write), the
   answer is 503 with ``Retry-After``, counted. Had a head already left (not possible with the demo
   page or the ASGI host, which hold the head until the session is stored, but the rule does not rely
   on it), the connection is closed without completing the response, so the client never sees a
   success.

A session that cannot be *read* (its stores fail: :class:`~sesh.node.backend.SessionUnavailable`) is
refused the same way, with a 503, before the handler runs: handing out an empty session in its place
would lose it once the client took the new cookie.
"""

from __future__ import annotations

from dataclasses import dataclass

from sesh.net.http_server import HTTPExchange
from sesh.node.tally import Tally, tally_of
from sesh.node.turns import KeyedLocks

# What the 503 tells the client: HTTP wants whole seconds, and one is plenty for a queue to drain or a
# race to be over; browsers and well-behaved clients wait that long before trying again.
RETRY_AFTER = b"1"


@dataclass(frozen=True, slots=True)
class AcknowledgeCounts:
    serialized: int = 0  # requests that waited for an earlier request on the same session (this node)
    queue_full: int = 0  # requests answered 503 because their session's queue was full
    conflicts: int = 0  # close_slot raised SessionConflict (each attempt counts)
    reruns: int = 0  # handlers run again on a fresh slot after a conflict
    unavailable: int = 0  # requests answered 503 because their delta could not be made durable
    aborted: int = 0  # connections closed mid-response because the head had left before the conflict
    unreadable: int = 0  # requests answered 503 because their session could not be read (SessionUnavailable)


AcknowledgeCounters = tally_of(AcknowledgeCounts)


@dataclass(frozen=True, slots=True, kw_only=True)
class AcknowledgeStatistics(AcknowledgeCounts):
    queue_limit: int
    queued_sessions: int  # sessions with a request running or waiting now


class SessionQueues:
    """One bounded FIFO per session id (by id base), so that a node runs one request per session at a
    time. ``limit`` counts the running request too; 0 turns serialization off."""

    def __init__(self, limit: int, counters: Tally[AcknowledgeCounts]) -> None:
        self.limit = limit
        self.counters = counters
        self.locks = KeyedLocks()

    def __len__(self) -> int:
        return len(self.locks)

    def serialized(self, key: str | None) -> SessionTurn:
        """``async with queues.serialized(key) as admitted:`` holds ``key``'s turn while the body runs;
        ``admitted`` is False (at once, without waiting) when the queue is full. ``key`` None (a request
        without a session id) runs at once: its session will be new."""
        return SessionTurn(self, key)

    def statistics(self) -> AcknowledgeStatistics:
        counters = self.counters.values()
        return AcknowledgeStatistics(queue_limit=self.limit, queued_sessions=len(self.locks), **counters)


class SessionTurn:
    """One request's place in its session's queue (a class, not a generator: this is on every request)."""

    __slots__ = ("_held", "_key", "_queues")

    def __init__(self, queues: SessionQueues, key: str | None) -> None:
        self._queues = queues
        self._key = key
        self._held = False

    async def __aenter__(self) -> bool:
        queues, key = self._queues, self._key
        if key is None or queues.limit <= 0:
            return True
        if queues.locks.users(key) >= queues.limit:
            queues.counters.queue_full += 1
            return False
        if await queues.locks.acquire(key):
            queues.counters.serialized += 1
        self._held = True
        return True

    async def __aexit__(self, *exc_info: object) -> None:
        if self._held:
            self._held = False
            assert self._key is not None
            self._queues.locks.release(self._key)


def session_key(requested_ids: tuple[str, ...]) -> str | None:
    """What serializes a request: the base of the first id it sends (the one backends try first).

    The base alone, because a failover rewrites the store node and route parts while the session stays
    the same; requests that send the same first id always share the queue."""
    if not requested_ids:
        return None
    return requested_ids[0].partition(".")[0].partition("-")[0]


class ReplayableBody:
    """The request body as the app reads it, kept so that a re-run reads the same bytes again.

    What is kept is bounded by the connection's ``--max-body`` (the HTTP loop refuses more), and only
    kept at all when a re-run is possible."""

    def __init__(self, exchange: HTTPExchange, keep: bool) -> None:
        self._exchange = exchange
        self._keep = keep
        self._pieces: list[bytes] = []

    def reader(self) -> BodyReader:
        """A cursor from the start: kept pieces first, then the rest from the connection."""
        return BodyReader(self)

    async def _piece(self, index: int) -> tuple[bytes, bool]:
        if index < len(self._pieces):
            return self._pieces[index], index + 1 < len(self._pieces) or not self._exchange.request_complete
        piece = await self._exchange.receive_data()
        if piece and self._keep:
            self._pieces.append(piece)
        return piece, not self._exchange.request_complete


class BodyReader:
    __slots__ = ("_body", "_index", "complete")

    def __init__(self, body: ReplayableBody) -> None:
        self._body = body
        self._index = 0
        self.complete = False

    async def receive(self) -> tuple[bytes, bool]:
        """The next piece and whether more follows."""
        if self.complete:
            return b"", False
        piece, more = await self._body._piece(self._index)
        self._index += 1
        self.complete = not more
        return piece, more
