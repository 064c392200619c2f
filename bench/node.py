"""``make bench-node``: one app node serving the demo page with a session, side by side with one Debian
Tomcat 10 serving the same page as a JSP, in the same run; and what msm non-sticky mode costs over local.

1. **node**: ``sesh node --mode local`` against one tomcat10 instance (``tomcat10-instance-create``,
   bench/tomcat/server.xml without its ``<Cluster>``: a single node keeps its sessions in Tomcat's
   StandardManager, as a local-mode node keeps them in its own memory) serving bench/tomcat/index.jsp.
   Load: wrk -t1 -c50, GET / with ``Accept: application/json`` and one fixed session cookie (created
   before the run), so every request reads and writes the same session (the page counts hits).
2. **msm cost**: the same node in local mode and in ``--mode msm --no-sticky`` with one ``sesh store``,
   wrk -t1 -c50 over a pool of --pool sessions in turn (a fixed cookie would serialize every request on
   one session's store round trips, which measures latency, not cost). Cost = CPU per request of the
   node (and of the node plus its store), msm over local.

Every stack is warmed up first (3 s bursts until its CPU per request moved less than 15% between two
bursts, at least --warmup s: Tomcat's JIT keeps compiling long after its first requests), then --rounds
rounds of --seconds each run every stack in turn; the tables show medians of rounds, ratios are per
round against the reference measured in that round.

Placement (taskset; --placement none pins nothing): every server (sesh node, Tomcat's JVM) on CPU 0,
so Tomcat has one core as a sesh process does; wrk and the msm row's store on CPU 1. --tomcat-unpinned
adds a Tomcat whose JVM may use both cores (wrk still on CPU 1): what Tomcat does on this machine as it
ships. CPU per request = utime + stime from /proc over the measured interval / requests answered. The
stacks not under load are paused (SIGSTOP) while one is warmed up or measured (--idle-stacks run: left
running), as in bench/topology.py: an idle JVM's compiler and GC otherwise share CPU 0 with the next.

    python bench/node.py [--seconds 5] [--rounds 3] [--warmup 15] [--pool 200] [--no-msm] [--tomcat-unpinned]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CpuMeter,
    WrkResult,
    create_sessions,
    median,
    parse_wrk,
    pin_self,
    placement_note,
    run_measured,
    sigterm_as_interrupt,
    start_sesh_role,
    us_per_request,
)
from bench.topology import (
    LOAD_CPU,
    SERVER_CPU,
    TOMCAT_DIR,
    Stack,
    alone,
    run_main,
    settle,
    tomcat_available,
    tomcat_instance,
)

CONNECTIONS = 50
WARMUP_BURST = 3.0
WRK_SCRIPT = """
local ids = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/", {["Accept"] = "application/json", ["Cookie"] = "JSESSIONID=" .. ids[(i %% #ids) + 1]})
end
"""
_CLUSTER = re.compile(r"\s*<Cluster className=.*?</Cluster>", re.DOTALL)


@dataclass
class Measured:
    """One stack under load: its servers (a Stack), the cookies wrk sends, what it measured per round."""

    stack: Stack
    cookies: list[str] = field(default_factory=list)
    rounds: list[tuple[WrkResult, dict[str, float], float]] = field(default_factory=list)  # wrk, CPU s, wrk CPU s

    @property
    def name(self) -> str:
        return self.stack.name

    def rps(self) -> float:
        return median([r.rps for r, _, _ in self.rounds])

    def cpu_us(self, label: str | None = None) -> float:
        """Median CPU per request of one process (all of them when label is None)."""
        return median([us_per_request(cpu[label] if label else sum(cpu.values()), r.requests)
                       for r, cpu, _ in self.rounds])


def start_sesh_node(stack: Stack, cpu: str | None, *mode: str) -> None:
    node = stack.add(start_sesh_role("sesh node", "node", "--name", "bench", "--port", "0", *mode, cpu=cpu))
    stack.port = node.port


def start_sesh_msm(stack: Stack, cpu: str | None, store_cpu: str | None) -> None:
    store = start_sesh_role("sesh store", "store", "--port", "0", cpu=store_cpu)
    stack.add(store)
    start_sesh_node(stack, cpu, "--mode", "msm", "--no-sticky", "--memcached-nodes", f"n1:127.0.0.1:{store.port}")


def start_tomcat_single(stack: Stack, cpu: str | None) -> None:
    """One tomcat10 instance serving the demo JSP, its sessions in the default StandardManager."""
    root = Path(tempfile.mkdtemp(prefix="sesh-bench-node-tomcat-"))
    os.chmod(root, 0o755)
    stack.directories.append(root)
    server_xml = _CLUSTER.sub("", (TOMCAT_DIR / "server.xml").read_text())
    stack.port = tomcat_instance(stack, root, "tomcat", lambda port: server_xml.replace("$http_port", str(port)), cpu)


def run_load(measured: Measured, seconds: float, load_cpu: str | None) -> tuple[WrkResult, dict[str, float], float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="sesh-bench-node-", delete=False) as script:
        script.write(WRK_SCRIPT % ", ".join(f'"{c}"' for c in measured.cookies))
    try:
        meter = CpuMeter(measured.stack.pids())
        meter.start()
        out, wrk_cpu = run_measured(
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name,
             f"http://127.0.0.1:{measured.stack.port}/"], timeout=seconds + 60, cpu=load_cpu)
        cpu, _ = meter.stop()
    finally:
        os.unlink(script.name)
    return parse_wrk(out), cpu, wrk_cpu


def warm_up(measured: Measured, args: argparse.Namespace, load_cpu: str | None) -> None:
    def burst() -> dict[str, float]:
        result, cpu, _ = run_load(measured, WARMUP_BURST, load_cpu)
        return {"demo page": us_per_request(sum(cpu.values()), result.requests)}

    settle(f"bench-node: warming up {measured.name}", burst, args.warmup, args.warmup_max)


def print_table(title: str, rows: list[Measured], reference: Measured | None) -> None:
    print()
    print(title)
    print(f"  {'stack':<28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'srv us/req':>12}{'wrk us/req':>12}{'errors':>8}"
          + (f"{'req/s ratio':>13}{'cpu ratio':>11}" if reference else ""))
    for row in rows:
        line = (f"  {row.name:<28}{row.rps():>10,.0f}{median([r.p50_ms for r, _, _ in row.rounds]):>9.2f}"
                f"{median([r.p99_ms for r, _, _ in row.rounds]):>9.2f}{row.cpu_us():>12.0f}"
                f"{median([us_per_request(w, r.requests) for r, _, w in row.rounds]):>12.0f}"
                f"{sum(r.errors for r, _, _ in row.rounds):>8}")
        if reference:
            ratios = [a.rps / b.rps for (a, _, _), (b, _, _) in zip(row.rounds, reference.rounds, strict=True)]
            line += f"{median(ratios):>12.2f}x{row.cpu_us() / reference.cpu_us():>10.2f}x"
            if row is not reference:
                line += f"  (rounds: {' '.join(f'{x:.2f}' for x in ratios)})"
        print(line)
    for row in rows:
        per_process = ", ".join(f"{label} {row.cpu_us(label):.0f}" for label in row.stack.pids())
        print(f"    CPU per request, {row.name}: {per_process} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--seconds", type=int, default=5, help="measured wrk run per stack and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=15, help="least seconds of warm-up load per stack")
    parser.add_argument("--warmup-max", type=int, default=90, help="most seconds of warm-up load per stack")
    parser.add_argument("--pool", type=int, default=200, help="sessions of the msm cost row")
    parser.add_argument("--no-msm", action="store_true", help="skip the msm cost row")
    parser.add_argument("--no-reference", action="store_true", help="skip Tomcat")
    parser.add_argument("--tomcat-unpinned", action="store_true", help="also a Tomcat free to use both cores")
    parser.add_argument("--placement", choices=("pinned", "none"), default="pinned")
    parser.add_argument("--idle-stacks", choices=("pause", "run"), default="pause",
                        help="the stacks not under load: paused with SIGSTOP (default), or left running")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-node: wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    server_cpu = SERVER_CPU if args.placement == "pinned" else None
    load_cpu = LOAD_CPU if args.placement == "pinned" else None
    pin_self(load_cpu)
    reference_note = "--no-reference" if args.no_reference else tomcat_available()

    plan: list[tuple[str, Callable[[Stack], None], bool]] = [  # name, start, fixed cookie (else the pool)
        ("sesh node local", lambda s: start_sesh_node(s, server_cpu, "--mode", "local"), True)]
    if reference_note is None:
        plan.append(("tomcat10", lambda s: start_tomcat_single(s, server_cpu), True))
        if args.tomcat_unpinned:
            plan.append(("tomcat10 unpinned", lambda s: start_tomcat_single(s, None), True))
    if not args.no_msm:
        plan.append(("sesh local, pool", lambda s: start_sesh_node(s, server_cpu, "--mode", "local"), False))
        plan.append(("sesh msm non-sticky, pool", lambda s: start_sesh_msm(s, server_cpu, load_cpu), False))

    stacks: list[Measured] = []
    try:
        for name, start, fixed in plan:
            print(f"bench-node: starting {name}", file=sys.stderr, flush=True)
            measured = Measured(Stack(name))
            stacks.append(measured)
            start(measured.stack)
            measured.cookies = create_sessions(measured.stack.port, 1 if fixed else args.pool)
        everything = [m.stack for m in stacks]
        pause = args.idle_stacks == "pause"
        for measured in stacks:
            with alone(measured.stack, everything, pause):
                warm_up(measured, args, load_cpu)
        for number in range(1, args.rounds + 1):
            for measured in stacks:
                measured.stack.check_alive()
                with alone(measured.stack, everything, pause):
                    measured.rounds.append(run_load(measured, args.seconds, load_cpu))
                result, cpu, _ = measured.rounds[-1]
                print(f"bench-node: round {number}/{args.rounds} {measured.name}: {result.rps:,.0f} req/s, "
                      f"{us_per_request(sum(cpu.values()), result.requests):.0f} us/req", file=sys.stderr, flush=True)
    except Exception:
        for measured in stacks:
            measured.stack.dump_logs()
        raise
    finally:
        for measured in reversed(stacks):
            measured.stack.stop()

    by_name = {m.name: m for m in stacks}
    print(f"sesh node benchmark: {args.rounds} rounds x {args.seconds} s per stack, stacks alternating, medians of "
          f"rounds; wrk -t1 -c{CONNECTIONS}, GET / (JSON); each stack warmed up (>= {args.warmup} s, until its CPU "
          "per request settles)")
    print("  " + placement_note([("sesh node, Tomcat's JVM", server_cpu), ("wrk, the msm row's sesh store", load_cpu)])
          + ("; 'tomcat10 unpinned': its JVM on any CPU" if args.tomcat_unpinned else ""))
    print("  the stacks not under load are " + ("paused (SIGSTOP) meanwhile" if args.idle_stacks == "pause"
                                                 else "left running meanwhile (--idle-stacks run)"))
    if reference_note:
        print(f"  Tomcat not run: {reference_note}")
    node_rows = [by_name[n] for n in ("sesh node local", "tomcat10", "tomcat10 unpinned") if n in by_name]
    print_table("node: one fixed session cookie (ratios against tomcat10 pinned)", node_rows, by_name.get("tomcat10"))
    if not args.no_msm:
        local, msm = by_name["sesh local, pool"], by_name["sesh msm non-sticky, pool"]
        print_table(f"msm cost: {args.pool} sessions in turn (ratios against local)", [local, msm], local)
        node_ratio = msm.cpu_us("sesh node") / local.cpu_us("sesh node")
        print(f"  msm non-sticky / local, CPU per request: node {node_ratio:.2f}x,"
              f" node + store {msm.cpu_us() / local.cpu_us():.2f}x; req/s {msm.rps() / local.rps():.2f}x")
    return 0


if __name__ == "__main__":
    run_main(main, "bench-node")
