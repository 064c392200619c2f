"""Benchmark: sesh balancer against Debian's apache2 mod_proxy_balancer, side by side.

The same two backends (one apache2 instance serving a small fixed file on two loopback ports) sit behind
(1) apache2 with mod_proxy_balancer and (2) ``sesh balancer``; the same wrk run (keep-alive, 50
connections, 10 s) drives each. Prints req/s, p50 and p99 for both and the ratios, and the CPU per request
of each process over the measured run: utime + stime from /proc of the balancer (its whole process tree:
apache2's children, sesh's --workers) and of the backend apache2, and wrk's own (its rusage).

Placement on this 2-core machine: nothing is pinned; wrk (2 threads), the balancer under test and the
backend apache2 share both cores, the same way for both runs. Every process is started here on random
loopback ports with its own config in a temporary directory and stopped at the end.

    python bench/balancer.py [--duration 10] [--connections 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import CpuMeter, parse_wrk, run_measured, us_per_request  # noqa: E402
from tests.procs import free_port, wait_for_port  # noqa: E402

APACHE = "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"
BODY = b"hello from the backend\n" * 4  # a small fixed response, as a typical API answer


def apache_config(directory: Path, body: str) -> str:
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    return (
        f"ServerRoot {directory}\nPidFile {directory}/httpd.pid\nErrorLog {directory}/error.log\n"
        f"LogLevel warn\nServerName 127.0.0.1\n{user}"
        f"LoadModule mpm_event_module {MODULES}/mod_mpm_event.so\n"
        f"LoadModule authz_core_module {MODULES}/mod_authz_core.so\n"
        f"Mutex file:{directory} default\nDefaultRuntimeDir {directory}\n"
        "KeepAlive On\nMaxKeepAliveRequests 0\n" + body
    )


def make_directory(name: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=f"sesh-bench-{name}-"))
    os.chmod(directory, 0o755)  # apache2's children run as www-data when started as root
    return directory


def start_apache(directory: Path, body: str) -> subprocess.Popen[bytes]:
    conf = directory / "httpd.conf"
    conf.write_text(apache_config(directory, body))
    return subprocess.Popen(
        [APACHE, "-f", str(conf), "-DFOREGROUND"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def backends() -> tuple[subprocess.Popen[bytes], Path, list[int]]:
    ports = [free_port(), free_port()]
    directory = make_directory("backends")
    docroot = directory / "htdocs"
    docroot.mkdir(mode=0o755)
    (docroot / "r.txt").write_bytes(BODY)
    os.chmod(docroot / "r.txt", 0o644)
    body = "".join(f"Listen 127.0.0.1:{p}\n" for p in ports) + (
        f"DocumentRoot {docroot}\n<Directory {docroot}>\nRequire all granted\n</Directory>\n"
    )
    proc = start_apache(directory, body)
    for port in ports:
        wait_for_port(port)
    return proc, directory, ports


def apache_balancer(members: list[int]) -> tuple[subprocess.Popen[bytes], Path, int]:
    port = free_port()
    body = (
        f"Listen 127.0.0.1:{port}\n"
        + "".join(
            f"LoadModule {m}_module {MODULES}/mod_{m}.so\n"
            for m in ("proxy", "proxy_http", "proxy_balancer", "slotmem_shm", "lbmethod_byrequests")
        )
        + "<Proxy balancer://lbcluster>\n"
        + "".join(
            f"BalancerMember http://127.0.0.1:{p} loadfactor=1 route={r}\n"
            for p, r in zip(members, "ab", strict=True)
        )
        + "ProxySet lbmethod=byrequests\n</Proxy>\n"
        "ProxyPass / balancer://lbcluster/\nProxyPassReverse / balancer://lbcluster/\n"
    )
    directory = make_directory("httpd")
    proc = start_apache(directory, body)
    wait_for_port(port)
    return proc, directory, port


def sesh_balancer(members: list[int], workers: int) -> tuple[subprocess.Popen[str], int]:
    args = [sys.executable, str(ROOT / "sesh.py"), "balancer", "--port", "0", "--workers", str(workers)]
    for port, route in zip(members, "ab", strict=True):
        args += ["--member", f"http://127.0.0.1:{port} loadfactor=1 route={route}"]
    args += ["--manager-token", "bench"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = re.search(r"listening on http://[^:]+:(\d+)/", line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise RuntimeError("sesh balancer did not start")


Result = tuple[float, float, float, dict[str, float]]  # req/s, p50 ms, p99 ms, CPU us/req per process


def wrk(port: int, duration: int, connections: int, processes: dict[str, int] | None = None) -> Result:
    meter = CpuMeter(processes or {})
    meter.start()
    out, wrk_cpu = run_measured(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/r.txt"],
        timeout=duration + 30,
    )
    cpu = meter.stop()[0]
    result = parse_wrk(out)
    if result.errors:
        print(f"  warning: {result.errors} non-2xx responses or socket errors", file=sys.stderr)
    cpu_us = {name: us_per_request(seconds, result.requests) for name, seconds in {**cpu, "wrk": wrk_cpu}.items()}
    return result.rps, result.p50_ms, result.p99_ms, cpu_us


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="sesh balancer --workers")
    args = parser.parse_args()
    for tool in (APACHE, "wrk"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (apt-get install apache2 wrk)", file=sys.stderr)
            return 2
    backend_proc, backend_dir, members = backends()
    results: dict[str, Result] = {}
    try:
        httpd, httpd_dir, httpd_port = apache_balancer(members)
        try:
            wrk(httpd_port, 2, args.connections)  # warm up
            results["httpd"] = wrk(httpd_port, args.duration, args.connections,
                                   {"balancer": httpd.pid, "backends": backend_proc.pid})
        finally:
            stop(httpd)
            shutil.rmtree(httpd_dir, ignore_errors=True)
        sesh, sesh_port = sesh_balancer(members, args.workers)
        try:
            wrk(sesh_port, 2, args.connections)
            results["sesh"] = wrk(sesh_port, args.duration, args.connections,
                                  {"balancer": sesh.pid, "backends": backend_proc.pid})
        finally:
            stop(sesh)
    finally:
        stop(backend_proc)
        shutil.rmtree(backend_dir, ignore_errors=True)
    print(f"balancer benchmark: wrk -t2 -c{args.connections} -d{args.duration}s, keep-alive, "
          f"{len(BODY)}-byte responses from 2 apache2 backends; {os.cpu_count()} cores, unpinned")
    print(f"{'':14}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}   CPU us/req: {'balancer':>8}{'backends':>9}{'wrk':>6}")
    for name, (rps, p50, p99, cpu) in results.items():
        label = name if name == "httpd" else f"sesh (x{args.workers})"
        print(f"{label:14}{rps:>10.0f}{p50:>10.2f}{p99:>10.2f}   {'':>11} {cpu['balancer']:>8.0f}"
              f"{cpu['backends']:>9.0f}{cpu['wrk']:>6.0f}")
    (h_rps, _, h_p99, h_cpu), (s_rps, _, s_p99, s_cpu) = results["httpd"], results["sesh"]
    print(f"ratio sesh/httpd: req/s {s_rps / h_rps:.2f} (goal >= 0.80), p99 {s_p99 / h_p99:.2f} (goal <= 1.5), "
          f"balancer CPU per request {s_cpu['balancer'] / h_cpu['balancer']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
