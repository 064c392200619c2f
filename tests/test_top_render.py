"""``sesh top``'s pure half: a snapshot rendered to text, with a member down and one selected."""

from __future__ import annotations

import json

from rich.console import Console

from sesh.top.render import render, short, size
from sesh.top.snapshot import (
    BalancerMemberView,
    BalancerView,
    MemberView,
    NodeView,
    Snapshot,
    StoreNodeView,
    StoreView,
)


def _snapshot() -> Snapshot:
    members = (
        BalancerMemberView("http://127.0.0.1:8081", "", "Init Ok", "", True, 120, 1, 0, 2048, 4096),
        BalancerMemberView("http://127.0.0.1:8082", "", "Init Err", "", False, 7, 0, 0, 10, 20),
    )
    stores = (StoreNodeView("n1", "127.0.0.1:11211", True, 0), StoreNodeView("n2", "127.0.0.1:11212", False, 3))
    return Snapshot(
        time=1.0, source="sesh up (/tmp/s.sock)", up_error="", manager_token="secret",
        balancers=(BalancerView("balancer", "http://127.0.0.1:8000/", True, "", "running", "bytraffic", "(None)",
                                members),),
        nodes=(
            NodeView("node1", "http://127.0.0.1:8081/", True, "", "running", "msm", False, 0, 130, 12.5, None, 2, 1,
                     stores),
            NodeView("node2", "http://127.0.0.1:8082/", False, "connect: refused", "killed", "", None, 0, 0, None,
                     None, 0, 0, ()),
        ),
        stores=(
            StoreView("store-n1", "127.0.0.1:11211", True, "", "running", 10, 2900, 0.5, 0, 4, 400, 33.3),
            StoreView("store-n2", "127.0.0.1:11212", False, "connect: refused", "stopped", 0, 0, None, 0, 0, 0, None),
        ),
        members=(MemberView("node1", "node", 42, "http://127.0.0.1:8081/", "running"),),
    )


def _text(snap: Snapshot, **kwargs: object) -> list[str]:
    console = Console(width=100, record=True, color_system=None)
    console.print(render(snap, **kwargs))  # type: ignore[arg-type]
    return [line.rstrip() for line in console.export_text().splitlines()]


def test_every_member_is_on_the_frame_and_the_down_ones_say_why() -> None:
    lines = _text(_snapshot())
    assert "sesh top — sesh up (/tmp/s.sock)" in lines[0]
    assert any("bytraffic" in line and "sticky -" in line for line in lines)
    # The balancer's member rows name the node behind each member URL.
    row = next(line for line in lines if line.split()[:1] == ["node2"] and "Init" in line)
    assert "Init Err" in row and row.split()[-5:] == ["7", "0", "0", "10B", "20B"]
    node1 = next(line for line in lines if line.split()[:2] == ["node1", "running"])
    assert node1.split()[1:5] == ["running", "msm", "0", "12.5"] and "n1 n2" in node1
    assert any(line.split()[:2] == ["node2", "killed"] for line in lines)
    assert "node2: connect: refused" in lines
    store1 = next(line for line in lines if line.split()[:1] == ["store-n1"])
    assert store1.split()[1:9] == ["running", "10", "2.8K", "50%", "0", "4", "33.3", ":11211"]
    assert next(line for line in lines if line.split()[:1] == ["store-n2"]).split()[1] == "stopped"
    assert "store-n2: connect: refused" in lines
    assert not any("q quit" in line for line in lines)  # --once: no key help


def test_live_frame_marks_the_selection_and_shows_the_keys_and_message() -> None:
    lines = _text(_snapshot(), selected="node2", message="kill node2: killed", live=True)
    assert any(line.startswith("▶") and "node2" in line for line in lines)
    assert not any(line.startswith("▶") and "node2" not in line for line in lines)
    assert "[node2]" in lines[-2] and "k kill" in lines[-2]
    assert lines[-1] == "kill node2: killed"


def test_the_json_snapshot_keeps_the_token_out() -> None:
    doc = _snapshot().as_dict()
    assert "manager_token" not in doc and "secret" not in json.dumps(doc)
    assert doc["nodes"][1]["up"] is False and doc["nodes"][1]["state"] == "killed"


def test_sizes_and_addresses() -> None:
    assert [size(0), size(1023), size(2048), size(5 * 1024**2)] == ["0B", "1023B", "2.0K", "5.0M"]
    assert short("http://127.0.0.1:8081/") == ":8081" and short("memcached://10.0.0.2:11211") == "10.0.0.2:11211"


def test_a_redis_store_shows_its_role_and_link() -> None:
    snap = _snapshot()
    redis = (StoreView("store-r1", "redis://127.0.0.1:7001", True, "", "running", 3, 2_000_000, 1.0, 0, 4, 90, 2.0,
                       "master"),
             StoreView("store-r4", "redis://127.0.0.1:7004", True, "", "running", 3, 2_000_000, None, 0, 4, 90, 2.0,
                       "replica, link down"))
    lines = _text(Snapshot(**{**{f: getattr(snap, f) for f in snap.__dataclass_fields__}, "stores": redis}))
    assert next(line for line in lines if line.split()[:1] == ["store-r1"]).split()[1:3] == ["running", "master"]
    assert "replica, link down" in next(line for line in lines if line.split()[:1] == ["store-r4"])
