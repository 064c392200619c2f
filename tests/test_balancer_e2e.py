"""End-to-end: real ``python sesh.py balancer`` and ``python sesh.py node`` processes."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from tests.procs import ROOT, SeshProcess

Start = Callable[..., SeshProcess]
CONNECTIONS = 24  # all on one worker by chance: 1 in 2**23


def request(port: int, path: str = "/", cookie: str = "") -> tuple[int, dict[str, object], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Accept": "application/json"}
        if cookie:
            headers["Cookie"] = cookie
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        set_cookie = response.getheader("set-cookie") or ""
        return response.status, json.loads(body) if response.status == 200 else {}, set_cookie
    finally:
        conn.close()


def test_sticky_sessions_survive_until_their_node_dies(sesh: Start) -> None:
    node_a = sesh("node", "--mode", "local", "--port", "0", "--route", "a", "--name", "a")
    node_b = sesh("node", "--mode", "local", "--port", "0", "--route", "b", "--name", "b")
    balancer = sesh(
        "balancer", "--port", "0", "--stickysession", "JSESSIONID|jsessionid",
        "--member", f"http://127.0.0.1:{node_a.port} route=a",
        "--member", f"http://127.0.0.1:{node_b.port} route=b",
    )
    balancer.wait_for_line("balancer-manager token")
    status, page, set_cookie = request(balancer.port)
    assert status == 200
    session_id = str(page["session_id"])
    route = str(page["route"])
    assert session_id.endswith("." + route) and set_cookie.startswith(f"JSESSIONID={session_id}")
    for hits in (2, 3, 4):
        status, page, _ = request(balancer.port, cookie=f"JSESSIONID={session_id}")
        assert (page["route"], page["hits"], page["session_id"]) == (route, hits, session_id)
    status, page, _ = request(balancer.port, f"/;jsessionid={session_id}")
    assert (page["route"], page["hits"]) == (route, 5)
    (node_a if route == "a" else node_b).kill()
    status, page, _ = request(balancer.port, cookie=f"JSESSIONID={session_id}")
    assert status == 200 and page["route"] != route  # failed over; local sessions do not follow
    manager = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=10)
    manager.request("GET", "/balancer-manager", headers={"Accept": "application/json"})
    doc = json.loads(manager.getresponse().read())
    manager.close()
    dead = next(m for m in doc["balancer"]["members"] if m["route"] == route)
    assert dead["flags"] == "E"
    balancer.signal(signal.SIGTERM)
    assert balancer.wait() == 0


def accepted_by(pids: list[int], port: int) -> dict[int, int]:
    """How many established connections to ``port`` each process holds (its sockets' inodes, looked
    up in /proc/net/tcp)."""
    established: set[str] = set()
    with open("/proc/net/tcp") as table:
        for row in list(table)[1:]:
            fields = row.split()
            if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "01":
                established.add(fields[9])
    counts = {}
    for pid in pids:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        counts[pid] = len(inodes & established)
    return counts


def test_several_workers_share_the_port_and_the_scoreboard(sesh: Start) -> None:
    node = sesh("node", "--mode", "local", "--port", "0", "--route", "a", "--name", "a")
    balancer = sesh(
        "balancer", "--port", "0", "--workers", "2", "--manager-token", "t",
        "--member", f"http://127.0.0.1:{node.port} route=a",
    )
    assert sum("listening on" in line for line in balancer.stdout_lines) == 1
    parent = balancer.proc.pid
    with open(f"/proc/{parent}/task/{parent}/children") as children:
        workers = [parent, *map(int, children.read().split())]
    assert len(workers) == 2
    # Connections held open after one request each: the kernel spreads them over both workers'
    # sockets (SO_REUSEPORT hashes each connection's ports), so each worker holds some of them.
    clients = []
    for _ in range(CONNECTIONS):
        conn = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=10)
        conn.request("GET", "/", headers={"Accept": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        clients.append(conn)
    held = accepted_by(workers, balancer.port)
    for conn in clients:
        conn.close()
    assert sum(held.values()) == CONNECTIONS and all(held.values()), held
    manager = http.client.HTTPConnection("127.0.0.1", balancer.port, timeout=10)
    manager.request("GET", "/balancer-manager", headers={"Accept": "application/json"})
    doc = json.loads(manager.getresponse().read())
    manager.close()
    assert doc["balancer"]["members"][0]["elected"] == CONNECTIONS  # summed over both workers' columns
    assert doc["manager"]["workers"] == 2 and doc["manager"]["worker"] in (0, 1)
    balancer.signal(signal.SIGTERM)
    assert balancer.wait() == 0


def test_workers_default_to_one_per_cpu_and_a_busy_port_is_refused(sesh: Start) -> None:
    node = sesh("node", "--mode", "local", "--port", "0")
    member = f"http://127.0.0.1:{node.port}"
    balancer = sesh("balancer", "--port", "0", "--manager-token", "t", "--member", member)
    expected = min(len(os.sched_getaffinity(0)), 16)
    shown = f"{expected} worker{'s' if expected > 1 else ''}, auto: one per CPU"
    assert shown in balancer.wait_for_line("listening on")
    with open(f"/proc/{balancer.proc.pid}/task/{balancer.proc.pid}/children") as children:
        assert len(children.read().split()) == expected - 1
    # SO_REUSEPORT alone would let a second balancer join the first one's port and take half its traffic.
    for workers in ("1", "2"):
        second = subprocess.run(
            [sys.executable, str(ROOT / "sesh.py"), "balancer", "--port", str(balancer.port), "--workers", workers,
             "--manager-token", "t", "--member", member],
            capture_output=True, text=True, timeout=20,
        )
        assert second.returncode == 1 and f"cannot listen on 127.0.0.1:{balancer.port}" in second.stderr
    pinned = subprocess.run(
        ["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-c",
         "from sesh.net.workers import auto_workers; print(auto_workers(16))"],
        capture_output=True, text=True, timeout=20, cwd=ROOT,
    )
    assert pinned.stdout.strip() == "1"  # the affinity mask counts, not the machine's cores
    balancer.signal(signal.SIGTERM)
    assert balancer.wait() == 0


def test_config_errors_name_the_flag() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "sesh.py"), "balancer", "--member", "http://127.0.0.1:1 loadfactor=0"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 2 and "--member" in out.stderr and "loadfactor" in out.stderr
    out = subprocess.run(
        [sys.executable, str(ROOT / "sesh.py"), "balancer", "--member", "http://127.0.0.1:1 status=+Q"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 2 and "status" in out.stderr


def node_requests(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/sesh/status")
        requests = json.loads(conn.getresponse().read())["requests"]
        assert isinstance(requests, int)
        return requests
    finally:
        conn.close()


def status_of(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_dot_segments_never_reach_the_node_outside_the_mount(sesh: Start) -> None:
    node = sesh("node", "--mode", "local", "--port", "0", "--route", "a", "--name", "a")
    balancer = sesh(
        "balancer", "--port", "0", "--path", "/pub", "--manager-token", "t",
        "--member", f"http://127.0.0.1:{node.port}/public route=a",
    )
    for path in ("/pub/../sesh/status", "/pub/%2e%2e/sesh/status", "/pub/.%2e/sesh/status",
                 "/pub/./../sesh/status", "/pub//../sesh/status", "/pub/..%2fsesh/status"):
        assert status_of(balancer.port, path) == 404, path
    assert status_of(balancer.port, "/pub/../../sesh/status") == 400
    assert node_requests(node.port) == 1  # only this status request: no escape reached the node
    status_of(balancer.port, "/pub/x/../y")  # inside the mount: proxied, as /public/y
    assert node_requests(node.port) == 3
    balancer.signal(signal.SIGTERM)
    assert balancer.wait() == 0
