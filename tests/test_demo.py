"""``sesh demo`` (what ``make demo`` runs): ``sesh up`` and the dashboard in one process. The session
follows requests across nodes and survives a node kill; members' logs go to the log directory it names;
SIGTERM stops every process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import trio

from tests.http_client import HTTPTestClient
from tests.procs import ROOT, free_port
from tests.up_procs import pid_alive, run_sesh, sesh_cmd


def start_demo(tmp: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    sock = str(tmp / "demo.sock")
    proc = subprocess.Popen(
        sesh_cmd("demo", "--port", str(free_port()), "--control-socket", sock, "--log-dir", str(tmp / "logs")),
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        match = re.match(r"sesh up: ready, open (\S+) ", line)
        if match:
            return proc, match.group(1), lines
    proc.kill()
    raise AssertionError("the demo did not start:\n" + "".join(lines))


async def _reload(port: int, cookie: list[tuple[str, str]]) -> tuple[dict[str, object], list[tuple[str, str]]]:
    client = await HTTPTestClient.connect(port)
    try:
        reply = await client.request("GET", "/", [("Accept", "application/json"), *cookie])
    finally:
        await client.aclose()
    assert reply.status == 200
    for value in reply.headers_named(b"set-cookie"):
        cookie = [("Cookie", value.split(b";")[0].decode())]
    return json.loads(reply.body), cookie


async def test_demo_keeps_the_session_across_nodes_and_a_node_kill(tmp_path: Path) -> None:
    proc, url, lines = await trio.to_thread.run_sync(start_demo, tmp_path)
    sock = str(tmp_path / "demo.sock")
    try:
        started = "".join(lines)
        for role in ("store-n1", "store-n2", "node1", "node2", "balancer"):
            assert f"  {role} " in started
        assert f"logs: {tmp_path / 'logs'}" in started
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        cookie: list[tuple[str, str]] = []
        nodes, sessions = set(), set()
        for hit in range(1, 7):
            data, cookie = await _reload(port, cookie)
            assert data["hits"] == hit
            nodes.add(data["node"])
            sessions.add(str(data["session_id"]).split("-")[0])
        assert nodes == {"node1", "node2"}
        killed = await trio.to_thread.run_sync(run_sesh, "ctl", "--control-socket", sock, "kill", "node1")
        assert killed.stdout.strip() == "node1: killed"
        for hit in range(7, 11):
            data, cookie = await _reload(port, cookie)
            assert data["hits"] == hit and data["node"] == "node2"
            sessions.add(str(data["session_id"]).split("-")[0])
        assert len(sessions) == 1
        listing = await trio.to_thread.run_sync(run_sesh, "ctl", "--control-socket", sock, "--json", "list")
        pids = [m["pid"] for m in json.loads(listing.stdout)["members"] if m["pid"]]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
    assert proc.returncode == 0, out
    assert "sesh up: stopped" in out
    assert not any(pid_alive(pid) for pid in pids)
    # The members' lines went to the log directory, not through the dashboard.
    logs = tmp_path / "logs"
    assert "listening on" in (logs / "node2.log").read_text()
    assert "member killed member=node1" in (logs / "up.log").read_text()
    assert "listening on" not in out
