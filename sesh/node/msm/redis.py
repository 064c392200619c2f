"""msm on Redis: the sticky and non-sticky backends unchanged, with one rule added for a store outage.

A memcached node that cannot be read leaves the session to its backup copy on the next node. A Redis
store has no next node (its replicas are Redis's own), so a session that cannot be read during a slot
failover must not turn into a fresh, empty session that a 200 then hands out while the old one still
exists (and comes back once the replica is promoted). The store remembers which keys' calls failed
(:meth:`~sesh.net.redis_client.RedisStore.take_failure`); a request whose session could not be loaded
for that reason is answered 503 with ``Retry-After`` at close (``SessionConflict`` without re-run), so
the browser keeps its cookie and tries again.
"""

from __future__ import annotations

import weakref
from typing import Any

from sesh.core.ids import SessionId
from sesh.node.backend import RequestInfo, SessionConflict, SessionSlot
from sesh.node.msm.base import MsmBackendBase, log
from sesh.node.msm.nonsticky import NonStickyBackend, _Read
from sesh.node.msm.sticky import StickyBackend
from sesh.node.msm.store import redis_store

# Slots opened while the store could not be read (weak: a slot is forgotten with its request).
_OUTAGES: weakref.WeakKeyDictionary[SessionSlot[Any], SessionId] = weakref.WeakKeyDictionary()


def _mark_outage(backend: MsmBackendBase, slot: SessionSlot[Any], request: RequestInfo) -> None:
    if slot.current is not None or backend.ignored(request):
        return
    for text in request.requested_ids:
        try:
            session_id = SessionId.parse(text)
        except ValueError:
            continue
        for client in backend.clients.values():
            redis = redis_store(client)
            if redis is not None and redis.take_failure(backend.keys.session_key(session_id)):
                _OUTAGES[slot] = session_id


def _refuse_outage(backend: MsmBackendBase, slot: SessionSlot[Any]) -> None:
    session_id = _OUTAGES.pop(slot, None)
    if session_id is None or slot.closed:
        return
    slot.closed = True
    backend.open_slots -= 1
    backend.counters.write_failures += 1
    log.warning("session could not be loaded from Redis (failover or outage): answering 503 rather than "
                "starting a new session", session=session_id)
    raise SessionConflict(f"session {session_id} could not be loaded: the store is unavailable", rerun=False)


class RedisStickyBackend(StickyBackend):
    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot[None]:
        slot = await super().open_slot(request, now)
        _mark_outage(self, slot, request)
        return slot

    async def close_slot(self, slot: SessionSlot[None], now: float) -> None:
        _refuse_outage(self, slot)
        await super().close_slot(slot, now)


class RedisNonStickyBackend(NonStickyBackend):
    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot[_Read]:
        slot = await super().open_slot(request, now)
        _mark_outage(self, slot, request)
        return slot

    async def close_slot(self, slot: SessionSlot[_Read], now: float) -> None:
        _refuse_outage(self, slot)
        await super().close_slot(slot, now)
