"""The node's statistics: counters defined once, bumped through their mutable twin, reported as frozen
snapshots; and no source line bumps a counter that is not defined."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from sesh.config import NodeConfig
from sesh.node.acknowledge import AcknowledgeCounters, AcknowledgeCounts, AcknowledgeStatistics, SessionQueues
from sesh.node.msm.settings import msm_settings
from sesh.node.msm.stats import MsmCounts, MsmStatistics
from sesh.node.msm.sticky import StickyBackend
from sesh.node.tally import tally_of

NODE = Path(__file__).resolve().parent.parent / "sesh" / "node"


def _bumped(paths: list[Path], holder: str) -> set[str]:
    """Every NAME in ``<...>.{holder}.NAME`` in the given sources."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == holder:
                names.add(node.attr)
    return names


def test_every_counter_the_source_bumps_is_defined() -> None:
    msm = _bumped(sorted((NODE / "msm").glob("*.py")), "counters")
    assert msm and msm <= {f.name for f in dataclasses.fields(MsmCounts)}
    ack = _bumped([NODE / "server.py"], "ack")
    assert ack and ack <= {f.name for f in dataclasses.fields(AcknowledgeCounts)}
    from sesh.node.cluster.backend import ClusterCounts

    cluster = _bumped(sorted((NODE / "cluster").glob("*.py")), "counters")
    assert cluster - {"freeze"} == {f.name for f in dataclasses.fields(ClusterCounts)}  # none unused either


def test_the_twin_counts_the_frozen_fields_and_nothing_else() -> None:
    counters = AcknowledgeCounters()
    counters.reruns += 2
    counters.aborted += 1
    assert counters.freeze() == AcknowledgeCounts(reruns=2, aborted=1)
    with pytest.raises(AttributeError):
        counters.rerun = 1  # a typo fails at once instead of counting into nowhere
    snapshot = SessionQueues(4, counters).statistics()
    assert isinstance(snapshot, AcknowledgeStatistics)
    assert (snapshot.queue_limit, snapshot.reruns, snapshot.aborted, snapshot.conflicts) == (4, 2, 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.reruns = 3  # type: ignore[misc]
    counters.reruns += 1
    assert snapshot.reruns == 2  # a snapshot, not a view

    @dataclasses.dataclass(frozen=True)
    class Two:
        a: int = 0
        b: int = 0

    assert tally_of(Two)().values() == {"a": 0, "b": 0}


def test_msm_statistics_is_a_flat_frozen_snapshot_of_the_counters() -> None:
    backend = StickyBackend(msm_settings(NodeConfig(mode="msm", memcached_nodes="n1:127.0.0.1:1")))
    backend.counters.loads += 3
    backend.counters.conflicts += 1
    stats = backend.statistics()
    assert isinstance(stats, MsmStatistics) and (stats.loads, stats.conflicts, stats.writes) == (3, 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.loads = 0  # type: ignore[misc]
    doc = json.loads(json.dumps(dataclasses.asdict(stats)))
    # /sesh/status keeps every counter at the top of "backend", beside the mode's settings
    assert {f.name for f in dataclasses.fields(MsmCounts)} | {"mode", "sticky", "store_nodes"} <= set(doc)
    assert doc["loads"] == 3 and doc["mode"] == "msm" and doc["store_nodes"][0]["node_id"] == "n1"


def test_what_sesh_top_reads_is_in_the_snapshots() -> None:
    """sesh top reads /sesh/status by key (sesh/top/collect.py): every key it reads is a field of the
    frozen snapshots, so renaming one breaks this test rather than the dashboard."""
    from sesh.net.memcache_client import NodeClientStatistics
    from sesh.node.cluster.backend import ClusterStatistics, PeerStatistics
    from sesh.node.server import NodeStatistics

    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert {"name", "mode", "requests", "backend"} <= names(NodeStatistics)
    assert {"sticky", "sessions", "backup_failures", "write_failures", "conflicts", "store_nodes"} <= names(
        MsmStatistics
    )
    assert {"node_id", "address", "available", "failures"} <= names(NodeClientStatistics)
    assert {"sessions", "peers"} <= names(ClusterStatistics)
    assert {"name", "address", "connected", "dropped"} <= names(PeerStatistics)
