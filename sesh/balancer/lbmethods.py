"""httpd's member election, reimplemented: pure functions over member state (no I/O, time passed in).

Theory of operation (mod_proxy_balancer + proxy_util.c + mod_lbmethod_*):

* ``best_member`` walks lbsets from 0 upwards and stops at the first set that yields a member. Within a
  set, draining members are skipped (and counted unusable so a hot spare may replace them), members in
  error get a retry check, usable ordinary members are offered to the lbmethod's ``is_best``, hot
  spares (+R) replace at most as many unusable members, and hot standbys (+H) are offered only when
  nothing else in the set was chosen.
* ``byrequests`` is the smooth weighted round-robin: every candidate's lbstatus grows by its lbfactor,
  the highest lbstatus wins (the first one on ties) and pays back the sum of the candidates' factors.
* ``bytraffic`` picks the lowest ``transferred/lbfactor + read/lbfactor`` (integer division, as C does).
* ``bybusyness`` picks the fewest busy, ties broken byrequests-style on lbstatus.
* ``sticky_elect`` is what mod_proxy_balancer does when a session route names a usable member: every
  usable member's lbstatus grows by its factor and the elected member pays back the total, so sticky
  traffic counts in the round-robin.

The functions mutate lbstatus (and error bits through ``retry``) because that *is* the algorithm's
state; the caller owns counting ``elected`` and ``busy``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar

from sesh.balancer.members import (
    DRAIN,
    HOT_SPARE,
    HOT_STANDBY,
    IGNORE_ERRORS,
    IN_ERROR,
    INITIALIZED,
    M_LBFACTOR,
    M_LBSET,
    M_LBSTATUS,
    M_STATUS,
    NOT_USABLE,
    STOPPED,
    is_usable,
)


class MemberState(Protocol):
    status: int
    lbfactor: int
    lbstatus: int
    lbset: int
    retries: int

    @property
    def error_time(self) -> float: ...
    @property
    def retry(self) -> float: ...
    @property
    def busy(self) -> int: ...
    @property
    def transferred(self) -> int: ...
    @property
    def read(self) -> int: ...
    @property
    def route(self) -> str: ...
    @property
    def redirect(self) -> str: ...


M = TypeVar("M", bound=MemberState)
IsBest = Callable[[M, M | None], bool]


def retry(member: MemberState, now: float) -> bool:
    """httpd's ap_proxy_retry_worker: clear the error bit once ``retry`` seconds have passed (at once
    with +I); a stopped member is never retried. True if the member is no longer in error."""
    status = member.status
    if not status & IN_ERROR:
        return True
    if status & STOPPED:
        return False
    if status & IGNORE_ERRORS or now > member.error_time + member.retry:
        member.retries += 1
        member.status = status & ~IN_ERROR
        return True
    return False


def best_member(members: Sequence[M], is_best: IsBest[M], now: float) -> M | None:
    best: M | None = None
    max_lbset = 0
    lbset = 0
    while best is None and lbset <= max_lbset:
        unusable = 0
        spares: list[M] = []
        standbys: list[M] = []
        for member in members:
            max_lbset = max(max_lbset, member.lbset)
            if member.lbset != lbset:
                continue
            status = member.status
            if status & DRAIN:
                if not status & (HOT_SPARE | HOT_STANDBY):
                    unusable += 1
                continue
            if not is_usable(status):
                retry(member, now)
                status = member.status
            if status & HOT_SPARE:
                if is_usable(status):
                    spares.append(member)
            elif status & HOT_STANDBY:
                if is_usable(status):
                    standbys.append(member)
            elif is_usable(status):
                if is_best(member, best):
                    best = member
            else:
                unusable += 1
        for member in spares[:unusable]:
            if is_best(member, best):
                best = member
        if best is None:
            for member in standbys:
                if is_best(member, best):
                    best = member
        lbset += 1
    return best


# Status bits that take a member off byrequests_words' fast path (anything but a plain, usable member).
_SPECIAL: Final = NOT_USABLE | DRAIN | HOT_SPARE | HOT_STANDBY


def byrequests_words(words: memoryview, bases: Sequence[int]) -> int | None:
    """:func:`byrequests` on the scoreboard's words themselves (``bases``: each member's first word), for
    the proxy's hot path, where every Member property read is a call. In the common case (every member
    usable, ordinary: no spare, standby or drain, and in lbset 0) best_member offers each member in
    order to is_best, so the election reduces to one loop (same increments, same first-wins tie-break,
    same payback). The position of the elected member, or None when a member is not plain (or there is
    none), for byrequests to decide."""
    for base in bases:
        status = words[base + M_STATUS]
        if status & _SPECIAL or not status & INITIALIZED or words[base + M_LBSET]:
            return None
    best = -1
    best_status = total = 0
    for position, base in enumerate(bases):
        factor = words[base + M_LBFACTOR]
        lbstatus = words[base + M_LBSTATUS] + factor
        words[base + M_LBSTATUS] = lbstatus
        total += factor
        if best < 0 or lbstatus > best_status:
            best, best_status = position, lbstatus
    if best < 0:
        return None
    words[bases[best] + M_LBSTATUS] = best_status - total
    return best


def byrequests(members: Sequence[M], now: float) -> M | None:
    total = 0

    def is_best(current: M, best: M | None) -> bool:
        nonlocal total
        current.lbstatus += current.lbfactor
        total += current.lbfactor
        return best is None or current.lbstatus > best.lbstatus

    chosen = best_member(members, is_best, now)
    if chosen is not None:
        chosen.lbstatus -= total
    return chosen


def bytraffic(members: Sequence[M], now: float) -> M | None:
    lowest = 0

    def is_best(current: M, best: M | None) -> bool:
        nonlocal lowest
        factor = current.lbfactor
        traffic = current.transferred // factor + current.read // factor
        if best is None or traffic < lowest:
            lowest = traffic
            return True
        return False

    return best_member(members, is_best, now)


def bybusyness(members: Sequence[M], now: float) -> M | None:
    total = 0

    def is_best(current: M, best: M | None) -> bool:
        nonlocal total
        current.lbstatus += current.lbfactor
        total += current.lbfactor
        if best is None:
            return True
        busy, best_busy = current.busy, best.busy
        return busy < best_busy or (busy == best_busy and current.lbstatus > best.lbstatus)

    chosen = best_member(members, is_best, now)
    if chosen is not None:
        chosen.lbstatus -= total
    return chosen


LBMETHODS: dict[str, Callable[[Sequence[M], float], M | None]] = {
    "byrequests": byrequests,
    "bytraffic": bytraffic,
    "bybusyness": bybusyness,
}


def elect(lbmethod: str, members: Sequence[M], now: float) -> M | None:
    method: Callable[[Sequence[M], float], M | None] = LBMETHODS[lbmethod]
    return method(members, now)


def sticky_elect(members: Sequence[MemberState], chosen: MemberState) -> None:
    """Account a sticky election in lbstatus (mod_proxy_balancer's default updatelbstatus)."""
    total = 0
    for member in members:
        if is_usable(member.status):
            member.lbstatus += member.lbfactor
            total += member.lbfactor
    chosen.lbstatus -= total


def find_route_member(members: Sequence[M], route: str, now: float, recursion: int = 1) -> M | None:
    """httpd's find_route_worker: the usable member with this route, non-standbys first; an unusable
    one hands over to its ``redirect`` route (bounded, so redirect cycles end)."""
    for standby_pass in (False, True):
        for member in members:
            if bool(member.status & HOT_STANDBY) != standby_pass:
                continue
            if not member.route or member.route != route:
                continue
            if is_usable(member.status):
                return member
            retry(member, now)
            if is_usable(member.status):
                return member
            if member.redirect and recursion < len(members):
                other = find_route_member(members, member.redirect, now, recursion + 1)
                if other is not None and not is_usable(other.status):
                    retry(other, now)
                if other is not None and is_usable(other.status):
                    return other
    return None


def force_recovery(members: Sequence[MemberState], now: float, enabled: bool) -> None:
    """When every member is in error (even after a retry check), clear all the error bits at once."""
    for member in members:
        if not member.status & IN_ERROR:
            return
        retry(member, now)
        if not member.status & IN_ERROR:
            return
    if enabled:
        for member in members:
            member.retries += 1
            member.status &= ~IN_ERROR
