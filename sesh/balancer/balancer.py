"""One balancer: its members, its settings, and the choice of a member for a request.

:meth:`Balancer.choose` is mod_proxy_balancer's pre_request without the I/O: force recovery, look for a
sticky route (a usable member with it, its redirect, or 503 with ``nofailover``), else elect by the
lbmethod. The lbmethod and stickysession live in the scoreboard so balancer-manager edits reach every
worker process.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sesh.balancer import lbmethods
from sesh.balancer.members import (
    B_EDITS,
    B_LBMETHOD,
    IN_ERROR,
    LBMETHODS,
    M_STATUS,
    Member,
    MemberStatistics,
    Scoreboard,
)
from sesh.balancer.sticky import StickyNames, StickyRef, find_sticky
from sesh.config import BalancerConfig, failonstatus_codes

NAME = "balancer://sesh"
_STICKY_SLOT = 0
_BYREQUESTS = LBMETHODS.index("byrequests")


@dataclass(frozen=True, slots=True)
class Choice:
    member: Member | None
    sticky: StickyRef | None
    refusal: str = ""  # why there is no member (the 503's explanation)
    final: bool = False  # a refusal that waiting cannot change (nofailover)


@dataclass(frozen=True, slots=True)
class BalancerStatistics:
    name: str
    lbmethod: str
    stickysession: str
    stickysessionsep: str
    scolonpathdelim: bool
    nofailover: bool
    timeout: float
    maxattempts: int
    failonstatus: tuple[int, ...]
    forcerecovery: bool
    path: str
    members: tuple[MemberStatistics, ...]


class Balancer:
    def __init__(self, cfg: BalancerConfig, board: Scoreboard, worker: int = 0) -> None:
        self.cfg = cfg
        self.board = board
        self.worker = worker
        self.members = [Member(m, i, board, worker) for i, m in enumerate(cfg.members)]
        self.failonstatus = failonstatus_codes(cfg.failonstatus)  # checked when the config was loaded
        count = len(self.members)
        # httpd: without maxattempts, one failover attempt per other member.
        self.max_attempts = cfg.maxattempts if cfg.maxattempts >= 0 else max(count - 1, 0)
        self.separator = cfg.stickysessionsep.encode()
        self._sticky_cache: tuple[StickyNames | None, int] = (None, -1)
        # A choice without a sticky reference is immutable: one per member, built once, not per request.
        self._plain_choices = [Choice(m, None) for m in self.members]
        # Each member's first scoreboard word: the hot path reads the words, not the properties.
        self._bases = tuple(board.member_base(i) for i in range(count))

    def initialize(self) -> None:
        """Write the configured state into the scoreboard (once, before workers start)."""
        for member in self.members:
            member.initialize()
        self.lbmethod = self.cfg.lbmethod
        self.stickysession = self.cfg.stickysession

    # -- settings shared through the scoreboard --
    @property
    def lbmethod(self) -> str:
        return LBMETHODS[self.board.ints[B_LBMETHOD]]

    @lbmethod.setter
    def lbmethod(self, name: str) -> None:
        self.board.ints[B_LBMETHOD] = LBMETHODS.index(name)

    @property
    def stickysession(self) -> str:
        return self.board.get_text(_STICKY_SLOT)

    @stickysession.setter
    def stickysession(self, value: str) -> None:
        self.board.set_text(_STICKY_SLOT, value)
        self.board.ints[B_EDITS] += 1

    def sticky_names(self) -> StickyNames | None:
        edits = self.board.ints[B_EDITS]
        names, seen = self._sticky_cache
        if seen != edits:
            names = StickyNames.parse(self.stickysession)
            self._sticky_cache = (names, edits)
        return names

    def member_by_url(self, url: str) -> Member | None:
        url = url.rstrip("/")
        return next((m for m in self.members if m.url == url), None)

    def recalc_factors(self) -> None:
        """After a loadfactor edit every lbstatus restarts from its lbfactor (httpd's recalc_factors)."""
        if len(self.members) == 1:
            self.members[0].lbfactor = self.members[0].lbstatus = 100
            return
        for member in self.members:
            member.lbstatus = member.lbfactor

    # -- the election --
    def choose(self, target: bytes, headers: Iterable[tuple[bytes, bytes]], now: float) -> Choice:
        members = self.members
        words = self.board.ints
        bases = self._bases
        if bases and words[bases[0] + M_STATUS] & IN_ERROR:  # force_recovery looks no further otherwise
            lbmethods.force_recovery(members, now, self.cfg.forcerecovery)
        names, seen = self._sticky_cache
        if seen != words[B_EDITS]:
            names = self.sticky_names()
        sticky = None
        if names is not None:
            sticky = find_sticky(target, headers, names, self.separator, self.cfg.scolonpathdelim)
            if sticky is not None and sticky.route:
                member = lbmethods.find_route_member(members, sticky.route, now)
                if member is not None:
                    lbmethods.sticky_elect(members, member)
                    member.count_elected()
                    return Choice(member, sticky)
                if self.cfg.nofailover and any(m.route == sticky.route for m in members):
                    why = f"the member for route {sticky.route} is unusable and failover is disabled (nofailover)"
                    return Choice(None, sticky, why, final=True)
        lbmethod = words[B_LBMETHOD]
        position = lbmethods.byrequests_words(words, bases) if lbmethod == _BYREQUESTS else None
        member = members[position] if position is not None else lbmethods.elect(LBMETHODS[lbmethod], members, now)
        if member is None:
            why = "no members are configured" if not members else "every member is unusable " \
                "(in error, disabled, stopped or draining)"
            return Choice(None, sticky, why)
        member.count_elected()
        return Choice(member, sticky) if sticky is not None else self._plain_choices[member.index]

    def statistics(self) -> BalancerStatistics:
        cfg = self.cfg
        names = self.sticky_names()
        return BalancerStatistics(
            name=NAME,
            lbmethod=self.lbmethod,
            stickysession=str(names) if names else "(None)",
            stickysessionsep=cfg.stickysessionsep,
            scolonpathdelim=cfg.scolonpathdelim,
            nofailover=cfg.nofailover,
            timeout=cfg.timeout,
            maxattempts=self.max_attempts,
            failonstatus=tuple(sorted(self.failonstatus)),
            forcerecovery=cfg.forcerecovery,
            path=cfg.path,
            members=tuple(m.statistics() for m in self.members),
        )
