"""Percentiles of recent durations: a bounded window of samples, so memory stays fixed however long a
process runs, and the figures follow what it does now rather than since it started."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 1) of ``values``, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class RecentSamples:
    """The last ``size`` samples; adding is O(1), a percentile sorts a copy (status reads are rare)."""

    __slots__ = ("_samples",)

    def __init__(self, size: int = 1024) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, value: float) -> None:
        self._samples.append(value)

    def percentile(self, q: float) -> float | None:
        return percentile(self._samples, q)
