"""``make bench-cluster``: what session replication costs, and whether the seed topology loses anything.

1. **Demo page req/s** through one node: local mode, then cluster with 2 and 3 members, ack (the default)
   and async. wrk (one thread, CONNECTIONS keep-alive connections, DURATION s) sends GET / with
   ``Accept: application/json`` and one of SESSIONS pre-created sessions in turn, so every request is a
   write that is replicated. The ratio is against the local row of the same run. CPU per request per
   process is (utime+stime from /proc) / requests, for the node under test and each peer.
2. **Replication lag** p50/p99 (end of request -> peer applied, from the acks), read from /sesh/status.
3. **The seed topology**: ``sesh balancer`` (non-sticky, bytraffic) in front of two cluster nodes with
   their defaults, 20 sequential browsers doing ROUNDS reloads each: sessions lost (id changed or hit count
   not +1), req/s, CPU per request per process. Run in ack (default) and async mode.
4. **State transfer**: a node joining a member that holds TRANSFER_SESSIONS sessions; seconds until it has
   them all (from its log).

Placement on a 2-core machine (with taskset): the node under test alone on CPU 0; wrk, the peers and
the balancer share CPU 1. In the topology run, the balancer is on CPU 0 and both nodes on CPU 1, the
browsers (this script) wherever the kernel puts them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from tests.http_client import HTTPTestClient  # noqa: E402
from tests.procs import SeshProcess, start_sesh  # noqa: E402

DURATION = 5
CONNECTIONS = 16
SESSIONS = 200
BROWSERS = 20
ROUNDS = 30
TRANSFER_SESSIONS = 10_000
NODE_CPU = "0"
LOAD_CPU = "1"
WRK_SCRIPT = """
local ids = {%s}
local i = 0
request = function()
  i = i + 1
  local headers = {["Accept"] = "application/json", ["Cookie"] = "JSESSIONID=" .. ids[(i %% #ids) + 1]}
  return wrk.format("GET", "/", headers)
end
"""
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _can_pin() -> bool:
    return bool(shutil.which("taskset")) and (os.cpu_count() or 1) > 1


def _pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if _can_pin() else argv


def _pin(pid: int, cpu: str) -> None:
    if _can_pin():
        subprocess.run(["taskset", "-a", "-pc", cpu, str(pid)], check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status(port: int) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/sesh/status")
    data: dict[str, object] = json.loads(conn.getresponse().read())["backend"]
    conn.close()
    return data


def _create_sessions(port: int, count: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    ids = []
    for _ in range(count):
        conn.request("GET", "/", headers={"Accept": "application/json"})
        response = conn.getresponse()
        response.read()
        cookie = response.getheader("set-cookie") or ""
        ids.append(cookie.split(";", 1)[0].partition("=")[2])
    conn.close()
    return ids


def _cluster_node(name: str, group: int, *extra: str) -> SeshProcess:
    return start_sesh("node", "--mode", "cluster", "--name", name, "--port", "0", "--receiver-port", "0",
                      "--mcast-port", str(group), *extra)


@dataclass
class Row:
    name: str
    rps: float
    latency: str
    errors: int
    cpu_us: list[float]  # per request, node under test first, then its peers
    lag: str = ""


def _wrk(port: int, ids: list[str], seconds: int) -> tuple[float, str, int, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % ", ".join(f'"{i}"' for i in ids))
    try:
        argv = ["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{seconds}s", "-s", script.name,
                f"http://127.0.0.1:{port}/"]
        out = subprocess.run(_pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=seconds + 60,
                             check=True).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    latency = re.search(r"Latency\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    errors = int(bad.group(1)) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return rps, latency, errors, total


def measure(name: str, members: int, send_options: str, seconds: int) -> Row:
    group = random.randint(20000, 60000)
    procs: list[SeshProcess] = []
    try:
        if members == 0:
            procs.append(start_sesh("node", "--mode", "local", "--name", "bench", "--port", "0"))
        else:
            for i in range(members):
                procs.append(_cluster_node(f"n{i + 1}", group, "--send-options", send_options))
        _pin(procs[0].proc.pid, NODE_CPU)
        for proc in procs[1:]:
            _pin(proc.proc.pid, LOAD_CPU)
        ids = _create_sessions(procs[0].port, SESSIONS)
        before = [cpu_seconds(p.proc.pid) for p in procs]
        rps, latency, errors, total = _wrk(procs[0].port, ids, seconds)
        cpu = [(cpu_seconds(p.proc.pid) - b) / max(1, total) * 1e6 for p, b in zip(procs, before, strict=True)]
        lag = ""
        if members and send_options == "ack":
            peers = _status(procs[0].port)["peers"]
            assert isinstance(peers, list)
            lag = " ".join(f"{p['name']}:{p['lag_p50_ms']}/{p['lag_p99_ms']}ms" for p in peers if p["lag_samples"])
        return Row(name, rps, latency, errors, cpu, lag)
    finally:
        for proc in procs:
            proc.kill()


@dataclass
class Browser:
    cookie: str | None = None
    base: str | None = None
    hits: int = 0
    lost: bool = False
    errors: int = 0
    nodes: set[str] = field(default_factory=set)


async def _browse(port: int, browsers: list[Browser], rounds: int) -> None:
    async def one(b: Browser) -> None:
        client = await HTTPTestClient.connect(port)
        try:
            for _ in range(rounds):
                headers = [("Accept", "application/json")]
                if b.cookie:
                    headers.append(("Cookie", b.cookie))
                reply = await client.request("GET", "/", headers)
                if reply.status != 200:
                    b.errors += 1
                    continue
                data = json.loads(reply.body)
                base = data["session_id"].split(".")[0]
                if b.base is not None and (base != b.base or data["hits"] != b.hits + 1):
                    b.lost = True
                b.base, b.hits = base, data["hits"]
                b.nodes.add(data["node"])
                for value in reply.headers_named(b"set-cookie"):
                    b.cookie = value.split(b";")[0].decode()
                if not reply.keep_alive:
                    await client.aclose()
                    client = await HTTPTestClient.connect(port)
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for b in browsers:
            nursery.start_soon(one, b)


def topology(send_options: str, rounds: int) -> tuple[str, float, int, int, list[float]]:
    group = random.randint(20000, 60000)
    nodes = [_cluster_node(f"n{i}", group, "--send-options", send_options, "--route", r)
             for i, r in ((1, "a"), (2, "b"))]
    balancer = start_sesh(
        "balancer", "--port", "0", "--lbmethod", "bytraffic",
        "--member", f"http://127.0.0.1:{nodes[0].port} route=a",
        "--member", f"http://127.0.0.1:{nodes[1].port} route=b",
    )
    procs = [balancer, *nodes]
    try:
        _pin(balancer.proc.pid, NODE_CPU)
        for node in nodes:
            _pin(node.proc.pid, LOAD_CPU)
        browsers = [Browser() for _ in range(BROWSERS)]
        before = [cpu_seconds(p.proc.pid) for p in procs]
        started = time.monotonic()
        trio.run(_browse, balancer.port, browsers, rounds)
        elapsed = time.monotonic() - started
        total = BROWSERS * rounds
        cpu = [(cpu_seconds(p.proc.pid) - b) / total * 1e6 for p, b in zip(procs, before, strict=True)]
        lost = sum(b.lost for b in browsers)
        errors = sum(b.errors for b in browsers)
        both = sum(len(b.nodes) == 2 for b in browsers)
        return (f"{send_options} ({both}/{BROWSERS} browsers saw both nodes)", total / elapsed, lost, errors, cpu)
    finally:
        for proc in procs:
            proc.kill()


def state_transfer(count: int) -> tuple[float, int]:
    group = random.randint(20000, 60000)
    first = _cluster_node("n1", group)
    second = None
    try:
        _create_sessions(first.port, count)
        second = _cluster_node("n2", group)
        for line in second.stderr_lines:
            match = re.search(r"state transfer done .*sessions=(\d+) seconds=([\d.]+)", line)
            if match:
                return float(match.group(2)), int(match.group(1))
        raise SystemExit("bench-cluster: the joining node did not report a state transfer")
    finally:
        first.kill()
        if second is not None:
            second.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=DURATION, help="wrk run per configuration")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="reloads per browser in the topology run")
    parser.add_argument("--transfer-sessions", type=int, default=TRANSFER_SESSIONS)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-cluster: wrk is not installed (make bench-deps)", file=sys.stderr)
        return 1
    rows = [measure("local (1 node)", 0, "", args.seconds)]
    for members in (2, 3):
        for mode in ("ack", "async"):
            rows.append(measure(f"cluster {members} members, {mode}", members, mode, args.seconds))
    print(f"sesh cluster benchmark: demo page, wrk -t1 -c{CONNECTIONS} {args.seconds}s per row, {SESSIONS} sessions "
          "in turn (every request changes its session and is replicated)")
    print("placement: " + (f"node under test on CPU {NODE_CPU}; wrk and the peers on CPU {LOAD_CPU}" if _can_pin()
                           else "no CPU pinning (taskset missing or one CPU)"))
    local = rows[0].rps
    print(f"{'configuration':<28}{'req/s':>9}{'vs local':>10}{'avg lat':>9}{'errors':>7}  "
          "CPU us/req (node, peers...)  lag p50/p99 per peer")
    for r in rows:
        cpu = ", ".join(f"{c:.0f}" for c in r.cpu_us)
        print(f"{r.name:<28}{r.rps:>9,.0f}{r.rps / local:>9.2f}x{r.latency:>9}{r.errors:>7}  {cpu:<27}  {r.lag}")
    print()
    print(f"seed topology: sesh balancer (non-sticky, bytraffic) -> 2 cluster nodes; {BROWSERS} sequential "
          f"browsers x {args.rounds} reloads; balancer on CPU {NODE_CPU}, nodes on CPU {LOAD_CPU}")
    print(f"{'send options':<44}{'req/s':>8}{'lost sessions':>15}{'errors':>8}  CPU us/req (balancer, n1, n2)")
    results = [topology(mode, args.rounds) for mode in ("ack", "async")]
    for name, rps, lost, errors, cpu in results:
        print(f"{name:<44}{rps:>8,.0f}{lost:>15}{errors:>8}  {', '.join(f'{c:.0f}' for c in cpu)}")
    print(f"ack vs async req/s in the topology: {results[0][1] / results[1][1]:.2f}x")
    print()
    seconds, got = state_transfer(args.transfer_sessions)
    print(f"state transfer: a joining node received {got} of {args.transfer_sessions} sessions in {seconds:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
