"""``make bench-store``: Debian's memcached (-t 1) and ``sesh store`` side by side under the same
memcaslap load, printing ops/s, latency (p50, p99), the ratio sesh/memcached and resident memory per
stored item.

Load: memcaslap (libmemcached's C load generator), 90% get / 10% set, 2 KiB values, 50 connections
with one request in flight each, for DURATION seconds per server, after 10,000 keys were preloaded.
Placement on a 2-core machine: the server under test is pinned to CPU 0 and memcaslap (one thread)
to CPU 1 with taskset, so neither steals the other's core; the two servers run one after the other.
memcaslap reports latency as a log2 histogram; p50/p99 are interpolated inside the bucket that holds
them (so they are estimates to within that bucket's width). CPU per operation: utime + stime of the
server (from /proc) and of memcaslap (from its rusage) over the load, divided by the operations done.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import CpuMeter, run_measured, us_per_request  # noqa: E402
from tests.procs import free_port, wait_for_port  # noqa: E402

PRELOAD_KEYS = 10_000
VALUE_SIZE = 2048
CONNECTIONS = 50
MEMORY_MB = 1024  # large enough that neither server evicts during the run
SERVER_CPU = "0"
LOAD_CPU = "1"
SLAP_CONFIG = """key
32 32 1
value
2048 2048 1
cmd
0 0.1
1 0.9
"""


@dataclass
class Result:
    name: str
    ops_per_second: float
    p50_us: float
    p99_us: float
    rss_per_item: float
    server_us_per_op: float
    slap_us_per_op: float


def _pinned(cpu: str, argv: list[str]) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *argv]
    return argv


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _preload(port: int) -> None:
    value = b"p" * VALUE_SIZE
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for start in range(0, PRELOAD_KEYS, 500):
            batch = b"".join(
                b"set preload:%06d 0 0 %d noreply\r\n%s\r\n" % (i, VALUE_SIZE, value)
                for i in range(start, min(start + 500, PRELOAD_KEYS))
            )
            sock.sendall(batch)
        sock.sendall(b"mn\r\n")
        data = b""
        while not data.endswith(b"MN\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed during preload")
            data += chunk


def _percentile(histogram: dict[int, int], fraction: float) -> float:
    total = sum(histogram.values())
    target = total * fraction
    seen = 0
    for exponent in sorted(histogram):
        count = histogram[exponent]
        if count and seen + count >= target:
            inside = (target - seen) / count
            return float(2 ** (exponent + inside))
        seen += count
    return math.nan


def _parse_slap(output: str) -> tuple[float, float, float, int]:
    match = re.search(r"Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)", output)
    if not match:
        raise RuntimeError(f"cannot read memcaslap's output:\n{output[-2000:]}")
    total = output[output.rindex("Total Statistics") :]
    histogram: dict[int, int] = {}
    for row in re.finditer(r"^\s+(\d+):((?:\s+\d+)+)\s*$", total.split("cmd_get")[0], re.MULTILINE):
        base = int(row.group(1))
        for offset, count in enumerate(row.group(2).split()):
            histogram[base + offset] = int(count)
    return float(match.group(3)), _percentile(histogram, 0.50), _percentile(histogram, 0.99), int(match.group(2))


def _load(port: int, seconds: int, config: Path) -> tuple[str, float]:
    slap = shutil.which("memcaslap") or shutil.which("memaslap")
    if slap is None:
        raise SystemExit("memcaslap is not installed (Debian: libmemcached-tools)")
    argv = [
        slap, "-s", f"127.0.0.1:{port}", "-F", str(config), "-T", "1", "-c", str(CONNECTIONS),
        "-w", "1k", "-X", str(VALUE_SIZE), "-t", f"{seconds}s", "-S", f"{seconds}s",
    ]
    return run_measured(_pinned(LOAD_CPU, argv), timeout=seconds + 60, check=False)


def _measure(name: str, argv: list[str], port: int, seconds: int, config: Path) -> Result:
    proc = subprocess.Popen(_pinned(SERVER_CPU, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, timeout=20)
        time.sleep(0.2)
        empty = _rss_bytes(proc.pid)
        _preload(port)
        time.sleep(0.2)
        per_item = (_rss_bytes(proc.pid) - empty) / PRELOAD_KEYS
        meter = CpuMeter({"server": proc.pid})
        meter.start()
        output, slap_cpu = _load(port, seconds, config)
        server_cpu = meter.stop()[0]["server"]
        ops, p50, p99, total = _parse_slap(output)
        return Result(name, ops, p50, p99, per_item, us_per_request(server_cpu, total),
                      us_per_request(slap_cpu, total))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="load duration per server (default 10)")
    args = parser.parse_args()
    memcached = shutil.which("memcached")
    if memcached is None:
        raise SystemExit("memcached is not installed (Debian: memcached)")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "slap.cfg"
        config.write_text(SLAP_CONFIG)
        user = ["-u", "root"] if os.geteuid() == 0 else []
        mc_port = free_port()
        reference = _measure(
            "memcached -t 1",
            [memcached, "-t", "1", "-U", "0", "-l", "127.0.0.1", "-p", str(mc_port), "-m", str(MEMORY_MB), *user],
            mc_port, args.seconds, config,
        )
        sesh_port = free_port()
        ours = _measure(
            "sesh store",
            [sys.executable, str(ROOT / "sesh.py"), "store", "-p", str(sesh_port), "-m", str(MEMORY_MB)],
            sesh_port, args.seconds, config,
        )
    placement = (
        f"server pinned to CPU {SERVER_CPU}, memcaslap (1 thread) pinned to CPU {LOAD_CPU}"
        if shutil.which("taskset") and (os.cpu_count() or 1) > 1
        else "no CPU pinning (taskset missing or one CPU)"
    )
    print(f"sesh store benchmark: memcaslap 90% get / 10% set, {VALUE_SIZE} B values, {CONNECTIONS} connections, "
          f"1 request in flight each, {args.seconds} s per server; {PRELOAD_KEYS} keys preloaded")
    print(f"placement: {placement}")
    print(f"{'server':<16}{'ops/s':>12}{'p50 us':>10}{'p99 us':>10}{'RSS/item B':>13}{'srv us/op':>11}"
          f"{'slap us/op':>12}")
    for r in (reference, ours):
        print(f"{r.name:<16}{r.ops_per_second:>12,.0f}{r.p50_us:>10.0f}{r.p99_us:>10.0f}{r.rss_per_item:>13,.0f}"
              f"{r.server_us_per_op:>11.1f}{r.slap_us_per_op:>12.1f}")
    print(f"ratio sesh/memcached: ops/s {ours.ops_per_second / reference.ops_per_second:.2f}x, "
          f"RSS per item {ours.rss_per_item / reference.rss_per_item:.2f}x, "
          f"server CPU per op {ours.server_us_per_op / reference.server_us_per_op:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
