"""``sesh up`` and ``sesh ctl`` for real: the topology starts and prints every URL, ctl controls each
member, settings pass through to the roles, and a SIGKILLed ``sesh up`` leaves no process behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.http_client import HTTPTestClient
from tests.references import reference
from tests.up_procs import UpProcess, cmdline, exists, pid_alive, run_sesh


@pytest.fixture
def up() -> Iterator[list[UpProcess]]:
    started: list[UpProcess] = []
    yield started
    for proc in started:
        proc.kill()


async def _hits(port: int, n: int) -> tuple[set[str], set[str], list[int]]:
    client = await HTTPTestClient.connect(port)
    cookie: list[tuple[str, str]] = []
    nodes, sessions, hits = set(), set(), []
    try:
        for _ in range(n):
            reply = await client.request("GET", "/", [("Accept", "application/json"), *cookie])
            assert reply.status == 200, reply.body
            data = json.loads(reply.body)
            nodes.add(data["node"])
            sessions.add(data["session_id"].split("-")[0].split(".")[0])
            hits.append(data["hits"])
            for value in reply.headers_named(b"set-cookie"):
                cookie = [("Cookie", value.split(b";")[0].decode())]
    finally:
        await client.aclose()
    return nodes, sessions, hits


async def test_up_prints_every_member_and_ctl_stops_starts_and_kills_them(
    tmp_path: Path, up: list[UpProcess]
) -> None:
    topo = UpProcess(tmp_path, "--set", "node.max-inactive=600")
    up.append(topo)
    out = topo.output()
    info = topo.info()
    for name in ("balancer", "node1", "node2", "store-n1", "store-n2"):
        assert f"  {name} " in out  # the banner lists it with its URL
        assert f"\n{name}" in out or out.startswith(name)  # and its own log lines carry its name
    assert info["manager_token"] in out and topo.socket in out
    assert f"{topo.url.rstrip('/')}/status" in out
    members = topo.members()
    assert {m["state"] for m in members.values()} == {"running"}
    assert all(pid_alive(m["pid"]) for m in members.values())
    # The seed: a non-sticky bytraffic balancer alternates requests between the nodes; the session follows.
    nodes, sessions, hits = await _hits(topo.port, 6)
    assert nodes == {"node1", "node2"} and len(sessions) == 1 and hits == [1, 2, 3, 4, 5, 6]

    listing = topo.ctl("list")
    assert listing.returncode == 0
    assert listing.stdout.split("\n")[0].split() == ["NAME", "ROLE", "PID", "URL", "STATE"]
    scripted = json.loads(topo.ctl("--json", "list").stdout)
    assert [m["name"] for m in scripted["members"]] == list(members)
    pid = members["node1"]["pid"]
    assert topo.ctl("stop", "node1").stdout.strip() == "node1: stopped"
    assert not pid_alive(pid)
    assert "stopped" in topo.ctl("list").stdout.split("node1", 1)[1].split("\n")[0]
    nodes, _, _ = await _hits(topo.port, 4)
    assert nodes == {"node2"}
    assert topo.ctl("start", "node1").returncode == 0
    assert topo.members()["node1"]["state"] == "running"
    pid = topo.members()["store-n2"]["pid"]
    assert topo.ctl("kill", "store-n2").stdout.strip() == "store-n2: killed"
    assert not pid_alive(pid)
    assert topo.members()["store-n2"]["state"] == "killed"
    assert topo.ctl("restart", "store-n2").returncode == 0
    assert topo.members()["store-n2"]["state"] == "running"
    bad = topo.ctl("kill", "node9")
    assert bad.returncode == 1 and "no member 'node9'" in bad.stderr
    # The pass-through setting reached the node: its command line carries it.
    assert "--max-inactive=600" in cmdline(topo.members()["node1"]["pid"])

    all_pids = [m["pid"] for m in topo.members().values()]
    assert topo.terminate() == 0
    assert "sesh up: stopped" in topo.output()
    for name in ("node1", "node2", "balancer"):
        assert any(line.startswith(name) and "stopped" in line for line in topo.lines), name
    assert not any(pid_alive(pid) for pid in all_pids)
    assert not exists(topo.socket)


@pytest.mark.interop
async def test_sigkilled_up_leaves_no_process_behind(tmp_path: Path, up: list[UpProcess]) -> None:
    reference("memcached")
    topo = UpProcess(tmp_path, "--store", "memcached", "--sticky")
    up.append(topo)
    members = topo.members()
    assert "memcached" in cmdline(members["store-n1"]["pid"])
    nodes, sessions, hits = await _hits(topo.port, 4)  # sticky: one node, and sessions in real memcached
    assert len(nodes) == 1 and len(sessions) == 1 and hits == [1, 2, 3, 4]
    # sesh top reads real memcached with `stats` like any store.
    top = run_sesh("top", "--json", "--store", members["store-n1"]["url"].removeprefix("memcached://"),
                   "--store", members["store-n2"]["url"].removeprefix("memcached://"))
    stores = json.loads(top.stdout)["stores"]
    assert [s["up"] for s in stores] == [True, True] and sum(s["items"] for s in stores) >= 1
    pids = [m["pid"] for m in members.values()]
    assert all(pid_alive(pid) for pid in pids)
    topo.kill()  # SIGKILL: no chance to clean up; the children must die with it
    for _ in range(200):  # up to 10 s
        if not any(pid_alive(pid) for pid in pids):
            break
        await trio.sleep(0.05)
    assert [pid for pid in pids if pid_alive(pid)] == []


def test_up_errors_name_what_to_fix(tmp_path: Path) -> None:
    result = run_sesh("up", "--set", "node.lbmethod=bytraffic")
    assert result.returncode == 2
    assert "--set node.lbmethod: 'sesh node' has no setting 'lbmethod'" in result.stderr
    result = run_sesh("up", "--set", "store-n7.port=1")
    assert result.returncode == 2 and "no role or member 'store-n7'" in result.stderr
    config = tmp_path / "topology.toml"
    config.write_text("nodes = 3\n[set.balancer]\nlbmethod = 'rr'\n")
    result = run_sesh("up", "--config", str(config))
    assert result.returncode == 2
    assert "--set balancer.lbmethod:" in result.stderr and "byrequests|bytraffic|bybusyness" in result.stderr
    result = run_sesh("ctl", "--control-socket", str(tmp_path / "none.sock"), "list")
    assert result.returncode == 1 and "none.sock" in result.stderr
