"""Helpers the benchmarks share: CPU placement with taskset, CPU time per process from /proc, wrk's output,
processes that die with the benchmark, and stopping them.

CPU per request is what a process spent (utime + stime, in clock ticks of 10 ms) over the measured
interval divided by the requests answered in it. A process that forks workers (apache2, ``sesh balancer
--workers N``) is measured as its whole tree: every live descendant's own time plus the time of the
children already reaped (cutime + cstime), so a recycled worker's time is not lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import http.client
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
_LISTENING = re.compile(r"listening on (\S+)")


# --- placement -------------------------------------------------------------------------------------

def can_pin() -> bool:
    return bool(shutil.which("taskset")) and (os.cpu_count() or 1) > 1


def pinned(cpu: str | None, argv: Sequence[str]) -> list[str]:
    """argv run under ``taskset -c cpu`` (taskset execs it, so the pid is the program's own)."""
    if cpu is not None and can_pin():
        return ["taskset", "-c", cpu, *argv]
    return list(argv)


def pin(pid: int, cpu: str | None) -> None:
    """Move a running process and all its threads to cpu."""
    if cpu is not None and can_pin():
        subprocess.run(["taskset", "-a", "-pc", cpu, str(pid)], check=True, stdout=subprocess.DEVNULL)


def pin_self(cpu: str | None) -> None:
    if cpu is not None and can_pin():
        os.sched_setaffinity(0, {int(c) for c in cpu.split(",")})


# --- CPU time from /proc ----------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(pid: int, *, reaped_children: bool = True) -> int:
    """utime + stime of one process (all its threads), plus cutime + cstime when reaped_children."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0
    # After the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime (fields 3.. of proc(5)), so utime is index 11.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def tree_pids(pid: int) -> list[int]:
    """pid and every live descendant (apache2's children, sesh's --workers)."""
    children, found, stack = _children_map(), [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, ()))
    return found


def tree_ticks(pid: int, children: Mapping[int, list[int]] | None = None) -> int:
    """CPU ticks of pid and every live descendant, plus what their reaped children used."""
    children = _children_map() if children is None else children
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += cpu_ticks(current)
        stack.extend(children.get(current, ()))
    return total


class CpuMeter:
    """CPU seconds of named processes (each measured as its tree) between start() and stop()."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, int] = {}
        self._self_before = 0.0

    def _sample(self) -> dict[str, int]:
        children = _children_map()
        return {name: tree_ticks(pid, children) for name, pid in self.pids.items()}

    def start(self) -> None:
        self._before = self._sample()
        self._self_before = _self_cpu()

    def stop(self) -> tuple[dict[str, float], float]:
        """(seconds per named process, seconds of this Python process itself) since start()."""
        after = self._sample()
        own = _self_cpu() - self._self_before
        return {name: (after[name] - self._before[name]) / TICK for name in self.pids}, own


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def us_per_request(seconds: float, requests: int) -> float:
    return seconds * 1e6 / requests if requests else float("nan")


def format_cpu(cpu: Mapping[str, float], requests: int) -> str:
    """``name 123 us`` per process, then their sum: the CPU each spent per request."""
    parts = [f"{name} {us_per_request(seconds, requests):.0f}" for name, seconds in cpu.items()]
    parts.append(f"total {us_per_request(sum(cpu.values()), requests):.0f}")
    return ", ".join(parts) + " us/req"


# --- processes --------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """preexec_fn: the kernel sends signum to the child when this benchmark dies, even by SIGKILL, so no
    stray java/apache2/sesh process outlives a crashed or interrupted run. A server that forks workers
    (apache2) needs SIGTERM there: killed outright it would leave its children behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 15.0) -> None:
    """SIGTERM (each role's graceful path), then SIGKILL if it is still there after timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def sigterm_as_interrupt() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every ``finally`` that stops processes runs. Inside trio.run the
    SIGINT handler is trio's, which delivers KeyboardInterrupt at a safe point: hand the signal to it
    rather than raising from the middle of trio's I/O loop."""

    def handler(signum: int, frame: object) -> None:
        current = signal.getsignal(signal.SIGINT)
        if callable(current) and current is not signal.default_int_handler:
            current(signal.SIGINT, frame)  # type: ignore[arg-type]
            return
        raise KeyboardInterrupt

    # A shell starts background jobs with SIGINT ignored, and trio installs its handler only over Python's
    # default one: restore it, so both signals stop a benchmark wherever it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)


@dataclass
class Server:
    """One long-lived server process started by a benchmark: its label, process and (when it prints
    sesh's ``listening on URL`` line) its port. Its output is drained into ``lines`` (the last 200)."""

    label: str
    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)

    def stop(self) -> None:
        self.signal_tree(signal.SIGCONT)  # a paused process would not act on the stop
        stop_process(self.proc)

    def signal_tree(self, signum: int) -> None:
        """Send signum to the process and its descendants (SIGSTOP / SIGCONT: pause and resume it)."""
        if self.proc.poll() is not None:
            return
        for pid in tree_pids(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def output(self) -> str:
        return "\n".join(self.lines[-40:])


def _drain(pipe: IO[str], lines: list[str], ready: threading.Event | None, found: list[str]) -> None:
    for line in pipe:
        lines.append(line.rstrip("\n"))
        del lines[:-200]
        if ready is not None and not found:
            match = _LISTENING.search(line)
            if match:
                found.append(match.group(1))
                ready.set()
    if ready is not None:
        ready.set()


def start_server(label: str, argv: Sequence[str], *, cpu: str | None = None, env: Mapping[str, str] | None = None,
                 wait_listening: bool = False, timeout: float = 20.0, cwd: Path | None = None,
                 parent_death_signal: int = signal.SIGKILL) -> Server:
    """Start argv pinned to cpu, tied to this process's life (parent_death_signal); with wait_listening,
    wait for sesh's ``listening on URL`` line and take the port from it."""
    proc = subprocess.Popen(
        pinned(cpu, argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        preexec_fn=functools.partial(die_with_parent, parent_death_signal), cwd=cwd,
    )
    server = Server(label, proc)
    ready = threading.Event() if wait_listening else None
    found: list[str] = []
    assert proc.stdout is not None
    threading.Thread(target=_drain, args=(proc.stdout, server.lines, ready, found), daemon=True).start()
    if ready is not None:
        if not ready.wait(timeout) or not found:
            server.stop()
            raise RuntimeError(f"{label} did not start ({' '.join(argv)}):\n{server.output()}")
        server.port = int(found[0].rstrip("/").rsplit(":", 1)[1].split("/")[0])
    return server


def start_sesh_role(label: str, *args: str, cpu: str | None = None) -> Server:
    return start_server(label, [sys.executable, str(ROOT / "sesh.py"), *args], cpu=cpu, wait_listening=True)


def run_measured(argv: Sequence[str], timeout: float, cpu: str | None = None, *, check: bool = True
                 ) -> tuple[str, float]:
    """Run a load generator to completion: (its stdout + stderr, the CPU seconds it used, from wait4's
    rusage, so its whole life is counted even though it is gone when we look)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(pinned(cpu, argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} ran past {timeout}s")
                time.sleep(0.05)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{text[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime


# --- wrk ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx responses plus socket errors
    socket_errors: int  # connect/read/write errors and timeouts: requests that got no answer
    output: str


def _wrk_latency(out: str, label: str) -> float:
    match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if not match:
        return float("nan")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """wrk's summary (run with --latency for the percentiles)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rps or not total:
        raise RuntimeError(f"cannot read wrk's output:\n{out[-2000:]}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_line = re.search(r"Socket errors: (.*)", out)
    socket_errors = sum(int(n) for n in re.findall(r"\d+", socket_line.group(1))) if socket_line else 0
    errors = (int(bad.group(1)) if bad else 0) + socket_errors
    return WrkResult(int(total.group(1)), float(rps.group(1)), _wrk_latency(out, "50%"), _wrk_latency(out, "99%"),
                     errors, socket_errors, out)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def placement_note(parts: Sequence[tuple[str, str | None]]) -> str:
    """``placement: X on CPU 0; Y on CPU 1`` (or the reason nothing is pinned)."""
    if not can_pin():
        return "placement: nothing pinned (taskset missing or one CPU)"
    by_cpu: dict[str, list[str]] = {}
    for name, cpu in parts:
        by_cpu.setdefault(cpu or "any", []).append(name)
    return "placement (taskset): " + "; ".join(
        f"{', '.join(names)} on {'any CPU' if cpu == 'any' else 'CPU ' + cpu}" for cpu, names in by_cpu.items()
    )


def create_sessions(port: int, count: int) -> list[str]:
    """``count`` fresh sessions on the demo page at ``port``: their ids, from the Set-Cookie answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    ids = []
    try:
        for _ in range(count):
            conn.request("GET", "/", headers={"Accept": "application/json"})
            response = conn.getresponse()
            response.read()
            cookie = response.getheader("set-cookie") or ""
            ids.append(cookie.split(";", 1)[0].partition("=")[2])
    finally:
        conn.close()
    return ids
