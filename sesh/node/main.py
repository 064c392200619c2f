"""Entry point of ``sesh node``; ``--workers N`` forks N processes sharing the port (net/workers.py)."""

from __future__ import annotations

import socket
import sys

import trio

from sesh.config import ConfigError, NodeConfig
from sesh.net.shutdown import Shutdown, run_role
from sesh.net.workers import reuseport_sockets, run_workers
from sesh.node.server import serve_node


def check_workers(cfg: NodeConfig) -> None:
    if cfg.workers == 1:
        return
    if cfg.mode != "msm" or cfg.sticky:
        raise ConfigError("--workers: more than one worker needs --mode msm --no-sticky (the session is then "
                          "in the store, so any worker can serve any request); in local and sticky modes "
                          "sessions live in one process's memory, and cluster members are one process each")
    from sesh.node.msm.settings import msm_settings

    msm_settings(cfg)  # its errors once, before the fork, not once per worker


def _run_worker(cfg: NodeConfig, worker: int, sock: socket.socket | None) -> int:
    async def main(shutdown: Shutdown) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: serve_node(cfg, shutdown, sock=sock, worker=worker,
                                                                      task_status=task_status))
            if worker == 0:
                workers = f", {cfg.workers} workers" if cfg.workers > 1 else ""
                print(
                    f"sesh node {cfg.name} ({cfg.mode}, route {cfg.route or '-'}{workers}) listening on "
                    f"http://{cfg.host}:{port}/",
                    flush=True,
                )

    name = f"sesh node {cfg.name}" + (f" worker {worker}" if worker else "")
    return run_role(main, grace=cfg.shutdown_grace, name=name)


def run_node(cfg: NodeConfig) -> int:
    check_workers(cfg)
    try:
        if cfg.workers == 1:
            return _run_worker(cfg, 0, None)
        socks = reuseport_sockets(cfg.host, cfg.port, cfg.workers)
    except OSError as exc:
        print(f"sesh node: {exc} (see --host/--port)", file=sys.stderr)
        return 1
    return run_workers(socks, lambda worker, sock: _run_worker(cfg, worker, sock), cfg.shutdown_grace)
