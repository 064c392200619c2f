"""Benchmark: sesh balancer against Debian's apache2 mod_proxy_balancer, side by side.

The same two backends (one apache2 instance serving a small fixed file on two loopback ports) sit behind
(1) apache2 with mod_proxy_balancer and (2) ``sesh balancer`` (one instance per ``--workers`` value, by
default its own default, ``auto``: one worker per CPU, as apache2's mpm_event uses every core);
every balancer is started once, then the same wrk run (keep-alive, 50 connections) drives each in turn,
``--rounds`` times, interleaved (the order alternates between rounds), so a change in the machine's load
hits all of them alike. Prints each round, then the medians: req/s, p50 and p99, the CPU per request of
each process over its measured runs (utime + stime from /proc of the balancer's whole process tree:
apache2's children, sesh's --workers; of the backend apache2; and wrk's own rusage), and the ratios to
httpd (medians of the per-round ratios, each round's figures measured minutes apart at most).

Placement on this 2-core machine: nothing is pinned; wrk (2 threads), the balancer under test and the
backend apache2 share both cores, the same way for every run. Every process is started here on random
loopback ports with its own config in a temporary directory and stopped at the end.

    python bench/balancer.py [--duration 3] [--rounds 3] [--connections 50] [--workers auto | 1,2,auto]
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

from bench.common import CpuMeter, median, parse_wrk, run_measured, us_per_request  # noqa: E402
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


def sesh_balancer(members: list[int], workers: str) -> tuple[subprocess.Popen[str], int]:
    args = [sys.executable, str(ROOT / "sesh.py"), "balancer", "--port", "0", "--workers", workers]
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


def _worker_counts(text: str) -> list[str]:
    counts = [part.strip() for part in text.split(",")]
    if not all(c == "auto" or (c.isdigit() and int(c) >= 1) for c in counts):
        raise argparse.ArgumentTypeError("worker counts are auto or positive integers, e.g. auto or 1,2,auto")
    return counts


def _summary(rounds: list[Result], reference: list[Result]) -> tuple[Result, float, float, float]:
    """Medians of one balancer's rounds, and the medians of its per-round ratios to the reference's:
    req/s, p99, balancer CPU per request."""
    rps, p50, p99 = median([r[0] for r in rounds]), median([r[1] for r in rounds]), median([r[2] for r in rounds])
    cpu = {name: median([r[3][name] for r in rounds]) for name in rounds[0][3]}
    pairs = list(zip(rounds, reference, strict=True))
    return (
        (rps, p50, p99, cpu),
        median([r[0] / h[0] for r, h in pairs]),
        median([r[2] / h[2] for r, h in pairs]),
        median([r[3]["balancer"] / h[3]["balancer"] for r, h in pairs]),
    )


def _row(label: str, result: Result) -> str:
    rps, p50, p99, cpu = result
    return (f"{label:14}{rps:>10.0f}{p50:>10.2f}{p99:>10.2f}   {'':>11} {cpu['balancer']:>8.0f}"
            f"{cpu['backends']:>9.0f}{cpu['wrk']:>6.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--duration", type=int, default=3, help="seconds of load per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each balancer")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", type=_worker_counts, default=["auto"],
                        help="sesh balancer --workers; a list (1,2,auto) measures one sesh balancer per count")
    args = parser.parse_args()
    for tool in (APACHE, "wrk"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (apt-get install apache2 wrk)", file=sys.stderr)
            return 2
    backend_proc, backend_dir, members = backends()
    balancers: dict[str, tuple[subprocess.Popen[bytes] | subprocess.Popen[str], int]] = {}
    directories = [backend_dir]
    results: dict[str, list[Result]] = {}
    try:
        httpd, httpd_dir, httpd_port = apache_balancer(members)
        directories.append(httpd_dir)
        balancers["httpd"] = (httpd, httpd_port)
        for workers in args.workers:
            label = f"sesh ({workers})" if workers == "auto" else f"sesh (x{workers})"
            balancers[label] = sesh_balancer(members, workers)
        for _, port in balancers.values():
            wrk(port, 1, args.connections)  # warm up: connections to the members, caches
        results = {label: [] for label in balancers}
        for round_index in range(args.rounds):
            order = list(balancers.items())
            for label, (proc, port) in order if round_index % 2 == 0 else reversed(order):
                result = wrk(port, args.duration, args.connections,
                             {"balancer": proc.pid, "backends": backend_proc.pid})
                results[label].append(result)
                print(f"round {round_index + 1} {_row(label, result)}", flush=True)
    finally:
        for proc, _ in balancers.values():
            stop(proc)
        stop(backend_proc)
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"balancer benchmark: wrk -t2 -c{args.connections} -d{args.duration}s x {args.rounds} interleaved rounds, "
          f"keep-alive, {len(BODY)}-byte responses from 2 apache2 backends; {os.cpu_count()} cores, nothing pinned "
          "(wrk, the balancer and the backends share them); medians")
    print(f"{'':14}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}   CPU us/req: {'balancer':>8}{'backends':>9}{'wrk':>6}")
    reference = results["httpd"]
    for label, rounds in results.items():
        summary, rps_ratio, p99_ratio, cpu_ratio = _summary(rounds, reference)
        print(_row(label, summary))
        if label != "httpd":
            print(f"{'':14}ratio to httpd: req/s {rps_ratio:.2f} (goal >= 1.0), p99 {p99_ratio:.2f} (goal <= 1.5), "
                  f"balancer CPU per request {cpu_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
