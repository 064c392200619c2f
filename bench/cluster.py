"""``make bench-cluster``: what session replication costs, and the seed topology in cluster mode side by
side with httpd + two clustered Tomcats, in one run.

1. **One node's demo page**: local mode, then cluster mode with 2 and 3 members, ack (the default) and
   async. wrk (one thread, NODE_CONNECTIONS keep-alive connections, --node-seconds) sends GET / with
   ``Accept: application/json`` and one of NODE_SESSIONS pre-created sessions in turn, so every request
   changes its session and is replicated. Ratios are against the local row of the same run; CPU per
   request per process for the node under test and each peer; replication lag p50/p99 per peer (end of
   request -> the peer applied it, through the acks) from the node's /sesh/status.
   Placement (taskset): the node under test alone on CPU 0; wrk and the peers on CPU 1.
2. **The seed topology** (bench/topology.py's loads, stacks, warm-up and report): ``sesh balancer``
   (bytraffic, no stickysession) -> 2 ``sesh node --mode cluster`` with their defaults (ack sends,
   multicast membership on 127.0.0.1), against Debian's apache2 -> 2 tomcat10 with the seed's <Cluster>
   (ack, channelSendOptions 6, and async, 8) when tomcat10 is installed (``make bench-deps``): --browsers
   sequential browsers with their own cookies, and wrk -t2 -c50 over --pool session cookies; sessions and
   acknowledged updates lost, req/s, CPU per request per process, sesh's ratio to Tomcat ack.
   Placement (taskset): every server process of every stack on CPU 0, the load generators on CPU 1.
3. **State transfer**: a node joining a member that holds --transfer-sessions sessions; seconds until it
   has them all (from its log).

    python bench/cluster.py [--node-seconds 5] [--seconds 10] [--rounds 3] [--warmup 30] [--pool 1000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CpuMeter,
    Server,
    create_sessions,
    parse_wrk,
    placement_note,
    run_measured,
    sigterm_as_interrupt,
    start_sesh_role,
    us_per_request,
)
from bench.topology import (
    LOAD_CPU,
    SERVER_CPU,
    TOMCAT,
    Stack,
    add_load_arguments,
    free_udp_port,
    reference_plan,
    report,
    run_main,
    run_stacks,
)

NODE_CONNECTIONS = 16
NODE_SESSIONS = 200
TRANSFER_SESSIONS = 10_000
NODE_SCRIPT = """
local ids = {%s}
local i = 0
request = function()
  i = i + 1
  local headers = {["Accept"] = "application/json", ["Cookie"] = "JSESSIONID=" .. ids[(i %% #ids) + 1]}
  return wrk.format("GET", "/", headers)
end
"""
SESH_CLUSTER = ("sesh:  sesh balancer (bytraffic, no stickysession) -> 2 sesh node --mode cluster (defaults: "
                "ack sends, multicast membership on 127.0.0.1)")


def _cluster_node(label: str, group: int, *extra: str, cpu: str | None) -> Server:
    return start_sesh_role(label, "node", "--mode", "cluster", "--name", label, "--port", "0", "--receiver-port", "0",
                           "--mcast-port", str(group), *extra, cpu=cpu)


def _status(port: int) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/sesh/status")
        data: dict[str, object] = json.loads(conn.getresponse().read())["backend"]
        return data
    finally:
        conn.close()



# --- 1. one node ------------------------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    rps: float
    p99_ms: float
    errors: int
    cpu_us: list[float]  # per request: the node under test first, then its peers
    lag: str = ""


def measure_node(name: str, members: int, send_options: str, seconds: int, pinned: bool) -> Row:
    node_cpu, load_cpu = (SERVER_CPU, LOAD_CPU) if pinned else (None, None)
    group = free_udp_port()
    servers: list[Server] = []
    try:
        if members == 0:
            servers.append(start_sesh_role("node", "node", "--mode", "local", "--name", "bench", "--port", "0",
                                           cpu=node_cpu))
        for i in range(members):
            servers.append(_cluster_node(f"n{i + 1}", group, "--send-options", send_options,
                                         cpu=node_cpu if i == 0 else load_cpu))
        ids = create_sessions(servers[0].port, NODE_SESSIONS)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="sesh-bench-", delete=False) as script:
            script.write(NODE_SCRIPT % ", ".join(f'"{i}"' for i in ids))
        try:
            meter = CpuMeter({s.label: s.proc.pid for s in servers})
            meter.start()
            out, _ = run_measured(["wrk", "-t1", f"-c{NODE_CONNECTIONS}", f"-d{seconds}s", "--latency", "-s",
                                   script.name, f"http://127.0.0.1:{servers[0].port}/"], seconds + 60, load_cpu)
            cpu, _ = meter.stop()
        finally:
            os.unlink(script.name)
        wrk = parse_wrk(out)
        lag = ""
        if members and send_options == "ack":
            peers = _status(servers[0].port)["peers"]
            assert isinstance(peers, list)
            lag = " ".join(f"{p['name']}:{p['lag_p50_ms']}/{p['lag_p99_ms']}ms" for p in peers if p["lag_samples"])
        per_request = [us_per_request(cpu[s.label], wrk.requests) for s in servers]
        return Row(name, wrk.rps, wrk.p99_ms, wrk.errors, per_request, lag)
    finally:
        for server in servers:
            server.stop()


def node_rows(args: argparse.Namespace) -> None:
    pinned = args.placement == "pinned"
    rows = [measure_node("local (1 node)", 0, "", args.node_seconds, pinned)]
    for members in (2, 3):
        for mode in ("ack", "async"):
            rows.append(measure_node(f"cluster {members} members, {mode}", members, mode, args.node_seconds, pinned))
    print(f"1. one node's demo page: wrk -t1 -c{NODE_CONNECTIONS} {args.node_seconds} s per row, {NODE_SESSIONS} "
          "sessions in turn (every request changes its session and is replicated)")
    print("  " + placement_note([("node under test", SERVER_CPU if pinned else None),
                                 ("wrk and the peers", LOAD_CPU if pinned else None)]))
    local = rows[0].rps
    print(f"  {'configuration':<28}{'req/s':>9}{'vs local':>10}{'p99 ms':>9}{'errors':>7}  "
          "CPU us/req (node, peers...)  lag p50/p99 per peer")
    for r in rows:
        cpu = ", ".join(f"{c:.0f}" for c in r.cpu_us)
        print(f"  {r.name:<28}{r.rps:>9,.0f}{r.rps / local:>9.2f}x{r.p99_ms:>9.2f}{r.errors:>7}  {cpu:<27}  {r.lag}")


# --- 2. the seed topology ----------------------------------------------------------------------------------

def start_sesh_cluster(stack: Stack, cpu: str | None) -> None:
    """The seed's first experiment with sesh: a non-sticky bytraffic balancer, two cluster nodes."""
    group = free_udp_port()  # a random multicast port per run: no other run joins this cluster
    nodes = [stack.add(_cluster_node(name, group, cpu=cpu)) for name in ("node1", "node2")]
    members = [f"--member=http://127.0.0.1:{node.port}" for node in nodes]
    # One worker, as sesh up starts it (the nodes share the machine; --placement none would fork one per CPU).
    balancer = stack.add(start_sesh_role("balancer", "balancer", "--port", "0", *members, "--lbmethod", "bytraffic",
                                         "--preserve-host", "--workers", "1", cpu=cpu))
    stack.port = balancer.port


def seed_topology(args: argparse.Namespace) -> None:
    reference, note = reference_plan(args)
    stacks, results = run_stacks([("sesh cluster", start_sesh_cluster), *reference], args, "bench-cluster")
    report(stacks, results, args, note, (SESH_CLUSTER, TOMCAT),
           title="2. the seed topology, cluster mode against httpd + Tomcat")


# --- 3. state transfer --------------------------------------------------------------------------------------

def state_transfer(count: int) -> tuple[float, int]:
    group = free_udp_port()
    first = _cluster_node("n1", group, cpu=None)
    second = None
    try:
        create_sessions(first.port, count)
        second = _cluster_node("n2", group, cpu=None)
        for line in second.lines:
            match = re.search(r"state transfer done .*sessions=(\d+) seconds=([\d.]+)", line)
            if match:
                return float(match.group(2)), int(match.group(1))
        raise SystemExit("bench-cluster: the joining node did not report a state transfer")
    finally:
        first.stop()
        if second is not None:
            second.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    add_load_arguments(parser)
    parser.add_argument("--node-seconds", type=int, default=5, help="wrk run per one-node configuration")
    parser.add_argument("--transfer-sessions", type=int, default=TRANSFER_SESSIONS)
    parser.add_argument("--only", choices=("nodes", "topology", "transfer"), help="run one part")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-cluster: wrk is missing (apt-get install wrk, or make bench-deps)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    if args.only in (None, "nodes"):
        node_rows(args)
    if args.only in (None, "topology"):
        seed_topology(args)
    if args.only in (None, "transfer"):
        seconds, got = state_transfer(args.transfer_sessions)
        print()
        print(f"3. state transfer: a joining node received {got} of {args.transfer_sessions} sessions in "
              f"{seconds:.3f} s (before it opened its HTTP port)")
    return 0


if __name__ == "__main__":
    run_main(main, "bench-cluster")
