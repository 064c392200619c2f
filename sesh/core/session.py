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

    def touch(self, now: float) -> None:
        """Record that a request started at ``now`` (Tomcat's ``access()``)."""
        self.last_accessed = self.this_accessed
        self.this_accessed = now

    def copy(self) -> Session:
        """A deep copy, so that changes to attribute values of one do not show in the other."""
        return copy.deepcopy(self)
