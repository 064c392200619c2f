"""A store's availability cache: msm's "node available" check with backoff and a single probe.

A failure marks the store *down* for ``ttl`` seconds, doubling with every further failure in a row up
to ``max_backoff``; calls during that time fail at once, so a dead store costs a request nothing. When
the time is up one call is let through as a probe (the others still fail fast); its success makes the
store available again and counts a *recovery*. The memcached client (:mod:`sesh.net.memcache_client`)
and the Redis client (:mod:`sesh.net.redis_client`) both keep their stores' availability here.
"""

from __future__ import annotations

import trio


class Availability:
    def __init__(self, *, ttl: float = 1.0, max_backoff: float = 4.0) -> None:
        self.ttl = ttl
        self.max_backoff = max_backoff
        self.down = False
        self.down_until = 0.0
        self.probing = False
        self.in_row = 0
        self.failures = 0
        self.recoveries = 0
        self.last_error = ""

    def available(self) -> bool:
        """Whether a call would be attempted now (not marked down, or due for a probe)."""
        return not self.down or (trio.current_time() >= self.down_until and not self.probing)

    def admit(self) -> bool | None:
        """None: refuse the call (marked down); True: the call is the probe; False: a normal call."""
        if not self.down:
            return False
        if trio.current_time() < self.down_until or self.probing:
            return None
        self.probing = True
        return True

    def end_probe(self, probe: bool | None) -> None:
        if probe:
            self.probing = False

    def failed(self, reason: str) -> None:
        self.failures += 1
        self.in_row += 1
        self.last_error = reason
        backoff = min(self.ttl * 2 ** min(self.in_row - 1, 16), self.max_backoff)
        self.down = True
        self.down_until = trio.current_time() + backoff

    def succeeded(self) -> None:
        if self.down:
            self.recoveries += 1
        self.down = False
        self.in_row = 0


class AvailabilityTracked:
    """What a store client shows of its :class:`Availability` (the memcached and the Redis client):
    set ``_availability`` and ``_timeouts`` in ``__init__``."""

    _availability: Availability
    _timeouts: int

    def available(self) -> bool:
        """Whether a call would be attempted now (not marked down, or due for a probe)."""
        return self._availability.available()

    @property
    def recoveries(self) -> int:
        return self._availability.recoveries

    def note_timeout(self, deadline: float) -> None:
        """A caller's own, shorter deadline (say a backup timeout) expired during a call to this store:
        count it as the store's timeout, so a slow store is failed over rather than waited on forever."""
        self._timeouts += 1
        self._availability.failed(f"no answer within the caller's {deadline:g}s")
