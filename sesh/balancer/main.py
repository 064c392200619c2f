"""Entry point of ``sesh balancer``.

With ``--workers N`` (N > 1) the parent binds N listening sockets to the same port with SO_REUSEPORT
(the kernel spreads connections over them), creates the shared scoreboard, and forks N - 1 workers
before starting trio; it then serves as worker 0 itself. Each worker has its own accept queue, its own
member connection pools and its own counter column in the scoreboard. When worker 0 stops it asks the
others to stop (SIGTERM) and waits for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import trio

from sesh.balancer.server import SharedState, prepare, serve_balancer
from sesh.config import BalancerConfig
from sesh.log import get_logger
from sesh.net.server import LISTEN_BACKLOG
from sesh.net.shutdown import Shutdown, run_role

log = get_logger()

_NAME = "sesh balancer"


def _reuseport_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the first bind picks it, the others join it
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return socks


def _run_worker(cfg: BalancerConfig, shared: SharedState, worker: int, sock: socket.socket | None) -> int:
    async def main(shutdown: Shutdown) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_balancer(
                    cfg, shutdown, shared=shared, worker=worker, sock=sock, task_status=task_status
                )
            )
            if worker == 0:
                print(
                    f"{_NAME} ({cfg.lbmethod}, {len(cfg.members)} members, {cfg.workers} worker"
                    f"{'s' if cfg.workers > 1 else ''}) listening on http://{cfg.host}:{port}/",
                    flush=True,
                )

    return run_role(main, grace=cfg.shutdown_grace, name=_NAME if worker == 0 else f"{_NAME} worker {worker}")


def run_balancer(cfg: BalancerConfig) -> int:
    shared = prepare(cfg, cfg.workers)
    if shared.token_generated:
        log.warning("balancer-manager token generated", token=shared.token, path=cfg.manager_path)
    try:
        if cfg.workers == 1:
            return _run_worker(cfg, shared, 0, None)
        socks = _reuseport_sockets(cfg.host, cfg.port, cfg.workers)
    except OSError as exc:
        log.error(f"{exc} (see --host/--port)")
        return 1
    children: list[int] = []
    for worker in range(1, cfg.workers):
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running the parent's cleanup
            for other, sock in enumerate(socks):
                if other != worker:
                    sock.close()
            code = 1
            try:
                code = _run_worker(cfg, shared, worker, socks[worker])
            finally:
                os._exit(code)
        children.append(pid)
    for sock in socks[1:]:
        sock.close()
    try:
        return _run_worker(cfg, shared, 0, socks[0])
    finally:
        _stop_children(children, cfg.shutdown_grace)


def _stop_children(children: list[int], grace: float) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 1
    for pid in children:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)
