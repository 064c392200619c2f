"""``sesh demo`` (what ``make demo`` runs): ``sesh up`` and ``sesh top`` in one process and one terminal.

The topology is the one ``sesh up`` starts (same flags); the members' log lines, and sesh up's own, go
to a log directory it names (a fresh one under the temp dir unless ``--log-dir``), so the terminal shows
the URLs and then the live dashboard. ``q`` in the dashboard, Ctrl-C or SIGTERM stops everything through
each member's graceful path.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import trio

from sesh import log
from sesh.config import DemoConfig, TopConfig
from sesh.up.control import claim
from sesh.up.supervisor import Supervisor
from sesh.up.topology import Plan, plan

TRY = """
Try it: open {url} and reload. Requests alternate between the nodes,
the Session_ID stays and the hit count goes up by one. In the dashboard,
select node1 (down arrow) and press k to kill it: reload, the session survives
on node2. r restarts node1, d/e drain/enable it in the balancer, q stops all.
"""


def run_demo(cfg: DemoConfig) -> int:
    log_dir = cfg.log_dir or tempfile.mkdtemp(prefix="sesh-demo-")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    cfg = DemoConfig(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__}, "log_dir": log_dir})
    p = plan(cfg)
    claim(p.control_socket)
    # sesh up's own lines would tear through the dashboard: they go to the log directory too.
    own = (Path(log_dir) / "up.log").open("a", encoding="utf-8")
    try:
        log.configure("up", str(p.by_role("balancer")[0].port),
                      log.level_from(cfg.log_level, cfg.verbose, cfg.quiet), stream=own)
        from sesh.up.main import run_topology

        return trio.run(functools.partial(run_topology, cfg, p, sys.stdout, functools.partial(_dashboard, p)))
    finally:
        own.close()


async def _dashboard(p: Plan, sup: Supervisor, _plan: Plan) -> None:
    from sesh.top.collect import Collector
    from sesh.top.main import live

    print(TRY.format(url=p.balancer_url), flush=True)
    top = TopConfig(control_socket=p.control_socket, manager_path=p.manager_path)
    banner = (f"open {p.balancer_url} · manager {p.manager_path} token {p.manager_token}\n"
              f"↓ selects node1, k kills it: reload, the session lives on · logs {sup.log_dir}")
    await live(top, Collector(top, p.control_socket), None, banner)
