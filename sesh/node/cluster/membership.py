"""Who is in the cluster: the membership state machine (pure, time passed in).

Theory of operation. Every node announces itself every ``frequency`` with a heartbeat (multicast, or
over TCP to each static member) that names it: a random ``uid`` drawn at start (so a restarted node is a
new member), its name, route, receiver address, domain and start time. :meth:`Membership.heartbeat`
turns heartbeats into members::

    (unknown) --heartbeat--> ALIVE --silent for drop_time, --> SUSPECT --TCP check fails--> GONE
                               ^      or its connection lost      |
                               +------- heartbeat or TCP ok ------+

A suspect is not dropped on silence alone (TcpFailureDetector): the node tries to connect to its
receiver. Accepted: it stays (its heartbeats may just be lost) and is checked again after another
drop_time. Refused: the process is gone though the host answers, so it is dropped at once. The
transport's first sign of a dead peer (its connection reset or closed, a connection refused) makes the
member suspect at once (:meth:`Membership.suspect`) and starts the same check, without waiting for
drop_time. A member
that is gone and heartbeats again rejoins; a new uid at a known receiver address replaces the old
member (it restarted).

Heartbeats are authenticated by the frame's MAC when there is a secret; replay protection is here: a
heartbeat must carry a higher sequence number than the last one from its uid, and a timestamp within
``replay_window`` of our clock. Gone members are remembered for that window so their old heartbeats
cannot bring them back. Heartbeats of other domains, or too many members, are refused and counted.

The *coordinator* is the oldest live member (by start time, then uid), this node included. Every
member computes the same one from the same view; the replication uses it to order writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

# More members than any real cluster; bounds the table a flood of forged (secret-less) heartbeats fills.
MAX_MEMBERS = 256


class State(Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What a heartbeat says about its sender."""

    uid: str
    name: str
    route: str
    host: str
    port: int
    domain: str
    start: float

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def order(self) -> tuple[float, str]:
        return (self.start, self.uid)

    def to_wire(self, ts: float) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "name": self.name,
            "route": self.route,
            "host": self.host,
            "port": self.port,
            "domain": self.domain,
            "start": self.start,
            "ts": ts,
        }

    @classmethod
    def from_wire(cls, data: Any) -> tuple[MemberInfo, float]:
        """(info, timestamp) from a decoded heartbeat; ValueError if it is not one."""
        if not isinstance(data, dict):
            raise ValueError("heartbeat is not a map")
        try:
            info = cls(
                uid=_typed(data["uid"], str),
                name=_typed(data["name"], str),
                route=_typed(data["route"], str),
                host=_typed(data["host"], str),
                port=_typed(data["port"], int),
                domain=_typed(data["domain"], str),
                start=float(_typed(data["start"], (int, float))),
            )
            ts = float(_typed(data["ts"], (int, float)))
        except KeyError as exc:
            raise ValueError(f"heartbeat lacks {exc}") from None
        if not 0 < info.port < 65536 or not info.uid or len(info.uid) > 64 or len(info.name) > 256:
            raise ValueError("heartbeat fields out of range")
        return info, ts


def _typed(value: Any, kinds: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"heartbeat field has type {type(value).__name__}")
    return value


@dataclass(slots=True)
class Member:
    info: MemberInfo
    state: State
    last_heard: float  # when the last heartbeat (or successful TCP check) came
    last_seq: int
    joined: float
    checking: bool = False  # a TCP check is running


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as /sesh/status shows it."""

    uid: str
    name: str
    route: str
    address: str
    state: str
    heartbeat_age: float


class Membership:
    def __init__(self, local: MemberInfo, *, drop_time: float, replay_window: float = 30.0) -> None:
        self.local = local
        self.drop_time = drop_time
        self.replay_window = max(replay_window, 2 * drop_time)
        self._members: dict[str, Member] = {}
        self.rejected: dict[str, int] = {}
        self.joins = 0
        self.drops = 0
        self.rejoined: set[str] = set()  # uids back from GONE, not yet resynchronized
        self.version = 0  # bumped on every change of the live set, so watchers can tell
        self._live: list[MemberInfo] = []
        self._live_version = 0
        self._coordinator = self._coordinator_local = local
        self._coordinator_version = 0

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _changed(self) -> None:
        self.version += 1

    # --- input ----------------------------------------------------------------------------------------

    def heartbeat(self, info: MemberInfo, seq: int, ts: float, now: float) -> bool:
        """A heartbeat arrived; whether it was accepted."""
        if info.uid == self.local.uid:
            return False  # our own, looped back
        if info.domain != self.local.domain:
            self._reject("other-domain")
            return False
        if abs(now - ts) > self.replay_window:
            self._reject("stale-heartbeat")
            return False
        member = self._members.get(info.uid)
        if member is not None:
            if seq <= member.last_seq:
                self._reject("replayed-heartbeat")
                return False
            member.last_seq = seq
            member.last_heard = now
            if member.state is not State.ALIVE:
                if member.state is State.GONE:
                    # Dropped while it was still running (stalled, cut off): it missed writes and
                    # does not know it, so the coordinator must bring it up to date.
                    self.joins += 1
                    self.rejoined.add(info.uid)
                member.state = State.ALIVE
                member.info = info
                self._changed()
            return True
        if len(self._members) >= MAX_MEMBERS:
            self._forget_old(now)
            if len(self._members) >= MAX_MEMBERS:
                self._reject("too-many-members")
                return False
        for other in self._members.values():  # a restart: same receiver, new uid
            if other.info.address == info.address and other.state is not State.GONE:
                other.state = State.GONE
                other.last_heard = now
                self.drops += 1
        self._members[info.uid] = Member(info, State.ALIVE, now, seq, now)
        self.joins += 1
        self._changed()
        return True

    def tick(self, now: float) -> list[MemberInfo]:
        """Mark members silent for drop_time suspect; return those that need a TCP check now."""
        due = []
        for member in self._members.values():
            if member.state is State.GONE or member.checking:
                continue
            if now - member.last_heard >= self.drop_time:
                if member.state is State.ALIVE:
                    member.state = State.SUSPECT
                member.checking = True
                due.append(member.info)
        self._forget_old(now)
        return due

    def checked(self, uid: str, reachable: bool, now: float) -> None:
        """The result of a TCP check (or of a send that proved the member alive or dead)."""
        member = self._members.get(uid)
        if member is None:
            return
        member.checking = False
        if member.state is State.GONE:
            return
        if reachable:
            # It answers on TCP: keep it, and give it another drop_time before the next check.
            member.last_heard = now
            if member.state is State.SUSPECT:
                member.state = State.ALIVE
        else:
            self._drop(member, now)

    def suspect(self, uid: str) -> bool:
        """The transport lost its connection to the member (reset, EOF, refused): suspect it until the
        TCP check says otherwise; whether it was live."""
        member = self._members.get(uid)
        if member is None or member.state is State.GONE:
            return False
        member.state = State.SUSPECT
        return True

    def fail(self, uid: str, now: float) -> bool:
        """The transport proved the member gone (connection refused); whether it was live until now."""
        member = self._members.get(uid)
        if member is None or member.state is State.GONE:
            return False
        self._drop(member, now)
        return True

    def _drop(self, member: Member, now: float) -> None:
        member.state = State.GONE
        member.checking = False
        member.last_heard = now
        self.drops += 1
        self._changed()

    def _forget_old(self, now: float) -> None:
        # A gone member's last sequence number must outlive every heartbeat an attacker could replay.
        for uid in [u for u, m in self._members.items()
                    if m.state is State.GONE and now - m.last_heard > self.replay_window]:
            del self._members[uid]

    # --- views ----------------------------------------------------------------------------------------

    def live(self) -> list[MemberInfo]:
        """Members believed running (alive or suspect: not dropped until the TCP check says so). The
        same list until the live set changes (every replicated write asks): do not modify it."""
        if self._live_version != self.version:
            self._live = [m.info for m in self._members.values() if m.state is not State.GONE]
            self._live_version = self.version
        return self._live

    def get(self, uid: str) -> Member | None:
        return self._members.get(uid)

    def by_address(self, host: str, port: int) -> MemberInfo | None:
        for member in self._members.values():
            if member.state is not State.GONE and member.info.address == (host, port):
                return member.info
        return None

    def coordinator(self) -> MemberInfo:
        """The oldest live member, this node included."""
        if self._coordinator_version != self.version or self._coordinator_local is not self.local:
            self._coordinator = min([self.local, *self.live()], key=MemberInfo.order)
            self._coordinator_version, self._coordinator_local = self.version, self.local
        return self._coordinator

    def views(self, now: float) -> list[MemberView]:
        return [
            MemberView(
                uid=m.info.uid,
                name=m.info.name,
                route=m.info.route,
                address=f"{m.info.host}:{m.info.port}",
                state=m.state.value,
                heartbeat_age=round(max(0.0, now - m.last_heard), 3),
            )
            for m in sorted(self._members.values(), key=lambda m: m.info.order())
        ]
