"""The session itself: plain data, no behaviour beyond its own clock arithmetic.

Times are floats in seconds since the Unix epoch and are always passed in (``now``), so the core never
reads a clock and tests drive it with fake times. ``version`` increases by one for every request that
changed the session; backends compare versions to detect lost updates instead of letting the last
writer win silently.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from sesh.core.ids import SessionId

# --- what a session's fields may hold ----------------------------------------------------------------
# Sessions travel through stores anyone on the network can write to (memcached has no authentication),
# so every node checks these bounds on what it reads (sesh.core.serializer), the config checks them on
# what it is given, and the manager on what an app sets. Within them every computation a node makes
# with a session (expiry, a store exptime, a date on a page) stays finite and cheap.

# The longest idle timeout: a year. Tomcat puts no bound on maxInactiveInterval, but a session idle for
# longer is a leak, and the bound keeps expiry times within what datetime and memcached can carry.
MAX_INACTIVE_LIMIT = 365 * 24 * 3600
# Zero or less means "never expires"; a bound keeps a planted -10**6000 from breaking what prints it.
MIN_INACTIVE_LIMIT = -(2**31)
# Session times are seconds since the epoch: never before it, and not beyond 2**33 (the year 2242),
# far enough for any clock and small enough that every date function accepts time + MAX_INACTIVE_LIMIT.
MAX_TIME = float(2**33)
# A version counts requests that changed the session; 2**63 of them is not a real session.
MAX_VERSION = 2**63 - 1
# Nodes' clocks disagree a little; a session touched further in the future than this was not touched by
# any node (it would never expire, and its store exptime would be decades away).
MAX_CLOCK_SKEW = 24 * 3600.0


def max_inactive_problem(seconds: object) -> str | None:
    """Why ``seconds`` is not a usable max inactive interval, or None if it is."""
    if type(seconds) is not int:
        return f"max_inactive is an int of seconds, got {type(seconds).__name__}"
    if not MIN_INACTIVE_LIMIT <= seconds <= MAX_INACTIVE_LIMIT:
        shown = seconds if seconds.bit_length() <= 128 else f"a {seconds.bit_length()}-bit number"
        return f"max_inactive {shown} is outside {MIN_INACTIVE_LIMIT}..{MAX_INACTIVE_LIMIT} seconds"
    return None


def time_problem(what: str, value: float) -> str | None:
    """Why ``value`` is not a usable session time (NaN, infinite, negative, centuries ahead), or None."""
    if not 0.0 <= value <= MAX_TIME:  # also false for NaN
        return f"{what} {value!r} is not a time from 1970 to {MAX_TIME:.0f}"
    return None


@dataclass(slots=True)
class Session:
    """One HTTP session, as Tomcat's ``StandardSession`` minus the listeners.

    ``last_accessed`` is the start of the previous request and ``this_accessed`` the start of the current
    (or latest) one, as in Tomcat. ``max_inactive`` is in seconds; zero or less means it never expires.
    ``extra`` keeps fields a newer sesh wrote that this one does not know, so that a round trip through
    this node does not drop them.
    """

    id: SessionId
    created: float
    last_accessed: float
    this_accessed: float
    max_inactive: int
    attributes: dict[str, Any] = field(default_factory=dict)
    principal: Any = None
    version: int = 0
    valid: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, session_id: SessionId, now: float, max_inactive: int) -> Session:
        """A fresh session created at ``now``."""
        return cls(session_id, now, now, now, max_inactive)

    def is_expired(self, now: float) -> bool:
        """Whether the session has been idle for ``max_inactive`` seconds or more."""
        return self.max_inactive > 0 and now - self.this_accessed >= self.max_inactive

    def idle_seconds(self, now: float) -> float:
        """Seconds since the latest request started; never negative, even if clocks disagree."""
        return max(0.0, now - self.this_accessed)

    def expires_at(self) -> float | None:
        """When the session expires if nobody touches it (None: never); msm uses it as the store exptime."""
        if self.max_inactive <= 0:
            return None
        return self.this_accessed + self.max_inactive

    def clock_problem(self, now: float) -> str | None:
        """Why the session's times cannot come from a node's clock at ``now`` (set more than
        :data:`MAX_CLOCK_SKEW` ahead of it), or None. Decoding checks ranges; this needs the time."""
        for what in ("created", "last_accessed", "this_accessed"):
            value = getattr(self, what)
            if value - now > MAX_CLOCK_SKEW:
                return f"{what} is {value - now:.0f}s in the future"
        return None

    def touch(self, now: float) -> None:
        """Record that a request started at ``now`` (Tomcat's ``access()``)."""
        self.last_accessed = self.this_accessed
        self.this_accessed = now

    def copy(self) -> Session:
        """A deep copy, so that changes to attribute values of one do not show in the other."""
        return copy.deepcopy(self)
