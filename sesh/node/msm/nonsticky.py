"""``--mode msm --no-sticky``: every request loads its session from the store and writes it back.

Theory of operation. Requests of one session may reach any node, so no node keeps sessions in memory.

- **Open.** The session lives on the store node named in its id. If that node is believed down, the
  next available node takes the session over (a *store failover*: the id's store node part is
  rewritten before the app runs). If the locking mode says so, ``lock:<key>`` is taken on that node
  with ``add``, retrying until ``--lock-expiration``; a lock not obtained by then is counted and
  logged, and the request goes on *unlocked but still CAS-checked*, never silently as msm does. The
  session is read with ``gets``: from its node, or after a failover from its new key there or else from
  its backup copy ``bak:<key>`` on the following nodes. The lock's ``add`` goes out in the same send as
  that ``gets`` (the node runs them in order), and the backup's ``gets`` to the next node meanwhile: it
  may be read before the lock is ours, which is safe, since the backup is written with ``cas`` against
  that read and a lost ``cas`` mirrors the primary (below). A held lock drops what was read; it is read
  again once the lock is taken. On Redis (one node) the lock is taken first, then the session read.
  A session missing from its (restarted, emptied) node but present in its backup is restored from
  the backup. A session that cannot be read (its node and the nodes of its backup fail or are down)
  raises ``SessionUnavailable``: the request is answered 503 and the client keeps its cookie, where
  msm would hand out an empty session in its place.
- **Close.** A changed session (or one that moved, was restored, or whose stored copy is half-way to
  expiring) is written back with ``cas`` against the value read, or ``add`` where nothing was read. A
  failed ``cas`` means another request stored a newer version in between: this request's delta is
  rebased on it (:mod:`sesh.node.msm.merge`) and written again, or, when both changed the same thing,
  ``close_slot`` raises ``SessionConflict`` and the node host re-runs the request on the new version or
  answers 503 (never a success: see :mod:`sesh.node.acknowledge`).
- **Backup, before the answer.** The response is sent only once the primary copy *and* the backup copy
  ``bak:<key>`` on the next available node are stored, so either store node can die (the acknowledge
  rule). The backup is written with ``cas`` against the backup read at open (read in parallel with the
  session, one round trip), so a slow writer can never put an older copy over a newer one; a backup
  that lost such a race is *mirrored*: read (backup first, then primary: a value read from the primary
  after the backup then includes every write whose backup was already in place) and copied from the
  primary with ``cas``, before the answer.

  The two copies are written in parallel (one round trip), with or without the session lock. Without
  it, a request may lose the race on the primary while its backup ``cas`` lands, and a write's backup
  may land before its primary. Three rules keep every answered version in the backup:

  - a refused version in the backup is put back before anyone answers on it: the loser mirrors the
    primary over it before it rebases or re-runs, and the winner, whose own backup ``cas`` then fails,
    mirrors too before its answer;
  - a request that read a backup *ahead* of the primary (a higher version: a write in flight) writes
    its backup with ``add``, which fails, instead of ``cas`` against it, and mirrors once its primary
    is in; so no loser can overwrite a backup whose primary has not landed yet;
  - a mirror never copies a primary over a newer backup: it waits for the primary to catch up.

  The backup ``cas`` otherwise only succeeds if nobody wrote the backup since the read, and the
  versions answered before the read are in the version the request is based on.

  With one store node down the session lives on the remaining one: a backup node that cannot be
  written is counted and remembered, the answer is still a success (the primary holds the update), and
  the backup is rebuilt (mirrored) once a node can take it again (msm never did: its issue #267). A
  primary that cannot be written while the backup takes the update moves the session to the backup's
  node before the answer (a store failover at close, as sticky mode does: the new id is in the
  Set-Cookie), so no later request can read the older copy its node still holds once it answers
  again. When neither takes it, ``SessionConflict`` (without re-run: an unanswered write may still
  have landed) makes the node answer 503.
"""

from __future__ import annotations

import contextlib
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import NoReturn

import trio

from sesh.core.delta import Delta
from sesh.core.ids import SessionId
from sesh.core.manager import SessionTransaction
from sesh.core.serializer import SerializationError, decode_session
from sesh.core.session import Session
from sesh.net.memcache_client import StoreError, StoreUnavailable
from sesh.net.shutdown import Shutdown
from sesh.node.backend import RequestInfo, SessionConflict, SessionSlot, SessionUnavailable
from sesh.node.clock import Clock, wall_time
from sesh.node.msm.base import MsmBackendBase, log
from sesh.node.msm.keys import store_exptime
from sesh.node.msm.merge import Conflict, rebase
from sesh.node.msm.settings import MsmSettings
from sesh.node.msm.store import Write, add_and_get_each, get_each, store_each
from sesh.protocol.memcache_client import StoreCommand, Value

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
    backup_node: str | None = None  # where the backup copy goes; None: no other node is available
    backup_cas: int | None = None  # CAS of the backup when read; None: there was none (add)
    lock: _Lock | None = None


# What one store command ended with: the status word, or the failure.
_Outcome = str | StoreUnavailable | StoreError


class NonStickyBackend(MsmBackendBase):
    def __init__(self, settings: MsmSettings, clock: Clock = wall_time) -> None:
        super().__init__(settings, clock)
        # bak: key -> (primary node, primary key) of backups that could not be written
        self._pending: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()

    # --- open ---------------------------------------------------------------------------------------

    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot[_Read]:
        self.open_slots += 1
        try:
            if not self.ignored(request):
                for text in request.requested_ids:
                    session_id = self.parse_id(text)
                    if session_id is None:
                        continue
                    slot = await self._open(request, session_id, now)
                    if slot is not None:
                        return slot
        except BaseException:
            self.open_slots -= 1
            raise
        return SessionSlot(self, request, now)

    async def _open(self, request: RequestInfo, session_id: SessionId, now: float) -> SessionSlot[_Read] | None:
        """The session's slot; None when it is certainly not stored (absent, expired or unreadable).
        Raises SessionUnavailable when the nodes that may hold it cannot be read."""
        primary = self.ring.node_of(session_id)
        failure = "no store node is available"
        # A node that fails while in use is marked down, so each round fails over past one more node.
        for _ in range(len(self.ring.ids)):
            target = primary if self.available(primary) else self.ring.next_available(primary, self.available)
            if target is None:
                break
            final = session_id if target == primary else session_id.with_store_node(target)
            lock: _Lock | None = None
            try:
                if self.settings.locking.should_lock(request.path, self.read_only):
                    lock, found = await self._lock_and_read(session_id, primary, target, final, now)
                else:
                    found = await self._read(session_id, primary, target, final, now)
            except StoreUnavailable as exc:
                log.warning("store node failed while loading", session=session_id, error=exc)
                await self._unlock(lock)
                failure = str(exc)
                continue
            except StoreError as exc:
                await self._unlock(lock)
                self._unreadable(session_id, str(exc))
            if found is None:
                self.counters.load_misses += 1
                await self._unlock(lock)
                return None
            session, read = found
            read.lock = lock
            slot: SessionSlot[_Read] = SessionSlot(self, request, now, session)
            read.tx = slot.current
            slot.state = read
            if final != session_id:
                assert slot.current is not None
                slot.current.change_id(store_node=target)
                self.counters.store_failovers += 1
                log.warning("store node is down: session moves", node=primary, session=session_id, to=target,
                            new_id=final)
            return slot
        self._unreadable(session_id, failure)

    def _unreadable(self, session_id: SessionId, reason: str) -> NoReturn:
        self.counters.load_failures += 1
        log.warning("session cannot be read: refusing the request rather than starting a new session",
                    session=session_id, reason=reason)
        raise SessionUnavailable(f"session {session_id} cannot be read: {reason}")

    async def _read(
        self,
        session_id: SessionId,
        primary: str,
        target: str,
        final: SessionId,
        now: float,
        read: tuple[str | None, Value | None, Value | None] | None = None,
    ) -> tuple[Session, _Read] | None:
        """The session as read from ``target`` (and its backup); ``read``: the backup node, the session
        and the backup, already read."""
        key = self.keys.session_key(final)
        backup_key = self.keys.backup_key(final)
        if read is None:
            backup_node = self._backup_node(target)
            item, backup = await self._get_pair(target, key, backup_node, backup_key)
        else:
            backup_node, item, backup = read
        backup_cas = backup.cas_unique if backup is not None else None
        if item is not None:
            # An unreadable value is a lost session (counted and logged by decode), not a reason to
            # resurrect an older copy from the backup.
            session = self.decode(item.value, session_id, key, now)
            if session is None:
                return None
            self.counters.loads += 1
            if backup is not None and backup.value != item.value and _version(backup.value, -1) > session.version:
                # The backup is ahead: another write's backup landed and its primary is on its way (the
                # two go out at once). A backup cas against it could put this request's version over
                # that write's, which may be answered on it; an add (it fails: the backup exists) cannot,
                # and the backup is then mirrored from the primary once this write is in.
                backup_cas = None
            return session, _Read(None, target, key, item.cas_unique, item.value, backup_node, backup_cas)
        found = None
        if backup is not None and final == session_id:  # the backup read in parallel is the one to restore
            restored = self.decode(backup.value, session_id, backup_key, now)
            found = (restored, backup.value) if restored is not None else None
        if found is None:
            found = await self._read_backup(session_id, primary, now)
        if found is None:
            return None
        session, blob = found
        self.counters.loads += 1
        if target == primary:
            self.counters.restored_from_backup += 1
            log.warning("session was missing from its store node: restored from its backup", session=session_id,
                        node=primary)
        return session, _Read(None, target, key, None, blob, backup_node, backup_cas)

    def _backup_node(self, primary: str) -> str | None:
        return self.ring.next_available(primary, self.available) if len(self.ring.ids) > 1 else None

    async def _get_pair(
        self, node: str, key: bytes, backup_node: str | None, backup_key: bytes
    ) -> tuple[Value | None, Value | None]:
        """The session and its backup, read in one round trip. A backup that cannot be read counts as
        absent: the write at close then finds out and mirrors it."""
        if backup_node is None:
            return await self.clients[node].get(key), None
        clients = self.node_clients  # (a backup node: several nodes, so memcached ones)
        item, backup = await get_each([(clients[node], key), (clients[backup_node], backup_key)])
        if isinstance(item, (StoreUnavailable, StoreError)):
            raise item
        return item, None if isinstance(backup, (StoreUnavailable, StoreError)) else backup

    async def _read_backup(self, session_id: SessionId, primary: str, now: float) -> tuple[Session, bytes] | None:
        """The session from its backup copy on the nodes after ``primary``; None when every one of them
        was read and none holds it (SessionUnavailable when one could not be read and none had it)."""
        key = self.keys.backup_key(session_id)
        failure = ""
        for node in self.ring.successors(primary):
            if not self.available(node):
                failure = f"store node {node} is marked down"
                continue
            try:
                item = await self.clients[node].get(key)
            except (StoreUnavailable, StoreError) as exc:
                failure = str(exc)
                continue
            if item is not None:
                session = self.decode(item.value, session_id, key, now)
                if session is not None:
                    return session, item.value
        if failure:
            self._unreadable(session_id, f"not on its store node, and its backup copy cannot be read: {failure}")
        return None

    # --- locks --------------------------------------------------------------------------------------

    async def _lock_and_read(
        self, session_id: SessionId, primary: str, target: str, final: SessionId, now: float
    ) -> tuple[_Lock | None, tuple[Session, _Read] | None]:
        """The lock's ``add`` sent with the reads, on the session's node in the same send before its
        ``gets``: one round trip while the lock is free. When it is held, what was read is dropped, the
        lock is waited for (:meth:`_lock`) and the session read again once it is ours. On Redis (one
        node, no pipelined calls) the lock is taken first, then the session read."""
        key = self.keys.lock_key(final)
        clients = self.node_clients
        if not clients:
            taken = await self._lock(target, key)
            try:
                return taken, await self._read(session_id, primary, target, final, now)
            except BaseException:
                await self._unlock(taken)
                raise
        token, exptime = self._lock_value()
        backup_node = self._backup_node(target)
        reads = [(clients[target], self.keys.session_key(final))]
        if backup_node is not None:
            reads.append((clients[backup_node], self.keys.backup_key(final)))
        word, found = await add_and_get_each(Write(clients[target], "add", key, token, exptime), reads)
        if isinstance(word, (StoreUnavailable, StoreError)):
            raise word
        if word == "STORED":
            self.counters.locks += 1
            lock: _Lock | None = _Lock(target, key, token, trio.current_time())
            item = found[0]
            backup = found[1] if len(found) > 1 else None
            if isinstance(item, (StoreUnavailable, StoreError)):
                await self._unlock(lock)
                raise item
            if isinstance(backup, (StoreUnavailable, StoreError)):
                backup = None  # counts as absent, as in _get_pair
            read = (backup_node, item, backup)
        else:
            lock, read = await self._lock(target, key, waited=True), None
        try:
            return lock, await self._read(session_id, primary, target, final, now, read)
        except BaseException:
            await self._unlock(lock)
            raise

    def _lock_value(self) -> tuple[bytes, int]:
        """A new lock's token and its exptime: memcached counts whole seconds, and an item set with
        exptime N may be gone in N-1 seconds; one more second makes it last at least --lock-expiration."""
        return secrets.token_hex(8).encode(), math.ceil(self.settings.lock_expiration) + 1

    async def _lock(self, node: str, key: bytes, *, waited: bool = False) -> _Lock | None:
        """Take the lock, polling until --lock-expiration; ``waited``: it was just found held."""
        token, exptime = self._lock_value()
        deadline = trio.current_time() + self.settings.lock_expiration
        delay = LOCK_POLL_FIRST
        while True:
            if waited:
                if trio.current_time() + delay > deadline:
                    self.counters.lock_timeouts += 1
                    log.warning("lock not obtained: going on without it, the write is still checked against "
                                "concurrent ones", key=key.decode(), seconds=self.settings.lock_expiration)
                    return None
                await trio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))
                delay = min(delay * 2, LOCK_POLL_MAX)
            if await self.clients[node].store("add", key, token, exptime) == "STORED":
                self.counters.locks += 1
                self.counters.lock_waits += waited
                return _Lock(node, key, token, trio.current_time())
            waited = True

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

    async def close_slot(self, slot: SessionSlot[_Read], now: float) -> None:
        if slot.closed:
            return
        slot.closed = True
        self.open_slots -= 1
        read = slot.state
        try:
            for tx in slot.transactions():
                if not tx.finished:
                    await self._close(slot, tx, read if read is not None and read.tx is tx else None, now)
        finally:
            await self._unlock(read.lock if read is not None else None)

    async def _close(self, slot: SessionSlot[_Read], tx: SessionTransaction, read: _Read | None, now: float) -> None:
        delta = tx.finish()
        session = tx.session
        if read is None:  # created by this request: non-sticky nodes keep nothing in memory
            self.manager.remove(session.id)
            if not tx.invalidated:
                node = self.ring.node_of(session.id)
                new = _Read(tx, node, self.keys.session_key(session.id), None, None, self._backup_node(node))
                await self._store(session, delta, new, now)
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
        """Write the session and its backup (see the module's theory); return only once both are stored
        (or the one node left is), raise SessionConflict otherwise."""
        blob = self.encode(session)
        if blob is None:
            raise SessionConflict(f"session {session.id} cannot be encoded", rerun=False)
        client = self.clients[read.node]
        backup_key = self.keys.backup_key(session.id)
        cas = read.cas
        # Both copies in one round trip, locked or not (see the module's theory for why a backup written
        # by a request that loses the race on the primary is safe: it is put back before anyone answers).
        parallel = read.backup_node is not None
        backup: _Outcome | None = None
        stored = False
        exptime = store_exptime(session, now)
        for _ in range(MAX_REBASES + 1):
            exptime = store_exptime(session, now)
            command: StoreCommand = "add" if cas is None else "cas"
            if parallel:
                primary, backup = await self._store_pair(read, command, cas, backup_key, blob, exptime)
            else:
                primary = await self._outcome(read.node, command, read.key, blob, exptime, cas)
            if primary == "STORED":
                stored = True
                break
            if isinstance(primary, StoreUnavailable):
                self.counters.write_failures += 1
                if backup is None:
                    backup = await self._store_backup(read, backup_key, blob, exptime)
                if backup == "STORED":
                    self.counters.backups += 1
                    await self._move(session, read, exptime, primary)
                    return
                raise SessionConflict(f"session {session.id} written to no store node: {primary}", rerun=False)
            if isinstance(primary, StoreError):
                self.counters.write_failures += 1
                if backup == "STORED":  # the backup must not hold a version the primary may not have
                    assert read.backup_node is not None
                    await self._mirror(read.node, read.key, read.backup_node, backup_key)
                raise SessionConflict(f"session {session.id} not written: {primary}", rerun=False)
            # Lost the race. A backup written alongside holds a version the primary refused: put the
            # primary's copy back in its place before anything else (a failover would read it).
            if backup == "STORED":
                assert read.backup_node is not None
                await self._mirror(read.node, read.key, read.backup_node, backup_key)
            parallel, backup = False, None  # a contended session: retries write one copy after the other
            if delta.empty:
                return  # only the access time was to be refreshed, and a newer write did that
            try:
                item = await client.get(read.key)
            except (StoreUnavailable, StoreError) as exc:
                raise SessionConflict(f"session {session.id}: stale write, and the store cannot be read: {exc}",
                                      rerun=False) from None
            if item is None:
                self._conflict(session, delta, "the session left the store (invalidated or expired) meanwhile")
            current = self.decode(item.value, session.id, read.key, now)
            if current is None:  # unreadable or dead: overwrite it with this request's session
                cas = item.cas_unique
                continue
            merged = rebase(delta, self._base(read), current)
            if isinstance(merged, Conflict):
                self._conflict(session, delta, merged.reason)
            encoded = self.encode(merged)
            if encoded is None:
                raise SessionConflict(f"session {session.id} cannot be encoded", rerun=False)
            session, blob, cas = merged, encoded, item.cas_unique
            self.counters.rebased_writes += 1
        if not stored:
            self._conflict(session, delta, f"still stale after {MAX_REBASES} retries")
        self.counters.writes += 1
        if read.backup_node is None:
            if len(self.ring.ids) > 1:  # a single store node has no backup to miss
                self._backup_missed(backup_key, read, session.id, "no other store node is available")
            return
        if backup is None:
            backup = await self._store_backup(read, backup_key, blob, exptime)
        if backup == "STORED":
            self.counters.backups += 1
            return
        if isinstance(backup, (StoreUnavailable, StoreError)):
            self._backup_missed(backup_key, read, session.id, str(backup))
            return
        # Another request wrote the backup since it was read: copy the primary over it.
        if not await self._mirror(read.node, read.key, read.backup_node, backup_key):
            raise SessionConflict(f"session {session.id}: its backup copy could not be brought up to date",
                                  rerun=False)

    async def _move(self, session: Session, read: _Read, exptime: int, failure: StoreUnavailable) -> None:
        """The session's node did not take this version, its backup copy on the next node did: the session
        moves to that node now (a store failover at close: the id's store node part is rewritten, and the
        answer's Set-Cookie carries the new id). Kept under its old id, the client's next request would
        read the older copy from its node as soon as that node answered again, and this acknowledged
        version would be lost. SessionConflict (503, no re-run) when the moved copy cannot be written."""
        assert read.backup_node is not None
        target = read.backup_node
        old = self.manager.change_id(session, store_node=target)
        self.counters.store_failovers += 1
        log.warning("store node did not take the session: it moves", node=read.node, session=old, to=target,
                    new_id=session.id, error=failure)
        blob = self.encode(session)  # the id is in the blob: a reader must find the new one
        if blob is None:
            raise SessionConflict(f"session {session.id} cannot be encoded", rerun=False)
        moved = _Read(None, target, self.keys.session_key(session.id), None, None, self._backup_node(target))
        backup_key = self.keys.backup_key(session.id)
        if moved.backup_node is None:
            primary: _Outcome = await self._outcome(target, "add", moved.key, blob, exptime, None)
            backup: _Outcome = StoreUnavailable("", "no other store node is available")
        else:
            primary, backup = await self._store_pair(moved, "add", None, backup_key, blob, exptime)
        if primary != "STORED":
            raise SessionConflict(f"session {session.id}: its node failed ({failure}) and the node it moves to "
                                  f"did not take it: {primary}", rerun=False)
        self.counters.writes += 1
        if backup == "STORED":
            self.counters.backups += 1
        else:
            self._backup_missed(backup_key, moved, session.id, str(backup))

    async def _outcome(
        self, node: str, command: str, key: bytes, blob: bytes, exptime: int, cas: int | None
    ) -> _Outcome:
        try:
            if command == "cas":
                return await self.clients[node].store("cas", key, blob, exptime, cas_unique=cas)
            return await self.clients[node].store("add", key, blob, exptime)
        except (StoreUnavailable, StoreError) as exc:
            return exc

    async def _store_backup(self, read: _Read, backup_key: bytes, blob: bytes, exptime: int) -> _Outcome:
        if read.backup_node is None:
            return StoreUnavailable("", "no other store node is available")
        return await self._outcome(read.backup_node, _backup_command(read), backup_key, blob, exptime,
                                   read.backup_cas)

    async def _store_pair(
        self, read: _Read, command: StoreCommand, cas: int | None, backup_key: bytes, blob: bytes, exptime: int
    ) -> tuple[_Outcome, _Outcome]:
        """The primary and the backup written in one round trip."""
        assert read.backup_node is not None
        clients = self.node_clients  # (a backup node: several nodes, so memcached ones)
        primary, backup = await store_each([
            Write(clients[read.node], command, read.key, blob, exptime, cas),
            Write(clients[read.backup_node], _backup_command(read), backup_key, blob, exptime, read.backup_cas),
        ])
        return primary, backup

    async def _mirror(self, node: str, key: bytes, backup_node: str, backup_key: bytes) -> bool:
        """Make the backup a copy of what the primary holds now; False if the nodes do not let us.

        The backup is read *before* the primary, and a ``cas`` against the backup read fails if anyone
        wrote it since. A write sends its two copies at once, so its backup may land before its
        primary: a backup newer than the primary read after it (a higher session version) belongs to a
        write whose primary is on its way, or that lost and will put it back itself; it is never
        overwritten with the older primary (its writer may answer on it), it is waited for."""
        for _ in range(MAX_REBASES):
            try:
                current = await self.clients[backup_node].get(backup_key)
                item = await self.clients[node].get(key)
                if item is None:
                    return True  # invalidated or expired: the backup goes with it
                if current is not None and current.value == item.value:
                    return True
                if current is not None and _version(current.value, -1) > _version(item.value, math.inf):
                    await trio.sleep(LOCK_POLL_FIRST)
                    continue
                exptime = _remaining(item.value, self.clock())
                if current is None:
                    status = await self.clients[backup_node].store("add", backup_key, item.value, exptime)
                else:
                    status = await self.clients[backup_node].store(
                        "cas", backup_key, item.value, exptime, cas_unique=current.cas_unique
                    )
            except (StoreUnavailable, StoreError):
                return False
            if status == "STORED":
                self.counters.backups_mirrored += 1
                return True
        return False

    def _backup_missed(self, backup_key: bytes, read: _Read, session_id: SessionId, reason: str) -> None:
        self.counters.backup_failures += 1
        self._pending[backup_key] = (read.node, read.key)
        self._pending.move_to_end(backup_key)
        while len(self._pending) > MAX_PENDING_BACKUPS:
            self._pending.popitem(last=False)
        log.warning("backup not written: the session lives on its store node alone until the backup is rebuilt",
                    session=session_id, node=read.node, reason=reason)

    def _base(self, read: _Read) -> Session | None:
        if read.blob is None:
            return None
        try:
            return decode_session(read.blob)
        except SerializationError:
            return None

    def _conflict(self, session: Session, delta: Delta, reason: str) -> NoReturn:
        self.counters.conflicts += 1
        names = sorted({getattr(c, "name", type(c).__name__) for c in delta.changes})
        raise SessionConflict(f"conflict on session {session.id}: {reason}; this request's changes "
                              f"({', '.join(names)}) based on version {delta.base_version} were not stored")

    async def _delete(self, read: _Read, session: Session) -> None:
        targets = [(read.node, read.key)] + [
            (node, self.keys.backup_key(session.id)) for node in self.ring.successors(read.node)
        ]
        for node, key in targets:
            if self.available(node):
                with contextlib.suppress(StoreUnavailable, StoreError):  # else it expires with the session
                    await self.clients[node].delete(key)

    # --- backups ------------------------------------------------------------------------------------

    async def periodic(self, shutdown: Shutdown) -> None:
        """Rebuild the backups that could not be written, once a node can take them."""
        with shutdown.cancel_on_request():
            while True:
                await trio.sleep(1.0)
                for key, (primary, primary_key) in list(self._pending.items())[:REBUILDS_PER_ROUND]:
                    target = self.ring.next_available(primary, self.available)
                    if target is None or not self.available(primary):
                        continue
                    if await self._mirror(primary, primary_key, target, key):
                        self.counters.backups_rebuilt += 1
                        log.info("backup rebuilt", key=key.decode(), node=target)
                        self._pending.pop(key, None)


def _backup_command(read: _Read) -> StoreCommand:
    """A backup read at open is replaced with ``cas`` against that read; none read (or one ahead of the
    primary, see _read): ``add``, which cannot overwrite a backup written since."""
    return "add" if read.backup_cas is None else "cas"


def _version(blob: bytes, unreadable: float) -> float:
    try:
        return decode_session(blob).version
    except SerializationError:
        return unreadable


def _remaining(blob: bytes, now: float) -> int:
    """The exptime for a backup copy of ``blob``: the session's own, or a short one if it is unreadable."""
    try:
        session = decode_session(blob)
    except SerializationError:
        return 60
    return store_exptime(session, now)
