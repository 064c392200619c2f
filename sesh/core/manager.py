"""The session manager of one node, and the transaction one request holds on a session.

Theory of operation. The manager keeps the node's sessions indexed by id *base*: the route changes when a
request fails over to another node and the store node changes when msm fails over to another store, but
the 128 random bits of the base identify the session. A request goes::

    session = manager.find(cookie_value, now) or manager.create(now)
    tx = manager.begin(session, now)      # touches the session
    ... tx.get / tx.set / tx.invalidate ...  # applied at once and recorded
    delta = tx.finish()                   # version + 1 if anything changed; the backend ships the delta

A session with a request in progress is never expired by the sweep (Tomcat's activity check), so a slow
request cannot have its session pulled from under it.

Copies from elsewhere. A delta from another node applies only on top of the version it was made from
(:func:`delta_fit`): a delta made from an older version than the one held is *stale* (a write that lost
a race, or one already part of the copy), one made from a newer version shows a *gap* (writes in between
were missed: only the whole session repairs it). :meth:`SessionManager.apply_delta` applies what fits and
says what did not; the backend chooses the answer (refuse, ask for the whole session). A state transfer
is :meth:`SessionManager.snapshot` on one side and :meth:`SessionManager.install_all` on the other.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sesh.core.delta import (
    Change,
    ChangeId,
    Delta,
    Invalidate,
    RemoveAttribute,
    SetAttribute,
    SetMaxInactive,
    SetPrincipal,
    apply_change,
    apply_delta,
)
from sesh.core.ids import InvalidSessionId, SessionId, id_base, new_session_id
from sesh.core.serializer import check_encodable, check_principal
from sesh.core.session import Session, max_inactive_problem


@dataclass(frozen=True, slots=True)
class ManagerStatistics:
    active: int  # sessions held now
    created: int  # created on this node
    expired: int  # removed because they were idle too long
    invalidated: int  # removed by invalidation (here or, through a delta, on a peer)
    max_active: int  # the most sessions held at once
    rejected_ids: int  # lookups of malformed ids (garbage or hostile cookies)
    added: int  # installed from elsewhere: a store, a peer, a state transfer
    in_use: int  # sessions with at least one request in progress


class Fit(enum.Enum):
    """How a delta relates to the copy of its session held here."""

    APPLIED = "applied"  # made from the held version: applied
    MISSING = "missing"  # no copy held here (or the delta's id is malformed)
    STALE = "stale"  # made from an older version than held: superseded, not applied
    GAP = "gap"  # made from a newer version than held: writes were missed, not applied


def delta_fit(held_version: int | None, base_version: int) -> Fit:
    """Whether a delta made from ``base_version`` can apply to a copy at ``held_version`` (None: no copy);
    :attr:`Fit.APPLIED` when it can."""
    if held_version is None:
        return Fit.MISSING
    if base_version == held_version:
        return Fit.APPLIED
    return Fit.STALE if base_version < held_version else Fit.GAP


@dataclass(frozen=True, slots=True)
class DeltaResult:
    fit: Fit
    session: Session | None  # the copy held here (after the delta when applied); None when missing


class SessionManager:
    """The sessions of one node. Not thread-safe; the node runs it from one trio thread."""

    def __init__(self, *, route: str = "", max_inactive: int = 1800, store_node: str = "") -> None:
        # Fail at startup, not at the first request, if the configured route or store node would make
        # ids the balancer cannot route.
        SessionId("0" * 32, store_node, route)
        problem = max_inactive_problem(max_inactive)
        if problem is not None:
            raise ValueError(problem)
        self.route = route
        self.store_node = store_node
        self.max_inactive = max_inactive
        self._sessions: dict[str, Session] = {}
        self._fresh: set[str] = set()  # bases created here that no request has begun yet
        # base -> open transactions. Dropped with the session, so a transaction that is never finished
        # (a bug elsewhere) can at worst keep its own still-held session from expiring, nothing more.
        self._in_use: dict[str, int] = {}
        self._created = 0
        self._expired = 0
        self._invalidated = 0
        self._max_active = 0
        self._rejected_ids = 0
        self._added = 0

    # --- the index ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def get_by_base(self, base: str) -> Session | None:
        return self._sessions.get(base)

    def _install(self, session: Session) -> None:
        self._sessions[session.id.base] = session
        self._max_active = max(self._max_active, len(self._sessions))

    def _drop(self, session: Session) -> bool:
        """Unindex ``session`` if it is the one held under its base; whether it was."""
        base = session.id.base
        if self._sessions.get(base) is not session:
            return False
        del self._sessions[base]
        self._fresh.discard(base)
        self._in_use.pop(base, None)
        return True

    def _unique_base(self) -> str:
        while True:  # a collision of 128 random bits will not happen, but costs nothing to rule out
            base = new_session_id().base
            if base not in self._sessions:
                return base

    def create(self, now: float) -> Session:
        """A new session with this node's route and store node, held by the manager."""
        session_id = SessionId(self._unique_base(), self.store_node, self.route)
        session = Session.new(session_id, now, self.max_inactive)
        self._install(session)
        self._fresh.add(session_id.base)
        self._created += 1
        return session

    def find(self, id_text: str, now: float) -> Session | None:
        """The live session for a client's id, whatever its route and store node; None if there is none.

        Malformed ids are counted; an expired session is removed and counted here rather than waiting for
        the sweep, so a client never gets a session back after its interval.
        """
        try:
            base = id_base(id_text)
        except InvalidSessionId:
            self._rejected_ids += 1
            return None
        session = self._sessions.get(base)
        if session is None or not session.valid:
            return None
        if session.is_expired(now) and base not in self._in_use:
            self._expire_one(session)
            return None
        return session

    def add(self, session: Session) -> None:
        """Install a session loaded from elsewhere (store, peer), replacing any with the same base."""
        if not session.valid:
            raise ValueError(f"cannot add invalidated session {session.id}")
        self._fresh.discard(session.id.base)
        self._install(session)
        self._added += 1

    def remove(self, session_id: SessionId | str) -> Session | None:
        """Forget a session without invalidating it (it lives on elsewhere, e.g. in the store)."""
        if isinstance(session_id, str):
            try:
                session_id = SessionId.parse(session_id)
            except InvalidSessionId:
                return None
        session = self._sessions.get(session_id.base)
        if session is not None:
            self._drop(session)
        return session

    # --- life cycle -----------------------------------------------------------------------------------

    def begin(self, session: Session, now: float) -> SessionTransaction:
        """Start a request on ``session``: touch it and return the transaction that records its changes."""
        if not session.valid:
            raise RuntimeError(f"session {session.id} is invalidated")
        base = session.id.base
        held = self._sessions.get(base) is session
        is_new = held and base in self._fresh
        self._fresh.discard(base)
        session.touch(now)
        if held:  # only held sessions are ever expired here
            self._in_use[base] = self._in_use.get(base, 0) + 1
        return SessionTransaction(self, session, is_new=is_new)

    def change_id(
        self,
        session: Session,
        *,
        route: str | None = None,
        store_node: str | None = None,
        new_base: bool = False,
    ) -> SessionId:
        """Give ``session`` a new id and re-index it; return the old id.

        ``new_base=True`` draws a fresh base, which is how a login defeats session fixation. Use
        :meth:`SessionTransaction.change_id` during a request so the change is in the delta too.
        """
        old = session.id
        new = SessionId(
            self._unique_base() if new_base else old.base,
            old.store_node if store_node is None else store_node,
            old.route if route is None else route,
        )
        indexed = new.base != old.base and self._sessions.get(old.base) is session
        fresh = old.base in self._fresh
        in_use = self._in_use.get(old.base)
        if indexed:
            self._drop(session)
        session.id = new
        if indexed:
            self._install(session)
            if fresh:
                self._fresh.add(new.base)
            if in_use is not None:
                self._in_use[new.base] = in_use
        return old

    def invalidate(self, session: Session) -> None:
        """End ``session`` now: mark it invalid, clear it, forget it and count it."""
        apply_change(session, Invalidate())
        if self._drop(session):
            self._invalidated += 1

    def _expire_one(self, session: Session) -> None:
        self._drop(session)
        session.valid = False
        self._expired += 1

    def expire(self, now: float) -> list[Session]:
        """The periodic sweep: remove and return the sessions idle too long (but not those in use)."""
        dead = [s for s in self._sessions.values() if s.is_expired(now) and s.id.base not in self._in_use]
        for session in dead:
            self._expire_one(session)
        return dead

    def apply_delta(self, delta: Delta, *, force: bool = False) -> DeltaResult:
        """Apply a delta from elsewhere to the copy held here if it was made from that copy's version
        (``force``: whatever the version), and say how it fitted (:func:`delta_fit`).

        Re-indexes the session if the delta gave it a new base and forgets it if the delta invalidated it.
        """
        try:
            base = SessionId.parse(delta.session_id).base
        except InvalidSessionId:
            self._rejected_ids += 1
            return DeltaResult(Fit.MISSING, None)
        session = self._sessions.get(base)
        if session is None:
            return DeltaResult(Fit.MISSING, None)
        fit = delta_fit(session.version, delta.base_version)
        if fit is not Fit.APPLIED and not force:
            return DeltaResult(fit, session)
        apply_delta(session, delta)
        if session.id.base != base:
            del self._sessions[base]
            self._fresh.discard(base)
            in_use = self._in_use.pop(base, None)
            self._install(session)
            if in_use is not None:
                self._in_use[session.id.base] = in_use
        if not session.valid:
            self.invalidate(session)
        return DeltaResult(Fit.APPLIED, session)

    # --- state transfer ---------------------------------------------------------------------------------

    def snapshot(self) -> list[Session]:
        """Every live session held now, for a state transfer: the list is fixed, the sessions are the
        held objects (encode each before the next await; later writes reach the joiner as deltas)."""
        return [s for s in self._sessions.values() if s.valid]

    def install(self, session: Session, *, force: bool = False) -> bool:
        """Hold a copy from elsewhere unless a copy at least as new is held (``force``: the sender's copy
        wins, e.g. an ordering node's repair); whether it was installed."""
        if not session.valid:
            return False
        held = self._sessions.get(session.id.base)
        if held is session or (held is not None and not force and held.version >= session.version):
            return False
        self.add(session)
        return True

    def install_all(self, sessions: Iterable[Session], *, newer: Mapping[str, int] | None = None) -> list[Session]:
        """A state transfer's sessions, each installed unless a copy at least as new is held or ``newer``
        (base -> version) records one: writes that reached this node while the transfer ran, and sessions
        that ended meanwhile (recorded with a version above any). Returns the sessions installed."""
        installed = []
        for session in sessions:
            seen = newer.get(session.id.base) if newer else None
            if seen is not None and seen >= session.version:
                continue
            if self.install(session):
                installed.append(session)
        return installed

    def _release(self, session: Session) -> None:
        """A transaction on ``session`` finished."""
        base = session.id.base
        left = self._in_use.pop(base, 0) - 1  # absent: dropped meanwhile, and its count with it
        if left > 0:
            self._in_use[base] = left

    def statistics(self) -> ManagerStatistics:
        return ManagerStatistics(
            active=len(self._sessions),
            created=self._created,
            expired=self._expired,
            invalidated=self._invalidated,
            max_active=self._max_active,
            rejected_ids=self._rejected_ids,
            added=self._added,
            in_use=len(self._in_use),
        )


class SessionTransaction:
    """One request's view of a session: changes apply at once and are recorded as the request's delta.

    Values returned by :meth:`get` are the stored objects; mutating one in place is *not* recorded, so
    set it again after changing it (as with Tomcat's ``setAttribute`` under ``DeltaManager``).
    """

    __slots__ = (
        "_accessed",
        "_base_version",
        "_changes",
        "_finished",
        "_invalidated",
        "_is_new",
        "_manager",
        "_session",
        "_start_id",
    )

    def __init__(self, manager: SessionManager, session: Session, *, is_new: bool) -> None:
        self._manager = manager
        self._session = session
        self._is_new = is_new
        self._start_id = str(session.id)
        self._base_version = session.version
        self._accessed = session.this_accessed
        self._changes: list[Change] = []
        self._finished = False
        self._invalidated = False

    def __enter__(self) -> SessionTransaction:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Changes were applied as they were made, so even a failed request finishes (Tomcat does not roll
        # back either); what matters is that the session is released for the expiry sweep.
        if not self._finished:
            self.close()

    # --- state --------------------------------------------------------------------------------------

    @property
    def session(self) -> Session:
        return self._session

    @property
    def id(self) -> str:
        """The session's current id, as the cookie should carry it."""
        return str(self._session.id)

    @property
    def is_new(self) -> bool:
        """Whether this is the first request on a session this node created (the client lacks its id)."""
        return self._is_new

    @property
    def changed(self) -> bool:
        return bool(self._changes)

    @property
    def invalidated(self) -> bool:
        return self._invalidated

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def delta(self) -> Delta:
        return Delta(self._start_id, self._base_version, tuple(self._changes), self._accessed)

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"the transaction on session {self._start_id} is already finished")

    def _record(self, change: Change) -> None:
        """Apply and record ``change``; the caller has checked that the transaction is open."""
        if self._invalidated:
            raise RuntimeError(f"session {self._start_id} was invalidated during this request")
        apply_change(self._session, change)
        self._changes.append(change)

    # --- reading ------------------------------------------------------------------------------------

    def get(self, name: str, default: Any = None) -> Any:
        self._check_open()
        return self._session.attributes.get(name, default)

    def has(self, name: str) -> bool:
        self._check_open()
        return name in self._session.attributes

    def names(self) -> list[str]:
        """A snapshot of the attribute names, safe to iterate while removing."""
        self._check_open()
        return list(self._session.attributes)

    # --- changing -----------------------------------------------------------------------------------

    def set(self, name: str, value: Any) -> None:
        """Set an attribute; :class:`UnencodableValue` naming it, and no change, if it is not plain data."""
        self._check_open()
        if type(name) is not str:
            raise TypeError(f"attribute names are strings, got {type(name).__name__}")
        check_encodable(name, value)
        self._record(SetAttribute(name, value))

    def remove(self, name: str) -> None:
        """Remove an attribute; removing one that is not there changes (and records) nothing."""
        self._check_open()
        if name in self._session.attributes:
            self._record(RemoveAttribute(name))

    def set_max_inactive(self, seconds: int) -> None:
        """Set the idle timeout in seconds; zero or less means the session never expires. A value beyond
        :data:`~sesh.core.session.MAX_INACTIVE_LIMIT` is refused here, in the request that set it, since
        every node reading the session would otherwise treat it as corrupt."""
        if type(seconds) is not int:
            raise TypeError(f"max_inactive is an int of seconds, got {type(seconds).__name__}")
        problem = max_inactive_problem(seconds)
        if problem is not None:
            raise ValueError(problem)
        self._check_open()
        self._record(SetMaxInactive(seconds))

    def set_principal(self, principal: Any) -> None:
        self._check_open()
        check_principal(principal)
        self._record(SetPrincipal(principal))

    def invalidate(self) -> None:
        """End the session: cleared and forgotten by the manager at once (recorded for peers). Idempotent."""
        self._check_open()
        if not self._invalidated:
            self._record(Invalidate())
            self._invalidated = True
            self._manager.invalidate(self._session)

    def change_id(
        self, *, route: str | None = None, store_node: str | None = None, new_base: bool = False
    ) -> SessionId:
        """:meth:`SessionManager.change_id`, recorded in the delta so peers follow; returns the old id."""
        self._check_open()
        if self._invalidated:
            raise RuntimeError(f"session {self._start_id} was invalidated during this request")
        old = self._manager.change_id(self._session, route=route, store_node=store_node, new_base=new_base)
        if self._session.id != old:
            self._changes.append(ChangeId(str(self._session.id)))
        return old

    def finish(self) -> Delta:
        """End the request: version + 1 if anything changed, release the session, return the delta."""
        self.close()
        return self.delta

    def close(self) -> None:
        """:meth:`finish` without building the delta, for a backend that has no use for it (local)."""
        self._check_open()
        self._finished = True
        if self._changes:
            self._session.version += 1
        self._manager._release(self._session)
