"""``sesh drill``'s checks, pure: what counts as a lost session, a lost update, a step back; the
measurements around a fault."""

from __future__ import annotations

from collections import Counter

import pytest

from sesh.config import ConfigError, DrillConfig, load
from sesh.core.samples import percentile
from sesh.drill.browsers import Browser, Outcome, session_base, session_route
from sesh.drill.run import Fault, _around, _rate, _report, faults_of

BASE = "0123456789ABCDEF0123456789ABCDEF"


def _answer(sid: str, hits: int) -> dict[str, object]:
    return {"session_id": sid, "hits": hits, "node": "node1"}


def test_session_id_parts() -> None:
    assert session_base(f"{BASE}-n1.a") == BASE and session_route(f"{BASE}-n1.a") == "a"
    assert session_base(BASE) == BASE and session_route(BASE) == ""


def test_store_node_suffix_and_route_changes_are_not_losses() -> None:
    b = Browser("127.0.0.1", 1, "/", 1.0)
    for hits, sid in enumerate([f"{BASE}-n1.a", f"{BASE}-n2.a", f"{BASE}-n2.b", f"{BASE}-n2.b"], 1):
        b.record(_answer(sid, hits), float(hits))
    assert (b.out.sessions_lost, b.out.updates_lost, b.out.backwards) == (0, 0, 0)
    assert b.out.route_changes == 1 and b.out.acked == 4 and b.out.done == [1.0, 2.0, 3.0, 4.0]


def test_a_new_session_loses_every_acknowledged_hit_of_the_old_one() -> None:
    b = Browser("127.0.0.1", 1, "/", 1.0)
    for hits in (1, 2, 3):
        b.record(_answer(BASE, hits), 0.0)
    b.record(_answer("F" * 32, 1), 0.0)
    assert b.out.sessions_lost == 1 and b.out.updates_lost == 3
    assert b.session_acked == 1 and b.out.problems


def test_a_count_that_does_not_go_up_is_a_step_back() -> None:
    b = Browser("127.0.0.1", 1, "/", 1.0)
    for hits in (1, 2, 2, 5):  # 5: failed requests may have been applied, that is fine
        b.record(_answer(BASE, hits), 0.0)
    assert b.out.backwards == 1 and b.out.sessions_lost == 0


def test_gap_and_recovery_around_a_fault() -> None:
    a, b = Outcome(done=[1.0, 2.0, 2.9, 3.5, 4.0]), Outcome(done=[1.0, 2.5, 4.5, 5.0])
    longest, served = _around([a, b], 3.0, 10.0)
    assert longest == pytest.approx(2.0)  # b waited from 2.5 to 4.5
    assert served == pytest.approx(1.5)  # every browser had an answer again 1.5 s after the fault
    assert _around([a, Outcome(done=[1.0])], 3.0, 10.0) == (None, None)  # one never served again
    assert _rate([0.5, 1.0, 1.5, 2.5], 0.0, 2.0) == pytest.approx(1.5)


def test_report_folds_the_browsers_and_flags_loss() -> None:
    cfg = load(DrillConfig, {"duration": "4"})
    clean = Outcome(requests=10, acked=10, done=[0.5, 1.5, 2.5, 3.5], latencies=[0.01] * 10,
                    failures=Counter({"http 502": 1}))
    report = _report(cfg, [clean], [(Fault("kill", "node1", 2.0), 2.0, "")], None)
    assert not report.lost and report.failures == {"http 502": 1} and report.rps == 1.0
    [fault] = report.faults
    assert (fault.longest_gap, fault.all_served_after, fault.error) == (1.0, 0.5, "")
    lossy = Outcome(requests=10, acked=10, updates_lost=1, done=[1.0])
    assert _report(cfg, [clean, lossy], [], None).lost


def test_fault_flags() -> None:
    cfg = load(DrillConfig, {"kills": ["node1@5", "store-n1@8"], "restarts": ["node1@10"],
                             "kill_cmds": ["pkill -STOP -f 'x@y'@3"], "stops": ["node2@11"]})
    assert [(f.action, f.target, f.at) for f in faults_of(cfg)] == [
        ("cmd", "pkill -STOP -f 'x@y'", 3.0), ("kill", "node1", 5.0), ("kill", "store-n1", 8.0),
        ("restart", "node1", 10.0), ("stop", "node2", 11.0)]
    with pytest.raises(ConfigError) as info:
        load(DrillConfig, {"kills": ["node1"]})
    assert str(info.value).startswith("--kill: expected TARGET@SECONDS")
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile([], 0.99) is None
