"""What every session backend (local, cluster, msm) offers the node, and one request's session slot.

A request's life, as the node drives it:

1. ``slot = await backend.open_slot(RequestInfo(...), now)`` — the backend finds the requested session
   (in memory, from a peer, from a store node...) or decides there is none; it raises
   :class:`SessionUnavailable` when it cannot tell (the stores that may hold it cannot be read);
2. the app reads or creates the session through ``slot.transaction(create=...)``; creating asks the
   backend for a new session (msm puts its store node into the id);
3. ``await backend.close_slot(slot, now)`` — the backend finishes the transaction (the request's
   delta) and does what its mode does with it: nothing (local), send it to peers (cluster), write the
   session to its store node (msm). The node calls this *before* the response head leaves, so a
   client's next request always finds what this one stored, and a close that raises
   :class:`SessionConflict` can still be answered with a re-run or a 503 (the acknowledge rule).
   ``close_slot`` returns only once the delta is durable where the mode promises it.

Backends also run background work (expiry sweeps, async backups) in :meth:`SessionBackend.run`, under
the node's nursery, and report :meth:`SessionBackend.statistics` for ``/sesh/status``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, TypeVar

import trio

from sesh.core.manager import SessionTransaction
from sesh.core.session import Session
from sesh.net.shutdown import Shutdown
from sesh.node.clock import Clock

if TYPE_CHECKING:  # the backends import this module; their snapshot types are only named here
    from sesh.node.cluster.backend import ClusterStatistics
    from sesh.node.local import LocalStatistics
    from sesh.node.msm.stats import MsmStatistics

# What SessionBackend.statistics() returns: each mode's frozen snapshot (``/sesh/status`` "backend").
BackendStatistics: TypeAlias = "LocalStatistics | MsmStatistics | ClusterStatistics"


class SessionConflict(Exception):
    """``close_slot`` could not make the request's delta durable where the mode promises: a concurrent
    request (on this node or another) changed the session first and the two cannot be merged, or the
    store (or the peers) could not take the write.

    The node host never answers such a request as a success: it re-runs a handler that is safe to
    re-run on the current session (only when ``rerun`` is true), or answers 503 with ``Retry-After``,
    and counts it. Every backend (msm, cluster, redis) raises this one exception, so the rule lives in
    one place.

    ``rerun`` says whether running the handler again on a freshly opened slot can succeed *without
    applying the request twice*: true for a lost race (the delta was not applied anywhere, the next
    open sees the winner's session); false when the delta may already be part of the session (a
    sticky node's memory holds it, only the store write failed), where a re-run would count it twice.
    """

    def __init__(self, message: str, *, rerun: bool = True) -> None:
        super().__init__(message)
        self.rerun = rerun


class SessionUnavailable(Exception):
    """``open_slot`` could not read the requested session: the store nodes that may hold it failed,
    timed out or are marked down, so the backend cannot tell whether it exists. The node host answers
    503 with ``Retry-After`` (the client keeps its cookie and tries again) and counts it, rather than
    start an empty session in its place: that would drop the old one, and every update it acknowledged,
    as soon as the client took the new cookie. A session that is certainly absent (expired, never
    stored, unreadable) is not this: the request goes on with a new session."""


@dataclass(slots=True)  # not frozen, though never changed: one per request, and a frozen init costs 3x
class RequestInfo:
    method: str
    path: str  # decoded path without query and without the ;jsessionid= parameter
    requested_ids: tuple[str, ...]  # path parameter first, then cookies, as sent


class SessionBackend(Protocol):
    mode: str
    clock: Clock  # the node's wall clock: session times, expiry

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None]) -> None: ...

    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot[Any]: ...

    def create_session(self, now: float) -> Session: ...

    def begin(self, session: Session, now: float) -> SessionTransaction: ...

    async def close_slot(self, slot: SessionSlot[Any], now: float) -> None: ...

    def statistics(self) -> BackendStatistics: ...


# What a backend keeps for one request between open_slot and close_slot (msm: the value read and the
# lock held; cluster: the session lock taken); None when it keeps nothing.
StateT = TypeVar("StateT")


class SessionSlot(Generic[StateT]):
    """One request's access to its session; the session is created only when the app asks for one."""

    def __init__(
        self,
        backend: SessionBackend,
        request: RequestInfo,
        now: float,
        session: Session | None = None,
    ) -> None:
        self.backend = backend
        self.request = request
        self.now = now
        self.requested_id = request.requested_ids[0] if request.requested_ids else None
        self._tx: SessionTransaction | None = backend.begin(session, now) if session is not None else None
        self.closed = False
        self.state: StateT | None = None
        # Sessions this request invalidated before it created a new one: they are closed too.
        self.invalidated: list[SessionTransaction] = []

    def transaction(self, create: bool = True) -> SessionTransaction | None:
        tx = self._tx
        if tx is not None and tx.session.valid:
            return tx
        if not create:
            return None
        session = self.backend.create_session(self.now)
        if tx is not None:
            self.invalidated.append(tx)
        self._tx = self.backend.begin(session, self.now)
        return self._tx

    def transactions(self) -> list[SessionTransaction]:
        """Every transaction this request opened, in order: sessions it invalidated, then the current one."""
        txs = list(self.invalidated)
        if self._tx is not None:
            txs.append(self._tx)
        return txs

    @property
    def current(self) -> SessionTransaction | None:
        """The transaction as it stands, valid or not (for the backend at close)."""
        return self._tx

    def cookie_id(self) -> str | None:
        """The session id to send in Set-Cookie, or None when the client already holds it."""
        tx = self._tx
        if tx is None or not tx.session.valid:
            return None
        current = str(tx.session.id)
        return None if current in self.request.requested_ids else current
