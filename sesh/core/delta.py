"""Deltas: the changes one request made to one session.

A transaction applies each change to its session at once and records it; at the end of the request the
backend decides what the recorded :class:`Delta` is for: nothing (local), shipping it to peers (cluster,
like Tomcat's ``DeltaManager``), or re-applying it on top of a newer stored copy after a CAS conflict
(msm). So a delta is self-contained: it names the session, the version the request started from and the
access time, and :func:`apply_delta` gives the same result on any copy of the session. The transaction
and :func:`apply_delta` share :func:`apply_change`, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from sesh.core.ids import SessionId
from sesh.core.session import Session


# Not frozen, though no one changes one: a request makes one per attribute it sets, and a frozen
# dataclass's __init__ (object.__setattr__ per field) costs three times a plain one's.
@dataclass(slots=True)
class SetAttribute:
    name: str
    value: Any


@dataclass(frozen=True, slots=True)
class RemoveAttribute:
    name: str


@dataclass(frozen=True, slots=True)
class SetMaxInactive:
    seconds: int


@dataclass(frozen=True, slots=True)
class SetPrincipal:
    principal: Any


@dataclass(frozen=True, slots=True)
class Invalidate:
    pass


@dataclass(frozen=True, slots=True)
class ChangeId:
    """The session got a new id (a fresh base at login against session fixation, or a new route).

    Peers index sessions by base, so they must learn about a new base (Tomcat's ``DeltaManager`` sends a
    change-session-id message for the same reason).
    """

    session_id: str


Change: TypeAlias = SetAttribute | RemoveAttribute | SetMaxInactive | SetPrincipal | Invalidate | ChangeId


@dataclass(frozen=True, slots=True)
class Delta:
    """The changes of one request, in order.

    ``session_id`` is the id when the request started (receivers find their copy by it, even if the
    request changed it), ``base_version`` the session's version then, and ``accessed`` the time the
    request started (None: unknown), so a replica's idle clock follows the primary's even when the request
    changed nothing.
    """

    session_id: str
    base_version: int
    changes: tuple[Change, ...]
    accessed: float | None = None

    @property
    def empty(self) -> bool:
        """True for a read-only request: nothing to replicate or write back except the access time."""
        return not self.changes


def apply_change(session: Session, change: Change) -> None:
    """Apply one change to ``session`` in place (without touching its version)."""
    if type(change) is SetAttribute:  # nearly every change: first, without the match statement's tests
        session.attributes[change.name] = change.value
        return
    match change:
        case SetAttribute(name, value):
            session.attributes[name] = value
        case RemoveAttribute(name):
            session.attributes.pop(name, None)
        case SetMaxInactive(seconds):
            session.max_inactive = seconds
        case SetPrincipal(principal):
            session.principal = principal
        case Invalidate():
            # A dead session keeps neither data nor credentials, as Tomcat's expire() unbinds everything.
            session.valid = False
            session.attributes.clear()
            session.principal = None
        case ChangeId(session_id):
            session.id = SessionId.parse(session_id)


def apply_delta(session: Session, delta: Delta) -> None:
    """Apply a whole delta to a copy of its session: access time, then changes in order, then version.

    The version goes up by exactly one for a non-empty delta, as it did where the request ran. The access
    time only moves forward, so a late or repeated delta cannot make a session look older. Whether
    ``delta.base_version`` matches ``session.version`` is the caller's business (a mismatch means another
    request got there first).
    """
    if delta.accessed is not None and delta.accessed > session.this_accessed:
        session.touch(delta.accessed)
    for change in delta.changes:
        apply_change(session, change)
    if not delta.empty:
        session.version += 1
