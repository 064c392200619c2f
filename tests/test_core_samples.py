"""Percentiles over a bounded window of recent samples."""

from __future__ import annotations

from sesh.core.samples import RecentSamples, percentile


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) is None


def test_the_window_keeps_only_the_latest_samples() -> None:
    samples = RecentSamples(size=10)
    assert samples.percentile(0.5) is None and len(samples) == 0
    for value in range(1000):
        samples.add(float(value))
    assert len(samples) == 10
    assert samples.percentile(0.01) == 990.0
    assert samples.percentile(0.99) == 999.0
