"""Entry point of ``sesh balancer``.

With ``--workers N`` (N > 1; the default ``auto`` is one per CPU the process may run on) the parent
binds N listening sockets to the same port with SO_REUSEPORT (the kernel spreads connections over them),
creates the shared scoreboard, and forks N - 1 workers before starting trio; it then serves as worker 0
itself. Each worker has its own accept queue, its own member connection pools and its own counter column
in the scoreboard. When worker 0 stops it asks the others to stop (SIGTERM) and waits for them.
"""

from __future__ import annotations

import socket

import trio

from sesh.balancer.server import SharedState, prepare, serve_balancer
from sesh.config import AUTO_WORKERS_LIMIT, BalancerConfig
from sesh.log import get_logger
from sesh.net.shutdown import Shutdown, run_role
from sesh.net.workers import auto_workers, reuseport_sockets, run_workers

log = get_logger()

_NAME = "sesh balancer"


def _run_worker(cfg: BalancerConfig, shared: SharedState, worker: int, sock: socket.socket | None) -> int:
    async def main(shutdown: Shutdown) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_balancer(
                    cfg, shutdown, shared=shared, worker=worker, sock=sock, task_status=task_status
                )
            )
            if worker == 0:
                print(f"{_NAME} ({cfg.lbmethod}, {len(cfg.members)} members, {_workers_shown(cfg, shared)}) "
                      f"listening on http://{cfg.host}:{port}/", flush=True)

    return run_role(main, grace=cfg.shutdown_grace, name=_NAME if worker == 0 else f"{_NAME} worker {worker}")


def _workers_shown(cfg: BalancerConfig, shared: SharedState) -> str:
    count = shared.board.workers
    return f"{count} worker{'s' if count > 1 else ''}" + (", auto: one per CPU" if cfg.workers == "auto" else "")


def run_balancer(cfg: BalancerConfig) -> int:
    workers = auto_workers(AUTO_WORKERS_LIMIT) if cfg.workers == "auto" else cfg.workers
    shared = prepare(cfg, workers)
    if shared.token_generated:
        log.warning("balancer-manager token generated", token=shared.token, path=cfg.manager_path)
    try:
        if workers == 1:
            return _run_worker(cfg, shared, 0, None)
        socks = reuseport_sockets(cfg.host, cfg.port, workers)
    except OSError as exc:
        log.error(f"{exc} (see --host/--port)")
        return 1
    return run_workers(socks, lambda worker, sock: _run_worker(cfg, shared, worker, sock), cfg.shutdown_grace)
