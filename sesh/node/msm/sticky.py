"""``--mode msm --sticky``: sessions live in this node's memory and are backed up to their store node.

Theory of operation. The balancer keeps a session on the node whose route is in its id, so the copy in
memory is the authoritative one and the store holds a backup for the day the node is gone.

- **Open.** A requested session held here under this node's route is used as is. Any other requested
  session is loaded from the store node in its id: one carrying another route is a *node failover* (the
  balancer moved the client here), so its route is rewritten to this node's; one carrying our own route
  was lost from memory by a restart (a store that cannot be read then, with no copy here, raises
  ``SessionUnavailable``: 503, never an empty session in its place). Then, if the session's store
  node is believed down, the next available node (failover nodes last) takes it over: a *store
  failover* rewrites the id's store node part. Both rewrites happen before the app runs, so the
  response's Set-Cookie carries the new id.
- **Close.** The session is written when the request changed it, when its id changed (which changes
  its key), when an earlier write of it failed, or when its stored copy would expire within half an
  interval. By default the write is done *before* the response (the acknowledge rule: a success answer
  means the store holds the update, so a SIGKILLed node loses nothing it acknowledged), within
  ``--session-backup-timeout``. A write that fails or times out fails the session over to the next
  available store node at once (the id's store node part is rewritten and the response's Set-Cookie
  carries it); if that fails too, ``close_slot`` raises ``SessionConflict(rerun=False)`` and the node
  answers 503: the update is in this node's memory (so a re-run would count it twice) but not durable.
  With ``--session-backup-async`` the write is queued and done after the response (through the bounded
  write queue, where a session has at most one write waiting: a newer copy replaces the one queued):
  faster, but what is still queued when the node dies is lost although it was acknowledged.
  Writes of one session are ordered by a per-session sequence number, so an older copy never
  overwrites a newer one; after the new key is written the old key is deleted (in the background).

The store copy is written with ``set``: the key holds the route, so only the node owning the route
writes it, and that node's memory is by definition the newest copy. The node host runs one request per
session at a time (:mod:`sesh.node.acknowledge`), so writes of one session do not overlap either.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import trio

from sesh.core.ids import SessionId
from sesh.core.session import Session
from sesh.net.memcache_client import StoreError, StoreUnavailable
from sesh.net.shutdown import Shutdown
from sesh.node.backend import RequestInfo, SessionConflict, SessionSlot, SessionUnavailable
from sesh.node.clock import Clock, wall_time
from sesh.node.expiry import sweep_expired
from sesh.node.msm.base import MsmBackendBase, log
from sesh.node.msm.keys import store_exptime
from sesh.node.msm.settings import MsmSettings


@dataclass(slots=True)
class _StoreCopy:
    """What this node knows about the stored copy of one of its sessions."""

    key: bytes | None = None  # the key last written (None: never written from here)
    node: str = ""
    expires_at: float = 0.0  # wall-clock time the stored copy expires
    requested: int = 0  # writes asked for
    written: int = 0  # sequence number of the newest write done
    lock: trio.Lock = field(default_factory=trio.Lock)
    pending: _Write | None = None  # the newest copy waiting for the async queue
    queued: bool = False  # a queue job will write ``pending``


@dataclass(frozen=True, slots=True)
class _Write:
    seq: int
    session_id: str
    node: str
    key: bytes
    blob: bytes
    exptime: int
    expires_at: float


class StickyBackend(MsmBackendBase):
    def __init__(self, settings: MsmSettings, clock: Clock = wall_time) -> None:
        super().__init__(settings, clock)
        self._copies: dict[str, _StoreCopy] = {}

    # --- open ---------------------------------------------------------------------------------------

    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot[None]:
        ignored = self.ignored(request)
        for text in request.requested_ids:
            session_id = self.parse_id(text)
            if session_id is None:
                continue
            held = self.manager.find(text, now)
            if held is not None and held.id.route == self.settings.route:
                return self._slot(request, now, held)
            try:
                loaded = None if ignored else await self._load(session_id, now)
            except SessionUnavailable:
                if held is None:
                    raise
                loaded = None
            if loaded is not None:
                self.manager.add(loaded)
                return self._slot(request, now, loaded)
            if held is not None:  # another node's id, but the store has nothing newer than our copy
                return self._slot(request, now, held)
        self.open_slots += 1
        return SessionSlot(self, request, now)

    def _slot(self, request: RequestInfo, now: float, session: Session) -> SessionSlot[None]:
        self.open_slots += 1
        slot: SessionSlot[None] = SessionSlot(self, request, now, session)
        tx = slot.current
        assert tx is not None
        if session.id.route != self.settings.route:
            old = tx.change_id(route=self.settings.route)
            self.counters.node_failovers += 1
            log.info("session taken over from another route", session=old, route=old.route or "-",
                     new_id=session.id)
        node = self.ring.node_of(session.id)
        if not self.available(node):
            target = self.ring.next_available(node, self.available)
            if target is not None:
                old = tx.change_id(store_node=target)
                self.counters.store_failovers += 1
                log.warning("store node is down: session moves", node=node, session=old, to=target,
                            new_id=session.id)
        return slot

    async def _load(self, session_id: SessionId, now: float) -> Session | None:
        node = self.ring.node_of(session_id)
        key = self.keys.session_key(session_id)
        try:
            item = await self.clients[node].get(key)
        except (StoreUnavailable, StoreError) as exc:
            self.counters.load_failures += 1
            log.warning("session cannot be read: refusing the request rather than starting a new session",
                        session=session_id, node=node, error=exc)
            raise SessionUnavailable(f"session {session_id} cannot be read: {exc}") from None
        if item is None:
            self.counters.load_misses += 1
            return None
        session = self.decode(item.value, session_id, key, now)
        if session is None:
            self.counters.load_misses += 1
            return None
        self.counters.loads += 1
        expires = session.expires_at()
        self._copies[session.id.base] = _StoreCopy(key, node, expires if expires is not None else float("inf"))
        return session

    # --- close --------------------------------------------------------------------------------------

    async def close_slot(self, slot: SessionSlot[None], now: float) -> None:
        if slot.closed:
            return
        slot.closed = True
        self.open_slots -= 1
        ignored = self.ignored(slot.request)
        for tx in slot.transactions():
            if tx.finished:
                continue
            delta = tx.finish()
            session = tx.session
            if tx.invalidated:
                await self._forget(session)
                continue
            copy = self._copies.setdefault(session.id.base, _StoreCopy())
            key = self.keys.session_key(session.id)
            refresh = session.max_inactive > 0 and copy.expires_at - now < session.max_inactive / 2
            if ignored and copy.key is not None:
                continue
            # written < requested: an earlier write failed (its request was answered 503), so the copy in
            # the store is behind memory even if this request changed nothing.
            if delta.empty and copy.key == key and not refresh and copy.written == copy.requested:
                continue
            await self._write(session, copy, now)

    async def _write(self, session: Session, copy: _StoreCopy, now: float) -> None:
        blob = self.encode(session)
        if blob is None:
            raise SessionConflict(f"session {session.id} cannot be encoded", rerun=False)
        copy.requested += 1
        expires = session.expires_at()
        write = _Write(
            seq=copy.requested,
            session_id=str(session.id),
            node=self.ring.node_of(session.id),
            key=self.keys.session_key(session.id),
            blob=blob,
            exptime=store_exptime(session, now),
            expires_at=expires if expires is not None else float("inf"),
        )
        if not self.settings.backup_async:
            await self._write_now(session, copy, write)
            return
        # Only the newest copy of a session matters: a write still waiting in the queue takes this one
        # instead, so a busy node queues at most one write per session rather than one per request.
        if copy.pending is not None:
            self.counters.superseded_writes += 1
        copy.pending = write
        if copy.queued:
            return

        async def run_pending() -> None:
            copy.queued = False
            pending, copy.pending = copy.pending, None
            if pending is not None:
                await self._store(copy, pending)

        copy.queued = self.queue.put_nowait(run_pending)
        if not copy.queued:
            copy.pending = None
            self.counters.backup_queue_drops += 1

    async def _write_now(self, session: Session, copy: _StoreCopy, write: _Write) -> None:
        """Store ``write`` before the response: on its node, else on the next available one (a store
        failover that rewrites the id); SessionConflict(rerun=False) when neither takes it."""
        if await self._store_within(copy, write):
            return
        target = self.ring.next_available(write.node, self.available)
        if target is not None:
            old = self.manager.change_id(session, store_node=target)
            self.counters.store_failovers += 1
            log.warning("store node did not take the session: it moves", node=write.node, session=old, to=target,
                        new_id=session.id)
            copy.requested += 1
            write = replace(write, seq=copy.requested, session_id=str(session.id), node=target,
                            key=self.keys.session_key(session.id))
            if await self._store_within(copy, write):
                return
        raise SessionConflict(f"session {write.session_id} could not be written to any store node", rerun=False)

    async def _store_within(self, copy: _StoreCopy, write: _Write) -> bool:
        with trio.move_on_after(self.settings.backup_timeout):
            return await self._store(copy, write)
        self.counters.write_failures += 1
        self.counters.backup_failures += 1
        self.clients[write.node].note_timeout(self.settings.backup_timeout)
        log.warning("session not written in time", session=write.session_id, node=write.node,
                    seconds=self.settings.backup_timeout)
        return False

    async def _store(self, copy: _StoreCopy, write: _Write) -> bool:
        """Write one copy; True when it (or a newer copy, which includes it) is in the store."""
        lock = copy.lock
        # The node host runs one request per session at a time, so the lock is nearly always free: take
        # it without the scheduling round trip of an await (the store call is the checkpoint).
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            if write.seq <= copy.written:
                self.counters.superseded_writes += 1
                return True
            try:
                await self.clients[write.node].store("set", write.key, write.blob, write.exptime)
            except (StoreUnavailable, StoreError) as exc:
                self.counters.write_failures += 1
                self.counters.backup_failures += 1
                log.warning("session not written", session=write.session_id, node=write.node, error=exc)
                return False
            old_key, old_node = copy.key, copy.node
            copy.key, copy.node, copy.expires_at, copy.written = write.key, write.node, write.expires_at, write.seq
            self.counters.writes += 1
            self.counters.backups += 1
        finally:
            lock.release()
        # Cleanup, after the answer: the old key is unreachable (clients hold the new id) and expires
        # with the session if the delete is lost.
        if old_key is not None and old_key != write.key and not self.queue.put_nowait(
            lambda: self._delete(old_node, old_key)
        ):
            self.counters.backup_queue_drops += 1
        return True

    async def _forget(self, session: Session) -> None:
        copy = self._copies.pop(session.id.base, None)
        if copy is None or copy.key is None:
            return
        key, node = copy.key, copy.node

        async def delete() -> None:
            async with copy.lock:
                await self._delete(node, key)

        if not self.queue.put_nowait(delete):
            self.counters.backup_queue_drops += 1

    async def _delete(self, node: str, key: bytes) -> None:
        with contextlib.suppress(StoreUnavailable, StoreError):  # else it expires with the session
            await self.clients[node].delete(key)

    # --- background ---------------------------------------------------------------------------------

    async def periodic(self, shutdown: Shutdown) -> None:
        """Expire idle sessions from memory (their store copies expire by themselves)."""
        with shutdown.cancel_on_request():
            await sweep_expired(self.manager, self.settings.expire_interval, self.clock, log, self._forget_copies)

    def _forget_copies(self, expired: list[Session]) -> None:
        for session in expired:
            self._copies.pop(session.id.base, None)
