"""Rebasing a request's delta on a session another request stored meanwhile (pure).

A non-sticky request reads the session with ``gets`` and writes it back with ``cas``. When the ``cas``
fails, another request stored a newer version in between. If that request touched none of what this one
changed, this request's delta is applied on top of the newer version and written again: both updates
survive. If it changed the same attribute (or the interval or principal), or invalidated the session,
there is no right answer a store can make up: that is a *conflict*, and the caller reports it instead of
overwriting the other request's update.

What a request only *read* is not recorded by the core, so a request that computed attribute ``b`` from
attribute ``a`` while another changed ``a`` is rebased; use a locking mode for such pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from sesh.core.delta import Delta, RemoveAttribute, SetAttribute, SetMaxInactive, SetPrincipal, apply_delta
from sesh.core.session import Session

_MISSING = object()


@dataclass(frozen=True, slots=True)
class Conflict:
    reason: str


def rebase(delta: Delta, base: Session | None, current: Session) -> Session | Conflict:
    """``current`` with ``delta`` applied, or the :class:`Conflict` that forbids it.

    ``base`` is the session as this request read it (None: the request did not read one, e.g. a new
    session or one restored from a backup); ``current`` is what the store holds now.
    """
    if not current.valid:
        return Conflict("the session was invalidated by a concurrent request")
    if base is None:
        return Conflict(f"a concurrent request stored version {current.version} first")
    for change in delta.changes:
        match change:
            case SetAttribute(name) | RemoveAttribute(name):
                if base.attributes.get(name, _MISSING) != current.attributes.get(name, _MISSING):
                    return Conflict(f"attribute {name!r} was changed by a concurrent request")
            case SetMaxInactive():
                if base.max_inactive != current.max_inactive:
                    return Conflict("max inactive interval was changed by a concurrent request")
            case SetPrincipal():
                if base.principal != current.principal:
                    return Conflict("principal was changed by a concurrent request")
    merged = current.copy()
    apply_delta(merged, delta)
    return merged
