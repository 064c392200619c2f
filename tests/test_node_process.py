"""End to end: ``python sesh.py node`` as a real process, used over HTTP and stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable

import trio

from tests.http_client import HTTPTestClient, get
from tests.procs import ROOT, SeshProcess


async def test_node_process_serves_sessions_and_stops_on_sigterm(sesh: Callable[..., SeshProcess]) -> None:
    node = sesh("node", "--mode", "local", "--name", "node7", "--route", "z", "--port", "0")
    assert node.url == f"http://127.0.0.1:{node.port}/"
    first = await get(node.port, "/", [("Accept", "application/json")])
    data = json.loads(first.body)
    assert data["node"] == "node7" and data["session_id"].endswith(".z") and data["hits"] == 1
    cookie = first.headers_named(b"set-cookie")[0].split(b";")[0].decode()
    second = await get(node.port, "/", [("Accept", "application/json"), ("Cookie", cookie)])
    assert json.loads(second.body)["hits"] == 2

    # An idle keep-alive connection must not hold up the shutdown.
    idle = await HTTPTestClient.connect(node.port)
    assert (await idle.request("GET", "/sesh/status")).status == 200
    node.signal(signal.SIGTERM)
    with trio.fail_after(10):
        assert await idle.read_until_closed() == b""
    await idle.aclose()
    assert await trio.to_thread.run_sync(node.wait) == 0
    assert "SIGTERM received" in node.output()


def test_node_process_reports_a_busy_port(sesh: Callable[..., SeshProcess]) -> None:
    first = sesh("node", "--port", "0")
    done = subprocess.run(
        [sys.executable, str(ROOT / "sesh.py"), "node", "--port", str(first.port)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr
