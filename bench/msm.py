"""``make bench-msm``: requests/s of the demo page through one ``sesh node`` in local mode, sticky msm and
non-sticky msm, with Debian's memcached and with ``sesh store`` as the store node, side by side, and the
per-request cost the session store adds.

Load: wrk (one thread, CONNECTIONS keep-alive connections) for DURATION seconds per configuration, GET /
with ``Accept: application/json``; every request carries one of SESSIONS pre-created sessions in turn, so
every request loads and/or changes a real session (the demo page counts hits: each request is a write)
and no two requests in flight share a session (so non-sticky mode does no conflict retries).
Per-request cost = 1/rps(mode) - 1/rps(local): the node's extra time per request at saturation.

Placement on a 2-core machine (with taskset): the node under test (one Python process, the bottleneck)
runs alone on CPU 0; wrk and the store node share CPU 1 (the store does a few microseconds of work per
request, wrk is C). Configurations run one after the other, each with fresh processes. CPU per request:
utime + stime of the node and of the store node (from /proc) and of wrk (its rusage) over the wrk run,
divided by the requests wrk completed.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import CpuMeter, parse_wrk, run_measured, us_per_request  # noqa: E402
from tests.procs import SeshProcess, free_port, start_sesh, wait_for_port  # noqa: E402

DURATION = 5
CONNECTIONS = 16
SESSIONS = 200
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


@dataclass
class Result:
    name: str
    rps: float
    latency: str
    errors: int
    counters: dict[str, int]
    cpu_us: dict[str, float]  # CPU per request of node, store and wrk


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
        if kind == "memcached":
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

    @property
    def pid(self) -> int:
        if self._memcached is not None:
            return self._memcached.pid
        assert self._sesh is not None
        return self._sesh.proc.pid

    def stop(self) -> None:
        if self._memcached is not None:
            self._memcached.kill()
            self._memcached.wait(10)
        if self._sesh is not None:
            self._sesh.kill()


def _pin(pid: int, cpu: str) -> None:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        subprocess.run(["taskset", "-a", "-pc", cpu, str(pid)], check=True, stdout=subprocess.DEVNULL)


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


def _backend_counters(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/sesh/status")
    backend = json.loads(conn.getresponse().read())["backend"]
    conn.close()
    keys = ("writes", "superseded_writes", "backups", "conflicts", "rebased_writes", "backup_queue_drops")
    return {k: backend[k] for k in keys if k in backend}


def _measure(name: str, node_args: list[str], seconds: int, store: Store | None = None) -> Result:
    node = start_sesh("node", "--port", "0", "--name", "bench", *node_args)
    try:
        _pin(node.proc.pid, NODE_CPU)
        ids = _create_sessions(node.port, SESSIONS)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT % ", ".join(f'"{i}"' for i in ids))
        try:
            argv = ["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{seconds}s", "-s", script.name,
                    f"http://127.0.0.1:{node.port}/"]
            meter = CpuMeter({"node": node.proc.pid, **({"store": store.pid} if store else {})})
            meter.start()
            out, wrk_cpu = run_measured(_pinned(LOAD_CPU, argv), timeout=seconds + 30)
            cpu = meter.stop()[0]
        finally:
            os.unlink(script.name)
        wrk = parse_wrk(out)
        latency = re.search(r"Latency\s+(\S+)", out).group(1)  # type: ignore[union-attr]
        cpu_us = {k: us_per_request(v, wrk.requests) for k, v in {**cpu, "wrk": wrk_cpu}.items()}
        return Result(name, wrk.rps, latency, wrk.errors, _backend_counters(node.port), cpu_us)
    finally:
        node.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=DURATION, help="wrk run per configuration")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-msm: wrk is not installed", file=sys.stderr)
        return 1
    results = [_measure("local", ["--mode", "local"], args.seconds)]
    for kind in ("memcached", "sesh-store"):
        for sticky in ("--sticky", "--no-sticky"):
            store = Store(kind)
            try:
                label = f"msm {'sticky' if sticky == '--sticky' else 'non-sticky'} / {kind}"
                node_args = ["--mode", "msm", sticky, "--memcached-nodes", f"n1:127.0.0.1:{store.port}"]
                results.append(_measure(label, node_args, args.seconds, store))
            finally:
                store.stop()
    pinned = shutil.which("taskset") and (os.cpu_count() or 1) > 1
    print(f"sesh msm benchmark: demo page, wrk -t1 -c{CONNECTIONS} {args.seconds}s per row, "
          f"{SESSIONS} sessions in turn (every request changes its session)")
    print("placement: " + (f"node on CPU {NODE_CPU}; wrk and the store node on CPU {LOAD_CPU}" if pinned
                           else "no CPU pinning (taskset missing or one CPU)"))
    local = results[0].rps
    print(f"{'configuration':<30}{'req/s':>10}{'vs local':>10}{'+us/req':>10}{'avg lat':>10}{'errors':>8}"
          f"  CPU us/req: {'node':>5}{'store':>6}{'wrk':>5}  counters")
    for r in results:
        extra = (1e6 / r.rps - 1e6 / local) if r.rps else float("nan")
        counters = " ".join(f"{k}={v}" for k, v in r.counters.items())
        cpu = r.cpu_us
        store_cpu = f"{cpu['store']:>6.0f}" if "store" in cpu else f"{'-':>6}"
        print(f"{r.name:<30}{r.rps:>10,.0f}{r.rps / local:>9.2f}x{extra:>10.0f}{r.latency:>10}{r.errors:>8}"
              f"  {'':>11} {cpu['node']:>5.0f}{store_cpu}{cpu['wrk']:>5.0f}  {counters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
