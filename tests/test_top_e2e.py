"""``sesh top`` against a real ``sesh up``: ``--json`` and ``--once`` show every member with the state
``sesh ctl`` gave it, a member down shows as down without stopping the dashboard, and the live
dashboard in a real terminal (tmux) kills node1 on ``k`` and shows it killed."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ROOT
from tests.references import reference
from tests.up_procs import UpProcess, pid_alive, run_sesh, sesh_cmd


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[UpProcess]:
    proc = UpProcess(tmp_path)
    yield proc
    proc.kill()


def top_json(topo: UpProcess, *args: str) -> dict[str, Any]:
    result = run_sesh("top", "--control-socket", topo.socket, "--json", *args)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def states(doc: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    views = doc["balancers"] + doc["nodes"] + doc["stores"]
    return {v["name"]: (v["state"], v["up"]) for v in views}


def test_ctl_stop_start_kill_as_seen_by_top_json_and_once(topo: UpProcess) -> None:
    everyone = {"balancer", "node1", "node2", "store-n1", "store-n2"}
    doc = top_json(topo)
    assert states(doc) == {name: ("running", True) for name in everyone}
    [balancer] = doc["balancers"]
    assert balancer["lbmethod"] == "bytraffic" and len(balancer["members"]) == 2
    assert {n["mode"] for n in doc["nodes"]} == {"msm"}
    assert all(n["sticky"] is False and len(n["store_nodes"]) == 2 for n in doc["nodes"])
    assert all(s["items"] >= 0 and s["connections"] >= 1 for s in doc["stores"])

    assert topo.ctl("stop", "node2").returncode == 0
    assert topo.ctl("kill", "store-n1").returncode == 0
    doc = top_json(topo)
    seen = states(doc)
    assert seen["node2"] == ("stopped", False) and seen["store-n1"] == ("killed", False)
    assert all(seen[name] == ("running", True) for name in everyone - {"node2", "store-n1"})
    # The nodes see their store node down too.
    node1 = next(n for n in doc["nodes"] if n["name"] == "node1")
    assert node1["error"] == ""

    # --once: one frame, every member on it, the down ones marked.
    frame = run_sesh("top", "--control-socket", topo.socket, "--once")
    assert frame.returncode == 0, frame.stderr
    lines = frame.stdout.splitlines()
    for name in everyone:
        assert any(name in line for line in lines), name
    assert any("node2" in line and "stopped" in line for line in lines)
    assert any("store-n1" in line and "killed" in line for line in lines)
    assert any("node1" in line and "running" in line for line in lines)

    # Without sesh up: the same members as plain targets; the stopped node shows as down.
    members = topo.members()
    plain = run_sesh("top", "--json", "--balancer", topo.url, "--store", members["store-n1"]["url"][12:],
                     "--store", members["store-n2"]["url"][12:])
    doc = json.loads(plain.stdout)
    up = {v["name"]: v["up"] for v in doc["nodes"] + doc["stores"]}
    assert up[members["store-n1"]["url"][12:]] is False and up[members["store-n2"]["url"][12:]] is True
    assert sorted(up[n["name"]] for n in doc["nodes"]) == [False, True]

    assert topo.ctl("start", "node2").returncode == 0
    assert states(top_json(topo))["node2"] == ("running", True)


def _wait_screen(session: str, predicate: Any, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                check=True).stdout
        if predicate(screen):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"the dashboard never showed what was expected:\n{screen}")


@pytest.mark.interop
def test_live_dashboard_in_tmux_kills_node1_on_k(topo: UpProcess, tmp_path: Path) -> None:
    tmux = reference("tmux")
    session = f"sesh-top-{topo.port}"
    command = " ".join([*sesh_cmd("top", "--control-socket", topo.socket), ";", "sleep", "5"])
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "100", "-y", "40", "-c", str(ROOT), command],
                   check=True)
    try:
        screen = _wait_screen(session, lambda s: "store-n2" in s and "q quit" in s)
        assert "node1" in screen and "running" in screen
        pid = topo.members()["node1"]["pid"]
        # Down selects the first member (the balancer), then node1.
        subprocess.run([tmux, "send-keys", "-t", session, "Down", "Down"], check=True)
        _wait_screen(session, lambda s: "[node1]" in s)
        # d drains node1 in the balancer through its manager (the token comes from sesh up); e enables it.
        member = topo.members()["node1"]["url"].rstrip("/").rsplit(":", 1)[1]
        subprocess.run([tmux, "send-keys", "-t", session, "d"], check=True)
        _wait_screen(session, lambda s: any(f":{member}" in line and "Drn" in line for line in s.splitlines()))
        subprocess.run([tmux, "send-keys", "-t", session, "e"], check=True)
        _wait_screen(session, lambda s: any(f":{member}" in line and "Init Ok" in line for line in s.splitlines()))
        subprocess.run([tmux, "send-keys", "-t", session, "k"], check=True)
        screen = _wait_screen(session, lambda s: any("node1" in line and "killed" in line for line in
                                                     s.splitlines() if "▶" in line))
        assert "kill node1: killed" in screen
        assert not pid_alive(pid)
        assert topo.members()["node1"]["state"] == "killed"
        assert any("node2" in line and "running" in line for line in screen.splitlines())
        subprocess.run([tmux, "send-keys", "-t", session, "q"], check=True)
        # q quits: the pane's shell goes on to the `sleep` after sesh top.
        for _ in range(100):
            current = subprocess.run([tmux, "list-panes", "-t", session, "-F", "#{pane_current_command}"],
                                     capture_output=True, text=True).stdout.strip()
            if current == "sleep":
                break
            time.sleep(0.1)
        assert current == "sleep"
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True)
