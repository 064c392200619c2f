"""``make bench-msm``: requests/s of the demo page through one ``sesh node`` in local mode, sticky msm and
non-sticky msm, with Debian's memcached and with ``sesh store`` as the store node, side by side, and the
per-request cost the session store adds.

Load: wrk (one thread, CONNECTIONS keep-alive connections) for DURATION seconds per configuration, GET /
with ``Accept: application/json``; every request carries one of SESSIONS pre-created sessions in turn, so
every request loads and/or changes a real session (the demo page counts hits: each request is a write)
and no two requests in flight share a session (so non-sticky mode does no conflict retries).
Per-request cost = 1/rps(mode) - 1/rps(local): the node's extra time per request at saturation; and
``cpu us/req``, the node processes' CPU time (user + system, from /proc) per request, which moves less
than requests/s when other work shares the machine.

Placement on a 2-core machine (with taskset): the node under test (one Python process, the bottleneck)
runs alone on CPU 0; wrk and the store node share CPU 1 (the store does a few microseconds of work per
request, wrk is C). Configurations run one after the other, each with fresh processes.

``--hot`` adds the hot-session row: HOT_CONNECTIONS connections share *one* cookie through ``sesh
balancer`` (byrequests, no stickysession) to two non-sticky msm nodes with two store nodes, so every
request races the others on the same session. A Lua ``response`` hook counts the 200s, the hit counts
answered twice (an acknowledged update that was then lost) and the 503s; afterwards one more request
reads the session's final count, which must cover every 200. Both nodes run on CPU 0, the balancer,
the stores and wrk on CPU 1.

Redis rows (kinds ``redis`` and ``redis-cluster``): Debian's redis-server as the store, one server
(sticky and non-sticky), and a local Redis Cluster of 3 primaries + 3 replicas (non-sticky) with the
default replica wait (``WAIT 1`` after every write) and without it (``--redis-wait-replicas 0``); the
Redis processes share CPU 1 with wrk.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_ticks, create_sessions  # noqa: E402
from tests.procs import SeshProcess, free_port, start_sesh, wait_for_port  # noqa: E402
from tests.redis_helpers import RedisCluster, RedisServer  # noqa: E402

DURATION = 5
CONNECTIONS = 16
SESSIONS = 200
NODE_CPU = "0"
LOAD_CPU = "1"
HOT_CONNECTIONS = 30
HOT_SCRIPT = """
local cookie = "%s"
local seen = {}
local threads = {}
ok, dups, unavailable, other, maxhits = 0, 0, 0, 0, 0
setup = function(thread) table.insert(threads, thread) end
request = function()
  return wrk.format("GET", "/", {["Accept"] = "application/json", ["Cookie"] = "JSESSIONID=" .. cookie})
end
response = function(status, headers, body)
  if status == 200 then
    local hits = tonumber(string.match(body, '"hits": (%%d+)'))
    ok = ok + 1
    if seen[hits] then dups = dups + 1 else seen[hits] = true end
    if hits > maxhits then maxhits = hits end
  elseif status == 503 then
    unavailable = unavailable + 1
  else
    other = other + 1
  end
end
done = function(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("HOT ok=%%d dups=%%d unavailable=%%d other=%%d max=%%d\\n",
      t:get("ok"), t:get("dups"), t:get("unavailable"), t:get("other"), t:get("maxhits")))
  end
end
"""
WRK_SCRIPT = """
local ids = {%s}
local i = 0
request = function()
  i = i + 1
  local headers = {["Accept"] = "application/json", ["Cookie"] = "JSESSIONID=" .. ids[(i %% #ids) + 1]}
  return wrk.format("GET", "/", headers)
end
"""


@dataclass
class Result:
    name: str
    rps: float
    latency: str
    errors: int
    counters: dict[str, int]
    cpu_us: float = float("nan")  # node CPU time (user + system) per request, all nodes of the row


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes so far: on a shared machine a steadier cost measure than
    requests/s, which also moves with what everything else on the CPUs is doing."""
    return sum(cpu_ticks(pid, reaped_children=False) for pid in pids) / os.sysconf("SC_CLK_TCK")


def _requests(out: str) -> int:
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def _pinned(cpu: str, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *argv]
    return argv


class Store:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.port = free_port()
        self._memcached: subprocess.Popen[bytes] | None = None
        self._sesh: SeshProcess | None = None
        self._redis: RedisServer | None = None
        if kind == "redis":
            self._redis = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-")), self.port)
            assert self._redis.proc is not None
            _pin(self._redis.proc.pid, LOAD_CPU)
        elif kind == "memcached":
            binary = shutil.which("memcached")
            if binary is None:
                raise SystemExit("bench-msm: Debian's memcached is not installed")
            user = ["-u", "root"] if os.geteuid() == 0 else []
            argv = [binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-t", "1", *user]
            self._memcached = subprocess.Popen(_pinned(LOAD_CPU, argv), stdout=subprocess.DEVNULL)
            wait_for_port(self.port)
        else:
            self._sesh = start_sesh("store", "--port", str(self.port))
            _pin(self._sesh.proc.pid, LOAD_CPU)

    def stop(self) -> None:
        if self._redis is not None:
            self._redis.kill()
            shutil.rmtree(self._redis.directory.parent, ignore_errors=True)
        if self._memcached is not None:
            self._memcached.kill()
            self._memcached.wait(10)
        if self._sesh is not None:
            self._sesh.kill()


def _pin(pid: int, cpu: str) -> None:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        subprocess.run(["taskset", "-a", "-pc", cpu, str(pid)], check=True, stdout=subprocess.DEVNULL)



def _backend_counters(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/sesh/status")
    status = json.loads(conn.getresponse().read())
    backend = status["backend"]
    conn.close()
    keys = ("writes", "superseded_writes", "backups", "backups_mirrored", "conflicts", "rebased_writes",
            "backup_queue_drops")
    counters = {k: backend[k] for k in keys if k in backend}
    for store in backend.get("store_nodes", ()):  # a Redis store's replica waits
        for key in ("replica_waits", "unreplicated_writes", "replica_timeouts"):
            if key in store:
                counters[key] = counters.get(key, 0) + store[key]
    for key, value in status.get("acknowledge", {}).items():  # the node host's counters, where it has them
        if key in ("serialized", "reruns", "unavailable", "queue_full"):
            counters[key] = value
    return counters


def _workers(pid: int) -> list[int]:
    """``pid`` and the worker processes it forked (``--workers``)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def _measure(name: str, node_args: list[str], seconds: int) -> Result:
    node = start_sesh("node", "--port", "0", "--name", "bench", *node_args)
    try:
        workers = "--workers" in " ".join(node_args)
        if not workers:  # several workers are there to use both cores: not pinned
            _pin(node.proc.pid, NODE_CPU)
        pids = _workers(node.proc.pid)
        ids = create_sessions(node.port, SESSIONS)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT % ", ".join(f'"{i}"' for i in ids))
        try:
            argv = ["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{seconds}s", "-s", script.name,
                    f"http://127.0.0.1:{node.port}/"]
            cpu = _cpu_seconds(pids)
            out = subprocess.run(_pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=seconds + 30,
                                 check=True).stdout
            cpu = _cpu_seconds(pids) - cpu
        finally:
            os.unlink(script.name)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        latency = re.search(r"Latency\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        socket_errors = re.search(r"Socket errors: (.*)", out)
        errors = int(bad.group(1)) if bad else 0
        if socket_errors:
            errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
        return Result(name, rps, latency, errors, _backend_counters(node.port), 1e6 * cpu / _requests(out))
    finally:
        node.kill()


def _hit(port: int, cookie: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Accept": "application/json"} | ({"Cookie": f"JSESSIONID={cookie}"} if cookie else {})
    conn.request("GET", "/", headers=headers)
    response = conn.getresponse()
    data: dict[str, Any] = json.loads(response.read())
    conn.close()
    return data


def _measure_hot(kind: str, seconds: int, node_args: list[str]) -> Result:
    """HOT_CONNECTIONS connections on one session through the balancer to two non-sticky nodes."""
    stores = [Store(kind), Store(kind)]
    procs: list[SeshProcess] = []
    try:
        flag = ",".join(f"n{i}:127.0.0.1:{s.port}" for i, s in enumerate(stores, 1))
        for name in ("hot1", "hot2"):
            node = start_sesh("node", "--port", "0", "--name", name, "--mode", "msm", "--no-sticky",
                              "--memcached-nodes", flag, *node_args)
            _pin(node.proc.pid, NODE_CPU)
            procs.append(node)
        # One process (not the default of one per CPU): it is pinned to the load's CPU below.
        balancer = start_sesh("balancer", "--port", "0", "--lbmethod", "byrequests", "--workers", "1",
                              *(f"--member=http://127.0.0.1:{n.port}" for n in procs))
        _pin(balancer.proc.pid, LOAD_CPU)
        procs.append(balancer)
        cookie = str(_hit(balancer.port, "")["session_id"])
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(HOT_SCRIPT % cookie)
        try:
            argv = ["wrk", "-t", "1", "-c", str(HOT_CONNECTIONS), "-d", f"{seconds}s", "-s", script.name,
                    f"http://127.0.0.1:{balancer.port}/"]
            pids = [p.proc.pid for p in procs[:2]]
            cpu = _cpu_seconds(pids)
            out = subprocess.run(_pinned(LOAD_CPU, argv), capture_output=True, text=True, timeout=seconds + 30,
                                 check=True).stdout
            cpu = _cpu_seconds(pids) - cpu
        finally:
            os.unlink(script.name)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        latency = re.search(r"Latency\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        hot = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", out.split("HOT", 1)[1].splitlines()[0])}
        final = int(_hit(balancer.port, cookie)["hits"]) - 1  # this read is one more hit
        counters: dict[str, int] = {f"{k}": v for k, v in hot.items()}
        # Every 200 was one increment the client was told about: the session must hold all of them
        # (final - 1: the request that created the session answered 200 before the run).
        counters["final"] = final
        counters["lost"] = max(0, hot["ok"] - (final - 1))
        for node in procs[:2]:
            for key, value in _backend_counters(node.port).items():
                counters[key] = counters.get(key, 0) + value
        return Result(f"hot session / {kind}", rps, latency, hot["other"], counters, 1e6 * cpu / _requests(out))
    finally:
        for proc in procs:
            proc.kill()
        for store in stores:
            store.stop()


def _measure_cluster(seconds: int, node_args: list[str]) -> list[Result]:
    """Non-sticky msm on a local 6-node Redis Cluster, with and without the replica wait."""
    cluster = RedisCluster(Path(tempfile.mkdtemp(prefix="bench-redis-cluster-")))
    try:
        for server in cluster.servers:
            assert server.proc is not None
            _pin(server.proc.pid, LOAD_CPU)
        flag = ",".join(cluster.urls[:3])
        rows = []
        for label, extra in (("wait 1 replica", []), ("no wait", ["--redis-wait-replicas", "0"])):
            argv = ["--mode", "msm", "--no-sticky", "--memcached-nodes", flag, *extra, *node_args]
            rows.append(_measure(f"msm non-sticky / redis cluster, {label}", argv, seconds))
        return rows
    finally:
        cluster.stop()
        shutil.rmtree(cluster.servers[0].directory.parent, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=DURATION, help="wrk run per configuration")
    parser.add_argument("--hot", action="store_true", help="add the hot-session rows (one cookie, 30 connections)")
    parser.add_argument("--kinds", default="memcached,sesh-store,redis,redis-cluster",
                        help="store kinds to run, comma-separated (memcached, sesh-store, redis, redis-cluster)")
    parser.add_argument("--rows", default="sticky,non-sticky-1,non-sticky-2",
                        help="msm rows to run: sticky, non-sticky-1, non-sticky-2 (stores), hot")
    parser.add_argument("--node-workers", type=int, default=1,
                        help="also run the non-sticky rows with `sesh node --workers N` (not pinned: both cores)")
    parser.add_argument("--node-arg", dest="node_args", action="append", default=[],
                        help="extra flag for every msm node (repeatable), e.g. --node-arg=--locking-mode=auto")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    args.rows = set(args.rows.split(","))
    if shutil.which("wrk") is None:
        print("bench-msm: wrk is not installed", file=sys.stderr)
        return 1
    results = [_measure("local", ["--mode", "local"], args.seconds)]
    for kind in kinds:
        if kind == "redis-cluster":
            results.extend(_measure_cluster(args.seconds, args.node_args))
            continue
        # One store node, then two: with two, non-sticky mode also writes the backup copy on the other.
        for sticky, count in (("--sticky", 1), ("--no-sticky", 1), ("--no-sticky", 2)):
            row = "sticky" if sticky == "--sticky" else f"non-sticky-{count}"
            if row not in args.rows or (kind == "redis" and count > 1):  # Redis is one store (it replicates)
                continue
            stores = [Store(kind) for _ in range(count)]
            try:
                label = f"msm {'sticky' if sticky == '--sticky' else 'non-sticky'}{' 2 stores' * (count > 1)} / {kind}"
                flag = ",".join(f"n{i}:127.0.0.1:{store.port}" for i, store in enumerate(stores, 1))
                if kind == "redis":
                    flag = f"redis://127.0.0.1:{stores[0].port}"
                node_args = ["--mode", "msm", sticky, "--memcached-nodes", flag, *args.node_args]
                results.append(_measure(label, node_args, args.seconds))
                if sticky == "--no-sticky" and args.node_workers > 1:
                    results.append(_measure(f"{label}, {args.node_workers} workers",
                                            [*node_args, "--workers", str(args.node_workers)], args.seconds))
            finally:
                for store in stores:
                    store.stop()
    if args.hot or "hot" in args.rows:
        results.extend(_measure_hot(kind, args.seconds, args.node_args) for kind in kinds if "redis" not in kind)
    pinned = shutil.which("taskset") and (os.cpu_count() or 1) > 1
    print(f"sesh msm benchmark: demo page, wrk -t1 -c{CONNECTIONS} {args.seconds}s per row, "
          f"{SESSIONS} sessions in turn (every request changes its session)")
    print("placement: " + (f"node on CPU {NODE_CPU}; wrk and the store node on CPU {LOAD_CPU}" if pinned
                           else "no CPU pinning (taskset missing or one CPU)")
          + ("; rows with workers: the node's workers not pinned, cpu us/req is all of them" if args.node_workers > 1
             else ""))
    local = results[0].rps
    print(f"{'configuration':<44}{'req/s':>10}{'vs local':>10}{'+us/req':>10}{'cpu us/req':>11}{'avg lat':>10}"
          f"{'errors':>8}  counters")
    for r in results:
        extra = (1e6 / r.rps - 1e6 / local) if r.rps else float("nan")
        counters = " ".join(f"{k}={v}" for k, v in r.counters.items())
        print(f"{r.name:<44}{r.rps:>10,.0f}{r.rps / local:>9.2f}x{extra:>10.0f}{r.cpu_us:>11.0f}{r.latency:>10}"
              f"{r.errors:>8}  "
              f"{counters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
