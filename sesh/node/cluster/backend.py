"""``--mode cluster``: every node holds every session, replicated as Tomcat's ``DeltaManager`` does.

Theory of operation.

**Requests.** A request on a session this node holds takes the session's local lock (requests on one
session are serialized on a node) and runs on a private copy of it. At the end of the request the copy's
delta (or, for a session created by the request, the whole session) is *committed*; the copy is thrown
away and the held session changes only when the commit says so. A request that changed nothing sends
only a cheap ACCESSED message (not waited for), as do requests matching ``--replication-filter``.

**Ordering writes (ack, the default).** The *coordinator* — the oldest live member, the same node in
every member's view — orders all writes. A node that is not the coordinator PROPOSEs its delta to it.
The coordinator, holding its own lock on the session, accepts the delta only if the delta's base version
is the version it holds (compare-and-set), applies it and FORWARDs it to every other live member,
and replies OK only after every one of them acknowledged it; the proposer applies its own delta when
the OK arrives (one round trip instead of two). So:

- a success answer is sent only after the change is part of the session's history on every live member
  (DESIGN.md's acknowledge rule);
- two concurrent writes from the same base on two nodes cannot both win: the coordinator accepts the
  first, and the second gets CONFLICT (with the coordinator's current session, installed at once), which
  this backend raises as :class:`~sesh.node.backend.SessionConflict`; the host re-runs or answers 503;
- no livelock: every round, the coordinator accepts one write, and the loser re-runs on the winner's
  version, which it already holds; and no starvation: after refusing a peer's write, the coordinator's
  own next requests on that session wait briefly (YIELD_WINDOW) so the peer's re-run goes first;
- every replica receives the writes of a session from one sender (the coordinator), over one TCP
  connection, in version order (its own writes come with the coordinator's OK, and a forward that
  overtakes an OK is handled like any gap). A replica applies a delta only on top of its base version; otherwise
  (it joined late, missed a write of a coordinator that died) it answers NEED and gets the whole session.

**Failures.** A member whose link breaks (reset, EOF) or refuses a connection is suspected and checked
over TCP at once, not after drop-time: refused means gone, and every write waiting for its
acknowledgement goes on without it (a SIGKILLed member costs no stall). A member that does not
acknowledge is checked the same way: refused or a timeout means gone; a member that answers the check
gets one retry and is dropped if it still does not acknowledge. If such a member was only stalled and
heartbeats again, the coordinator resends it every session (on the forwards' own connection, so later
forwards land on top). When the coordinator is gone, a proposer whose session is still at its base
version proposes again to the next coordinator; otherwise it raises SessionConflict (the write was not
acknowledged; the client's retry runs on whatever the survivors hold).

**async** (``--send-options async``, Tomcat's channelSendOptions=8): the node applies its delta at once
and sends it to every member after, without waiting. Faster, and it loses updates exactly as Tomcat
does (the next request may reach a node before the delta). Not the default.

**State transfer.** A joining node opens its receiver, announces itself, waits for the first
heartbeats, then asks the oldest member for every session in chunks; only then does the node open its
HTTP port. Writes made meanwhile reach it as forwards (it is a live member already); a forward for a
session it does not have yet gets NEED and the whole session, and a chunk never overwrites a newer copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from sesh.core.delta import Delta, Invalidate
from sesh.core.ids import InvalidSessionId, SessionId
from sesh.core.manager import Fit, ManagerStatistics, SessionManager, SessionTransaction
from sesh.core.samples import RecentSamples
from sesh.core.serializer import (
    SerializationError,
    UnencodableValue,
    decode_delta,
    decode_session,
    encode_delta,
    encode_session,
    encode_value,
)
from sesh.core.session import Session
from sesh.log import get_logger
from sesh.net import multicast
from sesh.net.cluster_transport import (
    PeerLink,
    PeerUnavailable,
    Replier,
    TransportCounters,
    open_receiver,
    probe,
    serve_receiver,
)
from sesh.net.shutdown import Shutdown
from sesh.node.backend import RequestInfo, SessionConflict, SessionSlot
from sesh.node.clock import Clock, wall_time
from sesh.node.cluster import messages as msg
from sesh.node.cluster.membership import MAX_MEMBERS, MemberInfo, Membership, MemberView, State
from sesh.node.cluster.settings import ClusterSettings
from sesh.node.expiry import sweep_expired
from sesh.node.tally import tally_of
from sesh.node.turns import KeyedLocks
from sesh.protocol.cluster import (
    KIND_ACCESSED,
    KIND_FORWARD,
    KIND_HEARTBEAT,
    KIND_PROPOSE,
    KIND_TRANSFER,
    ClusterProtocolError,
    Frame,
    decode_datagram,
    encode_datagram,
)

log = get_logger("cluster")

# After refusing a peer's write because the coordinator's own request got there first, the coordinator's
# next local requests on that session wait this long for the peer's re-run (one round trip and a re-run
# on loopback take a few ms), so that no writer of a hot session is starved. Bounded in count too.
YIELD_WINDOW = 0.05
MAX_YIELDS = 10_000
# Replication lag samples kept per peer for p50/p99: enough for stable percentiles, bounded memory.
LAG_SAMPLES = 1024


@dataclass(frozen=True, slots=True)
class ClusterCounts:
    commits: int = 0  # session changes committed here (then replicated as --send-options says)
    proposals_sent: int = 0  # writes sent to the session's coordinator for ordering
    proposals_handled: int = 0  # writes ordered here as a session's coordinator
    forwards_sent: int = 0  # deltas sent to members
    forwards_applied: int = 0  # deltas from members applied here
    need_repairs: int = 0  # members that lacked a delta's base and were sent the whole session
    sessions_installed: int = 0  # whole sessions installed (repairs, transfers, resyncs)
    accessed_sent: int = 0  # "accessed" messages sent for requests that changed nothing
    accessed_applied: int = 0
    conflicts: int = 0  # writes refused as SessionConflict (re-run or 503 by the node host)
    coordinator_failovers: int = 0  # writes re-sent to a new coordinator after the old one went
    members_dropped_unacked: int = 0  # members dropped while a write waited for their acknowledgement
    route_rebinds: int = 0  # session ids rewritten to this node's route (JvmRouteBinderValve)
    resyncs: int = 0  # rejoined members sent every session again
    state_transfers: int = 0  # state transfers received when joining
    sessions_transferred: int = 0  # sessions received in them
    transfer_sessions_served: int = 0  # sessions sent to joining members
    unencodable: int = 0  # sessions or deltas whose attributes could not be serialized (not replicated)
    async_stale: int = 0  # async mode: deltas that did not fit and were dropped (nothing to ask for repair)
    filtered: int = 0  # changes dropped on requests matching --replication-filter (promised to change nothing)


ClusterCounters = tally_of(ClusterCounts)


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    name: str
    address: str
    connected: bool
    queue: int  # frames waiting in the send queue
    dropped: int
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_samples: int


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    mode: str
    name: str
    uid: str
    receiver: str
    membership: str
    send_options: str
    secret: bool
    coordinator: str
    members: list[MemberView]
    peers: list[PeerStatistics]
    sessions: ManagerStatistics
    conflicts: int  # writes refused as SessionConflict (also in counters; here for sesh top)
    messages_sent: int
    messages_received: int
    messages_dropped: int
    rejected: dict[str, int]
    counters: ClusterCounts


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _base_of(session_id: str) -> str | None:
    try:
        return SessionId.parse(session_id).base
    except InvalidSessionId:
        return None


def _shallow_copy(session: Session) -> Session:
    """The private copy a request runs on. Attribute *values* are shared: the transaction replaces them,
    never mutates them (in-place mutation is not recorded, so it is not replicated either)."""
    return Session(
        id=session.id,
        created=session.created,
        last_accessed=session.last_accessed,
        this_accessed=session.this_accessed,
        max_inactive=session.max_inactive,
        attributes=dict(session.attributes),
        principal=session.principal,
        version=session.version,
        valid=session.valid,
        extra=dict(session.extra),
    )


class ClusterBackend:
    mode = "cluster"

    def __init__(self, settings: ClusterSettings, clock: Clock = wall_time) -> None:
        self.settings = settings
        # Session times (the sweep; requests get theirs from the host) and membership times (heartbeats,
        # their replay window, suspicion and drop-time).
        self.clock = clock
        self.manager = SessionManager(route=settings.route, max_inactive=settings.max_inactive)
        self.local = MemberInfo(
            uid=secrets.token_hex(8),
            name=settings.name,
            route=settings.route,
            host=settings.receiver_address,
            port=settings.receiver_port,
            domain=settings.domain,
            start=self.clock(),
        )
        self.membership = Membership(self.local, drop_time=settings.drop_time)
        self.transport = TransportCounters()
        self._links: dict[tuple[str, int], PeerLink] = {}
        self._link_scopes: dict[tuple[str, int], trio.CancelScope] = {}
        self._links_changed = trio.Event()
        self._checks: dict[str, trio.Event] = {}  # uid -> a TCP check of that member is running
        self._suspects_in, self._suspects_out = trio.open_memory_channel[MemberInfo](MAX_MEMBERS)
        self._locks = KeyedLocks()
        self._lag: dict[str, RecentSamples] = {}
        # base -> until when this coordinator's own requests on it wait: a proposal that just lost to
        # them gets the next turn (else a busy coordinator starves remote writers of a hot session).
        self._yields: dict[str, tuple[float, trio.Event]] = {}
        self._created: set[int] = set()  # id() of sessions create_session made and no begin took yet
        self._transfer_seen: dict[str, int] | None = None
        self._heartbeat_seq = 0
        self.open_slots = 0
        self._no_slots = trio.Event()  # set whenever open_slots drops to zero
        self.rejected: dict[str, int] = {}
        self.counters = ClusterCounters()

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    # --- the request path ---------------------------------------------------------------------------

    def _slot_done(self) -> None:
        self.open_slots -= 1
        if self.open_slots == 0:
            self._no_slots.set()
            self._no_slots = trio.Event()

    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot[str]:
        self.open_slots += 1
        try:
            for text in request.requested_ids:
                base = _base_of(text)
                if base is None or self.manager.get_by_base(base) is None:
                    continue
                waiting = self._yields.get(base)
                if waiting is not None:
                    await self._yield_turn(base, *waiting)
                await self._locks.acquire(base)
                held = self.manager.find(text, now)
                if held is None or held.id.base != base:
                    self._locks.release(base)
                    continue
                slot: SessionSlot[str] = SessionSlot(self, request, now, held)
                slot.state = base
                tx = slot.current
                assert tx is not None
                if self.settings.route_binder and held.id.route != self.settings.route:
                    old = tx.change_id(route=self.settings.route)
                    self.counters.route_rebinds += 1
                    log.debug("session bound to this node's route", old=str(old), new=tx.id)
                return slot
            return SessionSlot(self, request, now)
        except BaseException:
            self._slot_done()
            raise

    async def _yield_turn(self, base: str, until: float, turn_taken: trio.Event) -> None:
        with trio.move_on_at(until):
            await turn_taken.wait()
        if self._yields.get(base, (0.0, None))[1] is turn_taken:
            del self._yields[base]  # the window passed without the peer coming back

    def create_session(self, now: float) -> Session:
        session = self.manager.create(now)
        self._created.add(id(session))
        return session

    def begin(self, session: Session, now: float) -> SessionTransaction:
        if id(session) in self._created:
            self._created.discard(id(session))
            return self.manager.begin(session, now)
        # A held session: touch it (so neither the sweep nor a peer expires it while the request runs),
        # then let the request work on a copy that becomes the session only through a commit.
        if now > session.this_accessed:
            session.touch(now)
        return SessionTransaction(self.manager, _shallow_copy(session), is_new=False)

    async def close_slot(self, slot: SessionSlot[str], now: float) -> None:
        if slot.closed:
            return
        slot.closed = True
        try:
            conflict: SessionConflict | None = None
            for tx in slot.transactions():
                delta = tx.delta if tx.finished else tx.finish()
                try:
                    await self._commit(slot, tx, delta)
                except SessionConflict as exc:
                    self.counters.conflicts += 1
                    conflict = conflict or exc
            if conflict is not None:
                raise conflict
        finally:
            if slot.state is not None:
                self._locks.release(slot.state)
            self._slot_done()

    def _filtered(self, request: RequestInfo) -> bool:
        pattern = self.settings.replication_filter
        return pattern is not None and pattern.search(request.path) is not None

    async def _commit(self, slot: SessionSlot[str], tx: SessionTransaction, delta: Delta) -> None:
        session = tx.session
        held = self.manager.get_by_base(session.id.base)
        if held is session or (not session.valid and tx.is_new):
            # A session this request created: nobody else knows its id, so nothing can conflict.
            if not session.valid:
                return
            try:
                blob = encode_session(session)
            except UnencodableValue as exc:
                self.counters.unencodable += 1
                log.warning("session not replicated", session=str(session.id), error=str(exc))
                return
            self.counters.commits += 1
            await self._write(session.id.base, None, blob, session)
            return
        base = _base_of(delta.session_id)
        if base is None:
            return
        if delta.empty or self._filtered(slot.request):
            if not delta.empty:
                # ReplicationValve's filter: the operator promised these requests do not change the
                # session. Tomcat keeps such changes on the one node; here they would fork the session's
                # history (two different version N+1), so they are dropped and counted instead.
                self.counters.filtered += 1
                log.debug("change of a filtered request dropped", session=delta.session_id,
                          path=slot.request.path)
            if delta.accessed is not None:
                self._send_accessed(str(session.id) if session.valid else delta.session_id, delta.accessed)
            return
        try:
            blob = encode_delta(delta)
        except UnencodableValue as exc:
            self.counters.unencodable += 1
            log.warning("delta not replicated", session=delta.session_id, error=str(exc))
            raise SessionConflict(str(exc)) from None
        self.counters.commits += 1
        await self._write(base, delta, blob, session)

    async def _write(self, base: str, delta: Delta | None, blob: bytes, after: Session) -> None:
        """Make a delta (or a new session) part of the session's history on every live member, or raise
        SessionConflict. ``after`` is the session as the request left it (the private copy)."""
        if not self.settings.send_ack:
            self._write_async(base, delta, blob)
            return
        payload: dict[str, Any] = {"delta": blob} if delta is not None else {"session": blob}
        payload["origin"] = self.local.uid
        for _attempt in range(3):
            coordinator = self.membership.coordinator()
            if coordinator.uid == self.local.uid:
                status, current = await self._coordinate(base, delta, blob, after, origin=self.local.uid)
            else:
                self.counters.proposals_sent += 1
                link = self._link_for(coordinator)
                try:
                    answer = (await link.request(KIND_PROPOSE, msg.encode(payload), self._proposal_timeout())).payload
                    status, current = msg.OK, None
                    if answer != msg.OK_REPLY:
                        reply = msg.decode(answer)
                        status = str(reply.get("status"))
                        if isinstance(reply.get("session"), bytes):
                            current = decode_session(reply["session"])
                except (PeerUnavailable, SerializationError) as exc:
                    if not await self._check_member(coordinator):
                        self.counters.coordinator_failovers += 1
                        log.warning("coordinator gone, proposing to the next", coordinator=coordinator.name,
                                    error=str(exc))
                        held = self.manager.get_by_base(base)
                        if delta is not None and (held is None or held.version != delta.base_version):
                            raise SessionConflict("the coordinator died during the write") from None
                        continue
                    raise SessionConflict(f"coordinator {coordinator.name} did not answer: {exc}") from None
            if status == msg.OK:
                if delta is not None:
                    # The coordinator forwards our own write to everyone but us: apply it here. Unless
                    # a later write overtook this reply (we answered NEED and got the whole session):
                    # then the delta no longer fits and is not applied.
                    self.manager.apply_delta(delta)
                return
            if status == msg.MISSING and delta is not None:
                # The coordinator never got this session (it joined after a coordinator that died
                # before forwarding it): give it the whole session as the request left it.
                if not after.valid:  # ended: nobody else holds it, so ending it here is enough
                    self.manager.apply_delta(delta, force=True)
                    return
                try:
                    blob = encode_session(after)
                except UnencodableValue as exc:
                    raise SessionConflict(str(exc)) from None
                delta, payload = None, {"session": blob, "origin": self.local.uid}
                continue
            if status == msg.CONFLICT:
                if current is not None:
                    # Normally the coordinator's forwards brought it already; never go back to an
                    # older copy (a later forward may have overtaken this reply).
                    self._install(current, force=False)
                raise SessionConflict(f"session changed concurrently (at version {current and current.version})")
            if status == msg.NOT_COORDINATOR:
                await trio.sleep(self.settings.frequency)  # views differ for a heartbeat or two
                continue
            raise SessionConflict(f"write refused: {status}")
        raise SessionConflict("no coordinator accepted the write")

    def _proposal_timeout(self) -> float:
        # The coordinator waits up to ack_timeout for each member, then checks it and retries once.
        return 3 * self.settings.ack_timeout + 1.0

    def _write_async(self, base: str, delta: Delta | None, blob: bytes) -> None:
        if delta is not None and self.manager.apply_delta(delta).fit is not Fit.APPLIED:
            raise SessionConflict("session changed while the request ran")
        payload = msg.encode({"delta": blob} if delta is not None else {"session": blob})
        for member in self.membership.live():
            self.counters.forwards_sent += 1
            self._link_for(member).send_nowait(KIND_FORWARD, payload)

    def _send_accessed(self, session_id: str, accessed: float) -> None:
        payload = msg.encode({"id": session_id, "at": accessed})
        base = _base_of(session_id)
        held = self.manager.get_by_base(base) if base else None
        if held is not None and accessed > held.this_accessed:
            held.touch(accessed)
        for member in self.membership.live():
            self.counters.accessed_sent += 1
            self._link_for(member).send_nowait(KIND_ACCESSED, payload)

    # --- the coordinator ----------------------------------------------------------------------------

    async def _coordinate(
        self, base: str, delta: Delta | None, blob: bytes, session: Session | None, *, origin: str
    ) -> tuple[str, Session | None]:
        """Accept or refuse one write and forward it; called with the session's lock held."""
        status, current = self._decide(base, delta, session, origin=origin)
        if status == msg.OK:
            await self._forward_all({"delta": blob} if delta is not None else {"session": blob}, base, skip=origin)
        return status, current

    def _decide(
        self, base: str, delta: Delta | None, session: Session | None, *, origin: str
    ) -> tuple[str, Session | None]:
        """Accept (apply here) or refuse one write; the caller forwards an accepted one."""
        if delta is not None:
            result = self.manager.apply_delta(delta)
            if result.fit is Fit.MISSING:
                return msg.MISSING, None
            if result.fit is not Fit.APPLIED:  # stale (a lost race) or a gap: the proposer re-runs
                return msg.CONFLICT, result.session
            return msg.OK, None
        held = self.manager.get_by_base(base)
        assert session is not None
        if origin != self.local.uid or held is None:
            if held is not None and held.version >= session.version:
                return msg.CONFLICT, held
            self._install(session, force=True)
        return msg.OK, None

    def _forward_targets(self, skip: str) -> list[MemberInfo]:
        return [m for m in self.membership.live() if m.uid != skip]

    async def _forward_all(self, payload: dict[str, Any], base: str, *, skip: str = "") -> None:
        """Forward a write to every live member but its proposer (``skip``: it applies the write itself
        when the OK arrives, which saves it a round trip) and wait for every acknowledgement."""
        members = self._forward_targets(skip)
        if not members:
            return
        data = msg.encode(payload)
        if len(members) == 1:  # two-node clusters: no task to start
            await self._forward_one(members[0], data, base)
            return
        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(self._forward_one, member, data, base)

    async def _forward_one(self, member: MemberInfo, data: bytes, base: str) -> None:
        started = trio.current_time()
        for attempt in range(2):
            if not self._is_live(member):
                return  # dropped meanwhile (its connection broke, or another write's check): not awaited
            link = self._link_for(member)
            try:
                self.counters.forwards_sent += 1
                answer = (await link.request(KIND_FORWARD, data, self.settings.ack_timeout)).payload
                if answer != msg.OK_REPLY and msg.decode(answer).get("status") != msg.OK:
                    # NEED, or a delta it could not read: send it the whole session
                    self.counters.need_repairs += 1
                    held = self.manager.get_by_base(base)
                    if held is not None:
                        repair = msg.encode({"session": encode_session(held), "force": True})
                        await link.request(KIND_FORWARD, repair, self.settings.ack_timeout)
                lag = self._lag.get(member.uid)
                if lag is None:
                    lag = self._lag[member.uid] = RecentSamples(LAG_SAMPLES)
                lag.add(trio.current_time() - started)
                return
            except (PeerUnavailable, SerializationError, UnencodableValue) as exc:
                if not self._is_live(member) or not await self._check_member(member):
                    return  # gone: no longer a member whose acknowledgement counts
                if attempt:
                    self.counters.members_dropped_unacked += 1
                    log.warning("member does not acknowledge, dropping it", member=member.name, error=str(exc))
                    if self.membership.fail(member.uid, self.clock()):
                        self._member_gone(member)

    def _is_live(self, member: MemberInfo) -> bool:
        known = self.membership.get(member.uid)
        return known is not None and known.state is not State.GONE

    async def _check_member(self, member: MemberInfo) -> bool:
        """TcpFailureDetector: is the member's receiver still accepting? Gone (and reported) if not.
        Whether the member is still live afterwards. Callers asking about a member already being
        checked wait for that check (a broken link fails many writes at once: one probe for all)."""
        running = self._checks.get(member.uid)
        if running is not None:
            await running.wait()
            return self._is_live(member)
        done = self._checks[member.uid] = trio.Event()
        try:
            reachable = await probe(member.host, member.port, min(1.0, self.settings.drop_time))
            if reachable is not True:
                if self.membership.fail(member.uid, self.clock()):
                    log.warning("member gone", member=member.name, address=f"{member.host}:{member.port}",
                                check="refused" if reachable is False else "timeout")
                    self._member_gone(member)
            else:
                self.membership.checked(member.uid, True, self.clock())
        finally:
            del self._checks[member.uid]
            done.set()
        return self._is_live(member)

    def _member_gone(self, member: MemberInfo) -> None:
        """A member was just dropped: writes still waiting for its acknowledgement go on without it."""
        self._links_changed.set()
        link = self._links.get(member.address)
        if link is not None:
            link.fail_pending()

    def _on_link_lost(self, address: tuple[str, int]) -> None:
        """The link to ``address`` broke or was refused: check that member now, not after drop-time."""
        member = self.membership.by_address(*address)
        if member is None or member.uid in self._checks or not self.membership.suspect(member.uid):
            return
        # Full only with as many checks queued as there can be members: then its heartbeats will tell.
        with contextlib.suppress(trio.WouldBlock):
            self._suspects_in.send_nowait(member)

    async def _check_suspects(self) -> None:
        async with trio.open_nursery() as nursery:
            async for member in self._suspects_out:
                nursery.start_soon(self._check_member, member)

    # --- incoming frames ----------------------------------------------------------------------------

    def dispatch(self, frame: Frame, replier: Replier) -> Callable[[], Awaitable[None]] | None:
        try:
            if frame.kind == KIND_FORWARD:
                self._on_forward(frame, replier)
            elif frame.kind == KIND_ACCESSED:
                self._on_accessed(frame)
            elif frame.kind == KIND_HEARTBEAT:
                self._on_heartbeat(frame.payload)
            elif frame.kind == KIND_PROPOSE:
                return self._on_propose(frame, replier)
            elif frame.kind == KIND_TRANSFER:
                return lambda: self._on_transfer(frame, replier)
            else:
                self._reject("unknown-kind")
        except (SerializationError, ValueError, InvalidSessionId) as exc:
            self._reject("bad-message")
            log.warning("cluster message refused", peer=replier.peer, error=str(exc))
            if frame.ref:
                replier.reply_nowait(frame.ref, msg.encode({"status": "bad-message"}))
        return None

    def _on_forward(self, frame: Frame, replier: Replier) -> None:
        message = msg.decode(frame.payload)
        status = msg.OK
        if isinstance(message.get("delta"), bytes):
            delta = decode_delta(message["delta"])
            result = self.manager.apply_delta(delta)
            # (only a joining node looks at the base: its state transfer must not undo this delta)
            base = _base_of(delta.session_id) if self._transfer_seen is not None else None
            if result.fit is Fit.APPLIED:
                applied = result.session
                self.counters.forwards_applied += 1
                if self._transfer_seen is not None and base is not None:
                    self._transfer_seen[base] = applied.version if applied and applied.valid else 1 << 62
            elif result.fit is Fit.MISSING and any(isinstance(c, Invalidate) for c in delta.changes):
                if self._transfer_seen is not None and base is not None:
                    self._transfer_seen[base] = 1 << 62  # dead: a transfer chunk must not bring it back
            elif not frame.ref:
                self.counters.async_stale += 1  # async mode: no way to ask for the whole session
            else:
                status = msg.NEED
        elif isinstance(message.get("sessions"), list):  # a resync after we were dropped and came back
            sessions = [decode_session(blob) for blob in message["sessions"] if isinstance(blob, bytes)]
            self.counters.sessions_installed += len(self.manager.install_all(sessions))
        else:
            session = decode_session(msg.field(message, "session", bytes))
            self._install(session, force=message.get("force") is True)
        if frame.ref:
            replier.reply_nowait(frame.ref, msg.OK_REPLY if status == msg.OK else msg.encode({"status": status}))

    def _install(self, session: Session, *, force: bool) -> bool:
        """Hold ``session`` unless a newer copy is held (``force``: the coordinator's copy wins)."""
        if not self.manager.install(session, force=force):
            return False
        self.counters.sessions_installed += 1
        if self._transfer_seen is not None:
            self._transfer_seen[session.id.base] = session.version
        return True

    def _on_accessed(self, frame: Frame) -> None:
        message = msg.decode(frame.payload)
        session_id = msg.field(message, "id", str)
        at = message.get("at")
        if not isinstance(at, float | int) or isinstance(at, bool):
            raise SerializationError("accessed time is not a number")
        base = _base_of(session_id)
        held = self.manager.get_by_base(base) if base else None
        if held is not None and at > held.this_accessed:
            held.touch(float(at))
            self.counters.accessed_applied += 1

    def _on_heartbeat(self, payload: bytes) -> None:
        info, ts, seq = self._decode_heartbeat(payload)
        before = self.membership.version
        if self.membership.heartbeat(info, seq, ts, self.clock()):
            if self.membership.version != before:
                log.info("member joined", member=info.name, address=f"{info.host}:{info.port}", uid=info.uid)
            link = self._link_for(info)
            if not link.connected:
                link.wake()

    def _decode_heartbeat(self, payload: bytes) -> tuple[MemberInfo, float, int]:
        data = msg.decode(payload)
        info, ts = MemberInfo.from_wire(data)
        seq = data.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise ValueError("heartbeat without a sequence number")
        return info, ts, seq

    def _on_propose(self, frame: Frame, replier: Replier) -> Callable[[], Awaitable[None]] | None:
        """Order a peer's write. Decided here, in the receiver's loop, when nothing has to wait: the
        session's lock is free and no other member needs the forward (two-node clusters: the proposer
        applies its write itself). Otherwise the work runs as a task that takes the lock and waits for
        the other members' acknowledgements."""
        self.counters.proposals_handled += 1
        try:
            message = msg.decode(frame.payload)
            delta: Delta | None = None
            session: Session | None = None
            if isinstance(message.get("delta"), bytes):
                blob = message["delta"]
                delta = decode_delta(blob)
                base = _base_of(delta.session_id)
            else:
                blob = msg.field(message, "session", bytes)
                session = decode_session(blob)
                base = session.id.base
        except (SerializationError, ValueError) as exc:
            self._reject("bad-message")
            log.warning("proposal refused", peer=replier.peer, error=str(exc))
            replier.reply_nowait(frame.ref, msg.encode({"status": "bad-message"}))
            return None
        if base is None:
            replier.reply_nowait(frame.ref, msg.encode({"status": "bad-message"}))
            return None
        if self.membership.coordinator().uid != self.local.uid:
            replier.reply_nowait(frame.ref, msg.encode({"status": msg.NOT_COORDINATOR}))
            return None
        waiting = self._yields.pop(base, None)
        if waiting is not None:
            waiting[1].set()  # the remote writer is back: the local requests queue behind it
        origin = message.get("origin")
        origin = origin if isinstance(origin, str) and origin else "peer"
        if base not in self._locks and not any(m.uid != origin for m in self.membership.live()):
            status, current = self._decide(base, delta, session, origin=origin)
            reply = self._proposal_reply(base, status, current)
            if replier.reply_nowait(frame.ref, reply, count_drop=False):
                return None
            return lambda: replier.reply(frame.ref, reply)  # the queue is full: wait for room
        return lambda: self._order_proposal(frame.ref, replier, base, delta, blob, session, origin)

    async def _order_proposal(self, ref: int, replier: Replier, base: str, delta: Delta | None, blob: bytes,
                              session: Session | None, origin: str) -> None:
        await self._locks.acquire(base)
        try:
            status, current = await self._coordinate(base, delta, blob, session, origin=origin)
        finally:
            self._locks.release(base)
        await replier.reply(ref, self._proposal_reply(base, status, current))

    def _proposal_reply(self, base: str, status: str, current: Session | None) -> bytes:
        if status == msg.CONFLICT and base not in self._yields and len(self._yields) < MAX_YIELDS:
            self._yields[base] = (trio.current_time() + YIELD_WINDOW, trio.Event())
        if status == msg.OK:
            return msg.OK_REPLY
        reply: dict[str, Any] = {"status": status}
        if current is not None:
            try:
                reply["session"] = encode_session(current)
            except UnencodableValue:
                self.counters.unencodable += 1
        return msg.encode(reply)

    async def _on_transfer(self, frame: Frame, replier: Replier) -> None:
        """Send every session to a joining member, in chunks (DeltaManager's GET_ALL_SESSIONS)."""
        sent = 0
        for chunk in self._session_chunks():
            await replier.reply(frame.ref, msg.encode({"sessions": chunk}), last=False)
            sent += len(chunk)
        self.counters.transfer_sessions_served += sent
        await replier.reply(frame.ref, msg.encode({"status": msg.OK, "count": sent}))

    def _session_chunks(self) -> Iterator[list[bytes]]:
        """Every live session, encoded, in chunks of at most CHUNK_BYTES / CHUNK_SESSIONS (a snapshot
        of the session list taken at the start: sessions made meanwhile travel as deltas)."""
        chunk: list[bytes] = []
        size = 0
        for session in self.manager.snapshot():
            try:
                blob = encode_session(session)
            except UnencodableValue:
                self.counters.unencodable += 1
                continue
            chunk.append(blob)
            size += len(blob)
            if size >= msg.CHUNK_BYTES or len(chunk) >= msg.CHUNK_SESSIONS:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    # --- links --------------------------------------------------------------------------------------

    def _link_for(self, member: MemberInfo) -> PeerLink:
        return self._link_at(member.address)

    def _link_at(self, address: tuple[str, int]) -> PeerLink:
        link = self._links.get(address)
        if link is None:
            link = PeerLink(
                address[0],
                address[1],
                self.settings.secret,
                self.transport,
                send_timeout=self.settings.ack_timeout,
                connect_timeout=min(2.0, self.settings.drop_time),
                greeting=(lambda: (KIND_HEARTBEAT, self._heartbeat_payload()))
                if address in self.settings.static_members
                else None,
                on_lost=functools.partial(self._on_link_lost, address),
            )
            self._links[address] = link
            self._links_changed.set()
        return link

    async def _supervise_links(self, nursery: trio.Nursery) -> None:
        """Run a link for every live member and static address; stop the links of gone members."""
        static = set(self.settings.static_members)
        while True:
            wanted = static | {m.address for m in self.membership.live()}
            for address in list(self._links):
                if address not in wanted:
                    scope = self._link_scopes.pop(address, None)
                    if scope is not None:
                        scope.cancel()
                    else:
                        self._links[address].stop()  # never ran: nothing would answer or time its requests
                    del self._links[address]
            for address in wanted:
                self._link_at(address)
            for address, link in self._links.items():
                if address not in self._link_scopes:
                    scope = trio.CancelScope()
                    self._link_scopes[address] = scope
                    nursery.start_soon(self._run_link, link, scope)
            if self.membership.rejoined:
                rejoined, self.membership.rejoined = self.membership.rejoined, set()
                if self.membership.coordinator().uid == self.local.uid:
                    for uid in rejoined:
                        member = self.membership.get(uid)
                        if member is not None:
                            nursery.start_soon(self._resync, member.info)
            self._links_changed = trio.Event()
            with trio.move_on_after(self.settings.frequency):
                await self._links_changed.wait()

    async def _resync(self, member: MemberInfo) -> None:
        """Bring a member that was dropped while running (and missed writes) up to date: every session,
        in chunks, on the same link as the forwards, so a later forward always lands on top of it."""
        link = self._link_for(member)
        sent = 0
        try:
            for chunk in self._session_chunks():
                await link.request(KIND_FORWARD, msg.encode({"sessions": chunk}), self.settings.ack_timeout)
                sent += len(chunk)
        except PeerUnavailable as exc:
            log.warning("resynchronizing a rejoined member failed", member=member.name, error=str(exc))
            return
        self.counters.resyncs += 1
        log.info("rejoined member resynchronized", member=member.name, sessions=sent)

    @staticmethod
    async def _run_link(link: PeerLink, scope: trio.CancelScope) -> None:
        with scope:
            await link.run()

    # --- membership ---------------------------------------------------------------------------------

    def _heartbeat_payload(self) -> bytes:
        self._heartbeat_seq += 1
        return encode_value({**self.local.to_wire(self.clock()), "seq": self._heartbeat_seq})

    async def _send_heartbeats(self, sock: trio.socket.SocketType | None) -> None:
        s = self.settings
        while True:
            payload = self._heartbeat_payload()
            if sock is not None:
                await multicast.send_datagram(
                    sock, encode_datagram(KIND_HEARTBEAT, self._heartbeat_seq, payload, s.secret),
                    s.mcast_address, s.mcast_port,
                )
            for address in s.static_members:
                link = self._link_at(address)
                if link.connected:  # queued for a peer that is down, they would all arrive stale
                    link.send_nowait(KIND_HEARTBEAT, payload)
            await trio.sleep(s.frequency)

    async def _receive_heartbeats(self, sock: trio.socket.SocketType) -> None:
        while True:
            data, _sender = await multicast.receive_datagram(sock)
            try:
                frame = decode_datagram(data, self.settings.secret)
                if frame.kind != KIND_HEARTBEAT:
                    raise ClusterProtocolError("unexpected-kind")
                self._on_heartbeat(frame.payload)
            except ClusterProtocolError as exc:
                self._reject(f"heartbeat-{exc.reason}")
            except (SerializationError, ValueError):
                self._reject("heartbeat-bad-payload")

    async def _detect_failures(self) -> None:
        while True:
            await trio.sleep(self.settings.frequency)
            due = self.membership.tick(self.clock())
            if due:
                async with trio.open_nursery() as nursery:
                    for member in due:
                        nursery.start_soon(self._check_member, member)

    async def _discover(self) -> None:
        """Give peers a chance to be heard before deciding whether there is anyone to ask for sessions."""
        s = self.settings
        if s.membership == "static":
            with trio.move_on_after(max(s.drop_time, 2 * s.frequency)):
                for address in s.static_members:
                    await self._link_at(address).attempted.wait()
                # Connected peers answer with heartbeats of their own within a period or two.
                deadline = trio.current_time() + 3 * s.frequency
                while trio.current_time() < deadline:
                    connected = [a for a in s.static_members if self._link_at(a).connected]
                    if all(self.membership.by_address(*a) for a in connected):
                        break
                    await trio.sleep(s.frequency / 5)
        else:
            await trio.sleep(min(s.drop_time, 2.5 * s.frequency))

    async def _state_transfer(self) -> None:
        s = self.settings
        members = sorted(self.membership.live(), key=MemberInfo.order)
        if not members:
            log.info("no other member: starting with no sessions")
            return
        started = trio.current_time()
        with trio.move_on_after(s.state_transfer_timeout):
            for member in members:
                link = self._link_for(member)
                self._transfer_seen = {}
                received = 0

                async def install_chunk(frame: Frame) -> None:
                    nonlocal received
                    sessions = [decode_session(blob) for blob in msg.decode(frame.payload).get("sessions", [])]
                    installed = len(self.manager.install_all(sessions, newer=self._transfer_seen))
                    self.counters.sessions_installed += installed
                    received += installed

                try:
                    with trio.move_on_after(s.state_transfer_timeout):
                        await link.wait_connected()
                    await link.request(KIND_TRANSFER, msg.encode({}), s.state_transfer_timeout, install_chunk)
                except (PeerUnavailable, SerializationError) as exc:
                    log.warning("state transfer failed, trying the next member", member=member.name, error=str(exc))
                    continue
                finally:
                    self._transfer_seen = None
                self.counters.state_transfers += 1
                self.counters.sessions_transferred += received
                log.info("state transfer done", member=member.name, sessions=received,
                         seconds=round(trio.current_time() - started, 3))
                return
        log.error("state transfer incomplete: serving with the sessions received so far",
                  timeout=s.state_transfer_timeout)

    # --- life cycle ---------------------------------------------------------------------------------

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        if s.secret is None:
            log.warning("no --cluster-secret: this cluster trusts its network; anyone who reaches the receiver "
                        "or the multicast group can read and write sessions", receiver=s.receiver_address)
        listener = await open_receiver(s.receiver_address, s.receiver_port, s.auto_bind)
        port = listener.socket.getsockname()[1]
        self.local = dataclasses.replace(self.local, port=port)
        self.membership.local = self.local
        sock = None
        if s.membership == "multicast":
            sock = await multicast.open_multicast(s.mcast_address, s.mcast_port, s.mcast_bind, s.mcast_ttl)
        log.info("cluster member started", receiver=f"{s.receiver_address}:{port}", membership=s.membership,
                 group=f"{s.mcast_address}:{s.mcast_port}" if sock else "-", uid=self.local.uid,
                 send_options="ack" if s.send_ack else "async")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(
                        serve_receiver, listener, s.secret, self.dispatch, self.transport,
                        send_timeout=s.ack_timeout,
                    )
                )
                nursery.start_soon(self._supervise_links, nursery)
                if sock is not None:
                    nursery.start_soon(self._receive_heartbeats, sock)
                nursery.start_soon(self._send_heartbeats, sock)
                nursery.start_soon(self._detect_failures)
                nursery.start_soon(self._check_suspects)
                nursery.start_soon(self._sweep)
                await self._discover()
                await self._state_transfer()
                task_status.started()
                await shutdown.wait()
                # In-flight requests still need their peers to commit; the host waits for them.
                if self.open_slots:
                    await self._no_slots.wait()
                if s.expire_sessions_on_shutdown:
                    await self._expire_everywhere()
                nursery.cancel_scope.cancel()
        finally:
            listener.socket.close()
            if sock is not None:
                sock.close()

    async def _expire_everywhere(self) -> None:
        """--expire-sessions-on-shutdown: end every session here and on every member (Tomcat's
        expireSessionsOnShutdown; off by default because it throws away what the cluster is for)."""
        sessions = self.manager.sessions()
        links = [self._link_for(m) for m in self.membership.live()]
        for session in sessions:
            payload = msg.encode({"delta": encode_delta(Delta(str(session.id), session.version, (Invalidate(),)))})
            for link in links:
                link.send_nowait(KIND_FORWARD, payload)
            self.manager.invalidate(session)
        log.info("expired every session on shutdown", sessions=len(sessions), members=len(links))
        # Give the queues a moment to drain; a peer that is not reading expires them by time anyway.
        with trio.move_on_after(min(2.0, self.settings.ack_timeout)):
            while True:
                if not any(link.queue_depth() for link in links if link.connected):
                    break
                await trio.sleep(0.01)

    async def _sweep(self) -> None:
        """Expire idle sessions. Every member sweeps by its own clock (access times replicate), and the
        coordinator also tells every member, so a member whose clock or access times lag follows it."""
        await sweep_expired(self.manager, self.settings.expire_interval, self.clock, log, self._expired)

    def _expired(self, expired: list[Session]) -> None:
        if self.membership.coordinator().uid == self.local.uid:
            links = [self._link_for(m) for m in self.membership.live()]
            for session in expired:
                # The version it expired at: a member that saw a later write (not possible while this
                # node orders writes, but cheap to rule out) does not apply it.
                delta = Delta(str(session.id), session.version, (Invalidate(),))
                payload = msg.encode({"delta": encode_delta(delta)})
                for link in links:
                    link.send_nowait(KIND_FORWARD, payload)

    def statistics(self) -> ClusterStatistics:
        now = self.clock()
        names = {m.uid: m.name for m in self.membership.live()}
        peers = []
        for address, link in self._links.items():
            member = self.membership.by_address(*address)
            lag = self._lag.get(member.uid) if member else None
            peers.append(
                PeerStatistics(
                    name=member.name if member else "?",
                    address=link.address,
                    connected=link.connected,
                    queue=link.queue_depth(),
                    dropped=link.dropped,
                    lag_p50_ms=_milliseconds(lag.percentile(0.5)) if lag else None,
                    lag_p99_ms=_milliseconds(lag.percentile(0.99)) if lag else None,
                    lag_samples=len(lag) if lag else 0,
                )
            )
        rejected = dict(self.rejected)
        for reason, count in self.transport.rejected.items():
            rejected[f"frame-{reason}"] = rejected.get(f"frame-{reason}", 0) + count
        for reason, count in self.membership.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
        coordinator = self.membership.coordinator()
        return ClusterStatistics(
            mode=self.mode,
            name=self.local.name,
            uid=self.local.uid,
            receiver=f"{self.local.host}:{self.local.port}",
            membership=self.settings.membership,
            send_options="ack" if self.settings.send_ack else "async",
            secret=self.settings.secret is not None,
            coordinator=names.get(coordinator.uid, self.local.name),
            members=self.membership.views(now),
            peers=peers,
            sessions=self.manager.statistics(),
            conflicts=self.counters.conflicts,
            messages_sent=self.transport.frames_sent,
            messages_received=self.transport.frames_received,
            messages_dropped=self.transport.dropped,
            rejected=rejected,
            counters=self.counters.freeze(),
        )

