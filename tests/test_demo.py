"""``sesh demo`` (what ``make demo`` runs): the whole topology starts, sessions follow requests across
nodes through the balancer, and SIGTERM stops every process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import trio

from tests.http_client import HTTPTestClient
from tests.procs import ROOT, free_port


def start_demo() -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "sesh.py"), "up", "--port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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


async def test_demo_topology_keeps_the_session_across_nodes() -> None:
    proc, url, lines = await trio.to_thread.run_sync(start_demo)
    try:
        started = "".join(lines)
        for role in ("store-n1", "store-n2", "node1", "node2", "balancer"):
            assert role in started
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        client = await HTTPTestClient.connect(port)
        cookie: list[tuple[str, str]] = []
        seen_nodes = set()
        session_ids = set()
        for hit in range(1, 9):
            reply = await client.request("GET", "/", [("Accept", "application/json"), *cookie])
            assert reply.status == 200
            data = json.loads(reply.body)
            assert data["hits"] == hit
            seen_nodes.add(data["node"])
            session_ids.add(data["session_id"])
            for value in reply.headers_named(b"set-cookie"):
                cookie = [("Cookie", value.split(b";")[0].decode())]
        await client.aclose()
        assert seen_nodes == {"node1", "node2"}
        assert len(session_ids) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
    assert proc.returncode == 0
    assert "sesh up: stopped" in out
