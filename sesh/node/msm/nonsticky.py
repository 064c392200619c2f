"""``--mode msm --no-sticky``: every request loads its session from the store and writes it back.

Theory of operation. Requests of one session may reach any node, so no node keeps sessions in memory.

- **Open.** The session lives on the store node named in its id. If that node is believed down, the
  next available node takes the session over (a *store failover*: the id's store node part is
  rewritten before the app runs). If the locking mode says so, ``lock:<key>`` is taken on that node
  with ``add`` first, retrying until ``--lock-expiration``; a lock not obtained by then is counted and
  logged, and the request goes on *unlocked but still CAS-checked*, never silently as msm does. Then the
  session is read with ``gets``: from its node, or after a failover from its new key there or else from
  its backup copy ``bak:<key>`` on the following nodes. A session missing from its (restarted, emptied)
  node but present in its backup is restored from the backup.
- **Close.** A changed session (or one that moved, was restored, or whose stored copy is half-way to
  expiring) is written back with ``cas`` against the value read, or ``add`` where nothing was read. A
  failed ``cas`` means another request stored a newer version in between: this request's delta is
  rebased on it (:mod:`sesh.node.msm.merge`) and written again, or, when both changed the same thing,
  counted and logged as a conflict and *not* written. Then the backup copy goes to the next available
  node (after the response with ``--session-backup-async``). A backup that could not be written is
  remembered and rebuilt once a node is available again (msm never did: its issue #267). If the
  primary write itself fails, the backup copy still carries this version, and the next request's
  failover finds it there.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass

import trio

from sesh.core.delta import Delta
from sesh.core.ids import SessionId
from sesh.core.manager import SessionTransaction
from sesh.core.serializer import SerializationError, decode_session
from sesh.core.session import Session
from sesh.net.memcache_client import StoreError, StoreUnavailable
from sesh.net.shutdown import Shutdown
from sesh.node.backend import RequestInfo, SessionSlot
from sesh.node.clock import wall_time
from sesh.node.msm.base import MsmBackendBase
from sesh.node.msm.keys import store_exptime
from sesh.node.msm.merge import Conflict, rebase
from sesh.node.msm.settings import MsmSettings

# A write that is stale this many times in a row gives up (and counts a conflict): each retry means yet
# another request stored the session meanwhile, so the session is too hot to rebase safely without a lock.
MAX_REBASES = 8
# Lock polling: start short (a lock is usually held for a few store round trips), back off to this.
LOCK_POLL_FIRST = 0.002
LOCK_POLL_MAX = 0.02
# Backups waiting to be rebuilt; beyond this the oldest are forgotten (their next write rebuilds them).
MAX_PENDING_BACKUPS = 10_000
REBUILDS_PER_ROUND = 200


@dataclass(slots=True)
class _Lock:
    node: str
    key: bytes
    token: bytes
    acquired: float  # trio clock


@dataclass(slots=True)
class _Read:
    """What one request read: where its session lives now and the stored value it is based on."""

    tx: SessionTransaction | None
    node: str  # the store node the session is written to
    key: bytes  # its key there (after any id rewrite)
    cas: int | None  # CAS of that key when read; None when nothing was read from it (add instead)
    blob: bytes | None  # the value the request is based on (for rebasing), None for a new session
    lock: _Lock | None = None


class NonStickyBackend(MsmBackendBase):
    def __init__(self, settings: MsmSettings) -> None:
        super().__init__(settings)
        # bak: key -> (primary node, primary key) of backups that could not be written
        self._pending: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()

    # --- open ---------------------------------------------------------------------------------------

    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot:
        self.open_slots += 1
        if not self.ignored(request):
            for text in request.requested_ids:
                session_id = self.parse_id(text)
                if session_id is None:
                    continue
                slot = await self._open(request, session_id, now)
                if slot is not None:
                    return slot
        return SessionSlot(self, request, now)

    async def _open(self, request: RequestInfo, session_id: SessionId, now: float) -> SessionSlot | None:
        primary = self.ring.node_of(session_id)
        for _ in range(2):  # a node that fails while in use is marked down; the second round fails over
            target = primary if self.available(primary) else self.ring.next_available(primary, self.available)
            if target is None:
                self.log(f"session {session_id}: no store node is available")
                return None
            final = session_id if target == primary else session_id.with_store_node(target)
            lock: _Lock | None = None
            try:
                if self.settings.locking.should_lock(request.path, self.read_only):
                    lock = await self._lock(target, self.keys.lock_key(final))
                found = await self._read(session_id, primary, target, final, now)
            except StoreUnavailable as exc:
                self.log(f"session {session_id}: {exc}")
                await self._unlock(lock)
                continue
            except StoreError as exc:
                self.log(f"session {session_id} cannot be loaded: {exc}")
                await self._unlock(lock)
                return None
            if found is None:
                self.counters.load_misses += 1
                await self._unlock(lock)
                return None
            session, read = found
            read.lock = lock
            slot = SessionSlot(self, request, now, session)
            read.tx = slot.current
            slot.state["msm"] = read
            if final != session_id:
                assert slot.current is not None
                slot.current.change_id(store_node=target)
                self.counters.store_failovers += 1
                self.log(f"store node {primary} is down: session {session_id} moves to {target} as {final}")
            return slot
        return None

    async def _read(
        self, session_id: SessionId, primary: str, target: str, final: SessionId, now: float
    ) -> tuple[Session, _Read] | None:
        key = self.keys.session_key(final)
        item = await self.clients[target].get(key)
        if item is not None:
            # An unreadable value is a lost session (counted and logged by decode), not a reason to
            # resurrect an older copy from the backup.
            session = self.decode(item.value, session_id, key, now)
            if session is None:
                return None
            self.counters.loads += 1
            return session, _Read(None, target, key, item.cas_unique, item.value)
        backup = await self._read_backup(session_id, primary, now)
        if backup is None:
            return None
        session, blob = backup
        self.counters.loads += 1
        if target == primary:
            self.counters.restored_from_backup += 1
            self.log(f"session {session_id} was missing from store node {primary}: restored from its backup")
        return session, _Read(None, target, key, None, blob)

    async def _read_backup(self, session_id: SessionId, primary: str, now: float) -> tuple[Session, bytes] | None:
        key = self.keys.backup_key(session_id)
        for node in self.ring.successors(primary):
            if not self.available(node):
                continue
            try:
                item = await self.clients[node].get(key)
            except (StoreUnavailable, StoreError):
                continue
            if item is not None:
                session = self.decode(item.value, session_id, key, now)
                if session is not None:
                    return session, item.value
        return None

    # --- locks --------------------------------------------------------------------------------------

    async def _lock(self, node: str, key: bytes) -> _Lock | None:
        token = secrets.token_hex(8).encode()
        # memcached counts whole seconds, and an item set with exptime N may be gone in N-1 seconds; one
        # more second makes the lock last at least --lock-expiration.
        exptime = math.ceil(self.settings.lock_expiration) + 1
        deadline = trio.current_time() + self.settings.lock_expiration
        delay = LOCK_POLL_FIRST
        waited = False
        while True:
            if await self.clients[node].store("add", key, token, exptime) == "STORED":
                self.counters.locks += 1
                self.counters.lock_waits += waited
                return _Lock(node, key, token, trio.current_time())
            waited = True
            if trio.current_time() + delay > deadline:
                self.counters.lock_timeouts += 1
                self.log(f"lock {key.decode()!r} not obtained within {self.settings.lock_expiration:g}s: "
                         "going on without it; the write is still checked against concurrent ones")
                return None
            await trio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
            delay = min(delay * 2, LOCK_POLL_MAX)

    async def _unlock(self, lock: _Lock | None) -> None:
        if lock is None:
            return
        client = self.clients[lock.node]
        with trio.CancelScope(shield=True):
            try:
                if trio.current_time() - lock.acquired < self.settings.lock_expiration:
                    await client.delete(lock.key)  # certainly still ours (see the exptime in _lock)
                    return
                # Held so long that it may have expired and been taken by another request: only delete
                # it if it is still ours (a tiny race remains between the two commands).
                item = await client.get(lock.key)
                if item is not None and item.value == lock.token:
                    await client.delete(lock.key)
            except (StoreUnavailable, StoreError):
                pass  # it expires by itself

    # --- close --------------------------------------------------------------------------------------

    async def close_slot(self, slot: SessionSlot, now: float) -> None:
        if slot.closed:
            return
        slot.closed = True
        self.open_slots -= 1
        read: _Read | None = slot.state.get("msm")
        try:
            for tx in slot.transactions():
                if not tx.finished:
                    await self._close(slot, tx, read if read is not None and read.tx is tx else None, now)
        finally:
            await self._unlock(read.lock if read is not None else None)

    async def _close(self, slot: SessionSlot, tx: SessionTransaction, read: _Read | None, now: float) -> None:
        delta = tx.finish()
        session = tx.session
        if read is None:  # created by this request: non-sticky nodes keep nothing in memory
            self.manager.remove(session.id)
            if not tx.invalidated:
                node = self.ring.node_of(session.id)
                await self._store(session, delta, _Read(tx, node, self.keys.session_key(session.id), None, None), now)
            return
        if tx.invalidated:
            await self._delete(read, session)
            return
        if self.settings.locking.mode == "auto":
            self.read_only.record(slot.request.path, modified=not delta.empty)
        refresh = session.max_inactive > 0 and now - session.last_accessed >= session.max_inactive / 2
        if delta.empty and read.cas is not None and not refresh:
            return
        await self._store(session, delta, read, now)

    async def _store(self, session: Session, delta: Delta, read: _Read, now: float) -> None:
        blob = self.encode(session)
        if blob is None:
            return
        client = self.clients[read.node]
        cas = read.cas
        stored = False
        exptime = store_exptime(session, now)
        for _ in range(MAX_REBASES + 1):
            exptime = store_exptime(session, now)
            try:
                if cas is None:
                    status = await client.store("add", read.key, blob, exptime)
                else:
                    status = await client.store("cas", read.key, blob, exptime, cas_unique=cas)
                if status == "STORED":
                    stored = True
                    break
                if delta.empty:
                    return  # only the access time was to be refreshed, and a newer write did that
                item = await client.get(read.key)
            except StoreUnavailable as exc:
                self.counters.write_failures += 1
                self.log(f"session {session.id} not written to store node {read.node} ({exc}); "
                         "its backup copy carries this version")
                await self._backup(read.node, read.key, session.id, blob, exptime, wait=True)
                return
            except StoreError as exc:
                self.counters.write_failures += 1
                self.log(f"session {session.id} not written: {exc}")
                return
            if item is None:
                self._conflict(session, delta, "the session left the store (invalidated or expired) meanwhile")
                return
            current = self.decode(item.value, session.id, read.key, now)
            if current is None:  # unreadable or dead: overwrite it with this request's session
                cas = item.cas_unique
                continue
            merged = rebase(delta, self._base(read), current)
            if isinstance(merged, Conflict):
                self._conflict(session, delta, merged.reason)
                return
            encoded = self.encode(merged)
            if encoded is None:
                return
            session, blob, cas = merged, encoded, item.cas_unique
            self.counters.rebased_writes += 1
        if not stored:
            self._conflict(session, delta, f"still stale after {MAX_REBASES} retries")
            return
        self.counters.writes += 1
        await self._backup(read.node, read.key, session.id, blob, exptime, wait=not self.settings.backup_async)

    def _base(self, read: _Read) -> Session | None:
        if read.blob is None:
            return None
        try:
            return decode_session(read.blob)
        except SerializationError:
            return None

    def _conflict(self, session: Session, delta: Delta, reason: str) -> None:
        self.counters.conflicts += 1
        names = sorted({getattr(c, "name", type(c).__name__) for c in delta.changes})
        self.log(f"conflict on session {session.id}: {reason}; this request's changes ({', '.join(names)}) "
                 f"based on version {delta.base_version} were not stored")

    async def _delete(self, read: _Read, session: Session) -> None:
        targets = [(read.node, read.key)] + [
            (node, self.keys.backup_key(session.id)) for node in self.ring.successors(read.node)
        ]
        for node, key in targets:
            if self.available(node):
                with contextlib.suppress(StoreUnavailable, StoreError):  # else it expires with the session
                    await self.clients[node].delete(key)

    # --- backups ------------------------------------------------------------------------------------

    async def _backup(
        self, primary: str, primary_key: bytes, session_id: SessionId, blob: bytes, exptime: int, *, wait: bool
    ) -> None:
        if len(self.ring.ids) < 2:
            return
        key = self.keys.backup_key(session_id)

        async def write() -> None:
            target = self.ring.next_available(primary, self.available)
            try:
                if target is None:
                    raise StoreUnavailable("", "no other store node is available")
                await self.clients[target].store("set", key, blob, exptime)
            except (StoreUnavailable, StoreError) as exc:
                self.counters.backup_failures += 1
                self._pending[key] = (primary, primary_key)
                self._pending.move_to_end(key)
                while len(self._pending) > MAX_PENDING_BACKUPS:
                    self._pending.popitem(last=False)
                self.log(f"backup of session {session_id} not written ({exc}); rebuilt when a node is back")
                return
            self.counters.backups += 1
            self._pending.pop(key, None)

        if wait:
            await write()
        elif not self.queue.put_nowait(write):
            self.counters.backup_queue_drops += 1

    async def periodic(self, shutdown: Shutdown) -> None:
        """Rebuild the backups that could not be written, once a node can take them."""
        with shutdown.cancel_on_request():
            while True:
                await trio.sleep(1.0)
                for key, (primary, primary_key) in list(self._pending.items())[:REBUILDS_PER_ROUND]:
                    target = self.ring.next_available(primary, self.available)
                    if target is None or not self.available(primary):
                        continue
                    try:
                        item = await self.clients[primary].get(primary_key)
                        if item is not None:
                            await self.clients[target].store("set", key, item.value, _remaining(item.value))
                            self.counters.backups_rebuilt += 1
                            self.log(f"backup {key.decode()!r} rebuilt on store node {target}")
                    except (StoreUnavailable, StoreError):
                        continue
                    self._pending.pop(key, None)


def _remaining(blob: bytes) -> int:
    """The exptime for a backup copy of ``blob``: the session's own, or a short one if it is unreadable."""
    try:
        session = decode_session(blob)
    except SerializationError:
        return 60
    return store_exptime(session, wall_time())
