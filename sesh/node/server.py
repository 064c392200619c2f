"""The app node's HTTP server: routes ``/sesh/status``, runs the demo page or the ASGI app, and drives
the session backend around each request (open the slot, run the app, close the slot before the last
byte of the response)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import trio

from sesh.config import ConfigError, NodeConfig
from sesh.core.manager import SessionManager
from sesh.net.http_server import HTTPExchange, HTTPServerCounters, serve_http_connection
from sesh.net.server import ConnectionCounter, bound_port, close_listeners, open_listeners, serve_connections
from sesh.net.shutdown import Shutdown
from sesh.node import demo
from sesh.node.asgi import ASGIApp, Lifespan, http_scope, load_app, run_http
from sesh.node.backend import RequestInfo, SessionBackend, SessionSlot
from sesh.node.clock import wall_time
from sesh.node.local import LocalBackend
from sesh.protocol.session_ref import cookie_values, is_safe_value, set_cookie_header, split_path_parameter

STATUS_PATH = b"/sesh/status"


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    name: str
    route: str
    mode: str
    url: str
    uptime: float
    requests: int
    bad_requests: int
    responses: dict[str, int]
    connections: int
    total_connections: int
    backend: Any


def make_backend(cfg: NodeConfig) -> SessionBackend:
    if cfg.mode == "local":
        manager = SessionManager(route=cfg.route, max_inactive=cfg.max_inactive)
        return LocalBackend(manager, expire_interval=cfg.expire_interval)
    if cfg.mode == "msm":
        from sesh.node.msm import make_msm_backend  # imported only when used, like the roles in cli.py

        return make_msm_backend(cfg)
    if cfg.mode == "cluster":
        from sesh.node.cluster import make_cluster_backend

        return make_cluster_backend(cfg)
    raise ConfigError(f"--mode: {cfg.mode} is not available in this version yet (use --mode local)")


class Node:
    def __init__(self, cfg: NodeConfig, backend: SessionBackend, app: ASGIApp | None) -> None:
        self.cfg = cfg
        self.backend = backend
        self.app = app
        self.lifespan_state: dict[str, Any] = {}
        self.http = HTTPServerCounters()
        self.connections = ConnectionCounter()
        self.started = trio.current_time()
        self.url = ""
        self.server_address = (cfg.host, cfg.port)

    def statistics(self) -> NodeStatistics:
        conns = self.connections.statistics()
        return NodeStatistics(
            name=self.cfg.name,
            route=self.cfg.route,
            mode=self.backend.mode,
            url=self.url,
            uptime=round(trio.current_time() - self.started, 3),
            requests=self.http.requests,
            bad_requests=self.http.bad_requests,
            responses={f"{k}xx": v for k, v in sorted((self.http.responses_by_class or {}).items())},
            connections=conns.current_connections,
            total_connections=conns.total_connections,
            backend=self.backend.statistics(),
        )

    async def handle(self, exchange: HTTPExchange) -> None:
        request = exchange.request
        target, path_id = split_path_parameter(request.target)
        raw_path = target.partition(b"?")[0]
        if raw_path == STATUS_PATH:
            await self._status(exchange)
            return
        cookies = cookie_values((v for k, v in request.headers if k == b"cookie"), self.cfg.cookie_name.encode())
        requested = ([path_id] if path_id is not None else []) + cookies
        info = RequestInfo(
            method=request.method.decode("latin-1"),
            path=unquote_to_bytes(raw_path).decode("utf-8", "replace"),
            requested_ids=tuple(v.decode("ascii") for v in requested if is_safe_value(v)),
        )
        slot = await self.backend.open_slot(info, wall_time())
        committed: list[tuple[bytes, bytes]] | None = None

        async def commit_session() -> list[tuple[bytes, bytes]]:
            nonlocal committed
            if committed is None:
                cookie = slot.cookie_id()
                await self.backend.close_slot(slot, wall_time())
                committed = (
                    [(b"set-cookie", set_cookie_header(self.cfg.cookie_name, cookie, secure=self.cfg.cookie_secure))]
                    if cookie is not None
                    else []
                )
            return committed

        try:
            if self.app is None:
                # Like Tomcat's encodeURL: put the id in links until the client is known to keep cookies.
                await self._demo(exchange, slot, path_id is not None or not cookies, commit_session)
            else:
                scope = http_scope(exchange, target, slot, self.server_address)
                scope["state"] = dict(self.lifespan_state)
                await run_http(self.app, scope, exchange, commit_session)
        finally:
            if committed is None:
                with trio.CancelScope(shield=True):
                    await commit_session()

    async def _demo(
        self,
        exchange: HTTPExchange,
        slot: SessionSlot,
        rewrite_urls: bool,
        commit_session: Callable[[], Awaitable[list[tuple[bytes, bytes]]]],
    ) -> None:
        request = exchange.request
        if request.method not in (b"GET", b"HEAD", b"POST"):
            extra = await commit_session()
            await exchange.respond(405, [(b"allow", b"GET, HEAD, POST"), *extra])
            return
        await exchange.read_body()
        tx = slot.transaction(create=True)
        assert tx is not None
        hits = demo.record_hit(tx, self.cfg.name)
        view = demo.DemoView(self.cfg.name, self.cfg.route, tx.id, tx.session.created, hits)
        accept = request.header(b"accept") or b""
        if b"application/json" in accept:
            body, ctype = demo.demo_json(view), b"application/json"
        else:
            reload_href = f"/;jsessionid={tx.id}" if rewrite_urls else "/"
            body, ctype = demo.demo_html(view, reload_href), b"text/html; charset=utf-8"
        extra = await commit_session()
        headers = [(b"content-type", ctype), (b"cache-control", b"no-store"), *extra]
        await exchange.respond(200, headers, body)

    async def _status(self, exchange: HTTPExchange) -> None:
        body = json.dumps(dataclasses.asdict(self.statistics()), indent=1).encode() + b"\n"
        await exchange.respond(200, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body)


async def serve_node(
    cfg: NodeConfig, shutdown: Shutdown, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    backend = make_backend(cfg)
    app = load_app(cfg.app) if cfg.app else None
    node = Node(cfg, backend, app)

    async def handle_connection(stream: trio.SocketStream) -> None:
        await serve_http_connection(stream, node.handle, shutdown, max_body=cfg.max_body, counters=node.http)

    lifespan_stop = trio.Event()
    listeners: list[trio.SocketListener] = []
    async with trio.open_nursery() as nursery:
        try:
            # The backend is ready before the HTTP port opens: a cluster node has every session from its
            # peers by then (state transfer), so no client is ever served from a half-filled node.
            await nursery.start(backend.run, shutdown)
            listeners = await open_listeners(cfg.host, cfg.port)
            port = bound_port(listeners)
            node.server_address = (cfg.host, port)
            node.url = f"http://{cfg.host}:{port}/"
            if app is not None:
                lifespan = Lifespan(app)
                node.lifespan_state = lifespan.state
                await nursery.start(lifespan.run, lifespan_stop)
            task_status.started(port)
            await serve_connections(listeners, handle_connection, shutdown, node.connections)
        finally:
            lifespan_stop.set()
            close_listeners(listeners)
    print(f"sesh node {cfg.name}: stopped", file=sys.stderr, flush=True)
