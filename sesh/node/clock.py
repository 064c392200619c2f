"""Session times are wall-clock Unix seconds: they travel to other nodes and stores, and are shown to
users. A node reads them from one :data:`Clock`, its backend's ``clock`` (``make_backend(cfg, clock)``),
so tests can replace it: :class:`TrioWallClock` follows trio's clock (``trio.testing.MockClock`` then
moves session time too), or a test passes any function of its own."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

# Wall-clock Unix seconds, now.
Clock = Callable[[], float]


def wall_time() -> float:
    """The real wall clock: what a node uses unless it is given another."""
    return time.time()


class TrioWallClock:
    """Wall-clock seconds that move with trio's clock: ``start`` (default: the real time when made, inside
    a trio run) plus the trio time elapsed since. Under a ``MockClock`` a test sleeps through session
    timeouts without waiting for them."""

    def __init__(self, start: float | None = None) -> None:
        self._origin = (time.time() if start is None else start) - trio.current_time()

    def __call__(self) -> float:
        return self._origin + trio.current_time()
