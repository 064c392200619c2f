"""Session times are wall-clock Unix seconds: they travel to other nodes and stores, and are shown to
users. Every node module reads the time through this one function so tests can replace it."""

from __future__ import annotations

import time


def wall_time() -> float:
    return time.time()
