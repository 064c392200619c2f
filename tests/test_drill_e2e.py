"""``sesh drill`` against real ``sesh up`` topologies: members SIGKILLed through the control socket
under twenty browsers, nothing lost in msm mode; losses found (and the exit status non-zero) in local
mode, where sessions die with their node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.up_procs import UpProcess

# Lean: a few seconds of load with a pause between requests, so the suite stays light on 2 shared cores.
LOAD = ("--browsers", "20", "--think", "0.02")


@pytest.fixture
def up(tmp_path: Path) -> Iterator[list[UpProcess]]:
    started: list[UpProcess] = []
    yield started
    for proc in started:
        proc.kill()


def _assert_nothing_lost(code: int, report: dict[str, object], stderr: str) -> None:
    assert report["sessions_lost"] == 0, report["problems"]
    assert report["updates_lost"] == 0, report["problems"]
    assert report["backwards"] == 0, report["problems"]
    assert report["acked"] > 100  # type: ignore[operator]
    assert code == 0, stderr


def test_msm_nonsticky_loses_nothing_when_a_node_and_a_store_are_killed(
    tmp_path: Path, up: list[UpProcess]
) -> None:
    topo = UpProcess(tmp_path)
    up.append(topo)
    code, report, stderr = topo.drill(*LOAD, "--duration", "7", "--kill", "node1@2", "--kill", "store-n1@4")
    faults = {(f["action"], f["target"]): f for f in report["faults"]}
    assert set(faults) == {("kill", "node1"), ("kill", "store-n1")}
    for fault in faults.values():
        assert fault["error"] == ""
        assert fault["all_served_after"] is not None  # every browser was served again after it
    members = topo.members()
    assert members["node1"]["state"] == "killed" and members["store-n1"]["state"] == "killed"
    assert members["node2"]["state"] == "running"
    _assert_nothing_lost(code, report, stderr)


def test_msm_sticky_loses_nothing_when_a_node_is_killed_and_restarted(tmp_path: Path, up: list[UpProcess]) -> None:
    topo = UpProcess(tmp_path, "--sticky")
    up.append(topo)
    assert "stickysession" in " ".join(topo.lines) or topo.info()["sticky"] is True
    code, report, stderr = topo.drill(*LOAD, "--duration", "7", "--kill", "node1@2", "--start", "node1@4")
    assert [f["error"] for f in report["faults"]] == ["", ""]
    # Sessions that lived on node1 (route a) moved to node2: their route changed, their data did not.
    assert report["route_changes"] > 0
    assert topo.members()["node1"]["state"] == "running"
    _assert_nothing_lost(code, report, stderr)


def test_hot_session_answers_distinct_counts_and_keeps_every_acknowledged_hit(
    tmp_path: Path, up: list[UpProcess]
) -> None:
    topo = UpProcess(tmp_path)
    up.append(topo)
    code, report, stderr = topo.drill("--browsers", "8", "--think", "0.02", "--duration", "4", "--hot-session")
    hot = report["hot"]
    assert hot["acked"] > 20
    assert hot["duplicates"] == 0, hot["problems"]
    assert hot["updates_lost"] == 0, hot["problems"]
    assert not hot["session_lost"]
    assert code == 0, stderr


def test_cluster_loses_nothing_when_a_node_is_killed(tmp_path: Path, up: list[UpProcess]) -> None:
    """The seed's first experiment: non-sticky balancer, two cluster nodes replicating (ack by default)."""
    topo = UpProcess(tmp_path, "--mode", "cluster")
    up.append(topo)
    assert {m["name"] for m in topo.members().values()} >= {"node1", "node2", "balancer"}
    # The killed node's connections reset and its port refuses: the survivor drops it at once, so no
    # write waits for its acknowledgement (--ack-timeout, 5 s, longer than the load after the kill).
    code, report, stderr = topo.drill(*LOAD, "--duration", "5", "--kill", "node1@2")
    [fault] = report["faults"]
    assert fault["error"] == "" and fault["all_served_after"] is not None, fault
    assert fault["longest_gap"] < 2.5, fault  # nobody waited anything like the ack timeout
    assert sum(report["failures"].values()) <= 1, report["failures"]  # at most one failed request per kill
    assert topo.members()["node1"]["state"] == "killed"
    _assert_nothing_lost(code, report, stderr)


def test_drill_finds_the_losses_of_local_mode(tmp_path: Path, up: list[UpProcess]) -> None:
    topo = UpProcess(tmp_path, "--mode", "local")
    up.append(topo)
    code, report, _ = topo.drill("--browsers", "5", "--think", "0.02", "--duration", "2", "--kill-cmd", "exit 3@0.5")
    [fault] = report["faults"]
    assert fault["action"] == "cmd" and fault["error"].startswith("exit 3")
    # Non-sticky balancer, sessions in each node's memory: every other request lands where the session
    # is unknown, so the browser gets a new one.
    assert report["sessions_lost"] > 0
    assert report["lost"] is True
    assert code == 1
