"""The balancer's HTTP server: the balancer-manager page at ``--manager-path``, everything else proxied.

:func:`prepare` builds the state every worker process shares (scoreboard, manager token and nonce)
before any worker starts; :func:`serve_balancer` runs one worker on it.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Awaitable
from dataclasses import dataclass

import trio

from sesh.balancer.balancer import Balancer
from sesh.balancer.health import run_health_checks
from sesh.balancer.manager import Manager
from sesh.balancer.members import Scoreboard
from sesh.balancer.proxy import Proxy
from sesh.config import BalancerConfig
from sesh.log import get_logger
from sesh.net.fdstream import WaitTimer
from sesh.net.http_server import BUSY, HTTPExchange, HTTPServerCounters, HTTPTimeouts, serve_http_connection
from sesh.net.server import ConnectionCounter, bound_port, default_connection_limit, open_listeners, serve_connections
from sesh.net.shutdown import Shutdown

log = get_logger()


@dataclass(frozen=True, slots=True)
class SharedState:
    """What every worker process of one balancer shares."""

    board: Scoreboard
    token: str
    nonce: str
    token_generated: bool


def prepare(cfg: BalancerConfig, workers: int = 1) -> SharedState:
    """Create the scoreboard (shared memory when ``workers`` > 1) and write the configured state."""
    board = Scoreboard(len(cfg.members), workers, shared=workers > 1)
    Balancer(cfg, board).initialize()
    token = cfg.manager_token or secrets.token_urlsafe(18)
    return SharedState(board, token, secrets.token_hex(16), not cfg.manager_token)


async def serve_balancer(
    cfg: BalancerConfig,
    shutdown: Shutdown,
    *,
    shared: SharedState | None = None,
    worker: int = 0,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one worker: on ``sock`` (a bound, listening socket from the parent) or on a fresh
    listener for ``cfg.host:cfg.port``. Reports the bound port."""
    shared = shared or prepare(cfg)
    balancer = Balancer(cfg, shared.board, worker)
    if sock is not None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    else:
        listeners = await open_listeners(cfg.host, cfg.port)
    port = bound_port(listeners)
    server_name = socket.gethostname().encode()
    timer = WaitTimer()
    proxy = Proxy(cfg, balancer, server_name=server_name, own_port=port, timer=timer)
    manager = Manager(cfg, balancer, token=shared.token, nonce=shared.nonce, pools=proxy.pools)
    counters = HTTPServerCounters()
    timeouts = HTTPTimeouts(request_head=cfg.request_head_timeout, send=cfg.send_timeout)
    manager_path = cfg.manager_path.rstrip("/").encode() or b"/"

    def handle(exchange: HTTPExchange) -> Awaitable[None]:
        # A plain function handing back the handler's coroutine: one coroutine less per request.
        target = exchange.request.target
        if target.startswith(manager_path):  # (no copy of the path for the requests it rules out)
            path = target.partition(b"?")[0]
            if path == manager_path or path.rstrip(b"/") == manager_path:
                return manager.handle(exchange)
        return proxy.handle(exchange)

    # Each client connection may hold a member connection too.
    connections = ConnectionCounter(cfg.max_connections or default_connection_limit(2))

    async def handle_connection(stream: trio.SocketStream) -> None:
        # max_body=None: bodies stream through to members, never held whole here.
        await serve_http_connection(
            stream, handle, shutdown, max_body=None, counters=counters, timer=timer, timeouts=timeouts
        )

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(timer.run)
            if worker == 0:
                # One process checks health for all: the results live in the shared scoreboard.
                nursery.start_soon(run_health_checks, balancer, shutdown)
            task_status.started(port)
            await serve_connections(listeners, handle_connection, shutdown, connections, refusal=BUSY)
            nursery.cancel_scope.cancel()
    finally:
        for pool in proxy.pools:
            pool.close_idle()
    if worker == 0:
        log.info("stopped")
