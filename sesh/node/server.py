"""The app node's HTTP server: routes ``/sesh/status``, runs the demo page or the ASGI app, and drives
the session backend around each request: wait for the session's turn, open the slot, run the app,
close the slot before the response head leaves, and re-run or refuse (503) a request whose session
could not be stored (the acknowledge rule, :mod:`sesh.node.acknowledge`)."""

from __future__ import annotations

import dataclasses
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import trio

from sesh.config import ConfigError, NodeConfig
from sesh.core.manager import SessionManager
from sesh.core.samples import RecentSamples
from sesh.log import get_logger
from sesh.net.fdstream import WaitTimer
from sesh.net.http_server import BUSY, HTTPExchange, HTTPServerCounters, HTTPTimeouts, serve_http_connection
from sesh.net.server import (
    ConnectionCounter,
    bound_port,
    close_listeners,
    default_connection_limit,
    open_listeners,
    serve_connections,
)
from sesh.net.shutdown import Shutdown
from sesh.node import demo
from sesh.node.acknowledge import (
    RETRY_AFTER,
    AcknowledgeCounters,
    AcknowledgeStatistics,
    ReplayableBody,
    SessionQueues,
    session_key,
)
from sesh.node.asgi import ASGIApp, Lifespan, http_scope, load_app, run_http
from sesh.node.backend import (
    BackendStatistics,
    RequestInfo,
    SessionBackend,
    SessionConflict,
    SessionSlot,
    SessionUnavailable,
)
from sesh.node.clock import Clock, wall_time
from sesh.node.local import LocalBackend
from sesh.node.status import status_allowed
from sesh.protocol.session_ref import (
    cookie_values,
    expired_cookie_header,
    session_candidates,
    set_cookie_header,
    split_path_parameter,
)

log = get_logger()

STATUS_PATH = b"/sesh/status"
log = get_logger("node")


# The demo page's own headers, encoded once (what respond() would encode on every request).
_JSON_LINES = b"content-type: application/json\r\ncache-control: no-store\r\n"
_HTML_LINES = b"content-type: text/html; charset=utf-8\r\ncache-control: no-store\r\n"
_DEMO_METHODS = (b"GET", b"HEAD", b"POST")


class _Abort(Exception):
    """A conflict after the response head left: end the connection so the response never completes."""


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds from a request's head to its response, over the node's last ``samples`` requests."""

    p50: float | None
    p99: float | None
    samples: int


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    name: str
    route: str
    mode: str
    url: str
    uptime: float
    requests: int
    bad_requests: int
    rejected_session_ids: int  # requested ids not tried: malformed or beyond MAX_SESSION_CANDIDATES
    status_requests: int  # requests to the status path, served or refused (part of requests)
    status_refused: int  # status requests refused (proxied or not loopback, without the token)
    responses: dict[str, int]
    connections: int
    total_connections: int
    latency: Latency
    acknowledge: AcknowledgeStatistics
    backend: BackendStatistics
    worker: int  # which of --workers answered (0 without)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def make_backend(cfg: NodeConfig, clock: Clock = wall_time) -> SessionBackend:
    if cfg.mode == "local":
        manager = SessionManager(route=cfg.route, max_inactive=cfg.max_inactive)
        return LocalBackend(manager, expire_interval=cfg.expire_interval, clock=clock)
    if cfg.mode == "msm":
        from sesh.node.msm import make_msm_backend  # imported only when used, like the roles in cli.py

        return make_msm_backend(cfg, clock)
    if cfg.mode == "cluster":
        from sesh.node.cluster import make_cluster_backend

        return make_cluster_backend(cfg, clock)
    raise ConfigError(f"--mode: {cfg.mode} is not available in this version yet (use --mode local)")


class Node:
    def __init__(self, cfg: NodeConfig, backend: SessionBackend, app: ASGIApp | None) -> None:
        self.cfg = cfg
        self.backend = backend
        self.app = app
        self.lifespan_state: dict[str, Any] = {}
        self.worker = 0
        self.http = HTTPServerCounters()
        self.connections = ConnectionCounter(cfg.max_connections or default_connection_limit())
        self.status_path = cfg.status_path.encode()
        self.cookie_name = cfg.cookie_name.encode()
        self.status_requests = 0
        self.status_refused = 0
        self.rejected_session_ids = 0
        self.started = trio.current_time()
        self.url = ""
        self.server_address = (cfg.host, cfg.port)
        self.ack = AcknowledgeCounters()
        self.queues = SessionQueues(cfg.session_queue, self.ack)
        # The demo page only counts a hit: running it again on the current session is what the client
        # asked for. An ASGI app may have side effects beyond its session, so it opts in.
        self.rerunnable = app is None or cfg.app_rerun
        self.latency = RecentSamples()

    def statistics(self) -> NodeStatistics:
        conns = self.connections.statistics()
        http = self.http.statistics()
        return NodeStatistics(
            name=self.cfg.name,
            route=self.cfg.route,
            mode=self.backend.mode,
            url=self.url,
            uptime=round(trio.current_time() - self.started, 3),
            requests=http.requests,
            bad_requests=http.bad_requests,
            rejected_session_ids=self.rejected_session_ids,
            status_requests=self.status_requests,
            status_refused=self.status_refused,
            responses={f"{k}xx": v for k, v in http.responses_by_class.items()},
            connections=conns.current_connections,
            total_connections=conns.total_connections,
            latency=Latency(
                p50=_rounded(self.latency.percentile(0.5)),
                p99=_rounded(self.latency.percentile(0.99)),
                samples=len(self.latency),
            ),
            acknowledge=self.queues.statistics(),
            backend=self.backend.statistics(),
            worker=self.worker,
        )

    async def handle(self, exchange: HTTPExchange) -> None:
        request = exchange.request
        target, path_id = split_path_parameter(request.target)
        raw_path, _, query = target.partition(b"?")
        if self.status_path and raw_path == self.status_path:
            await self._status(exchange, query)
            return
        cookies = cookie_values([v for k, v in request.headers if k == b"cookie"], self.cookie_name)
        requested, rejected = session_candidates(path_id, cookies)
        self.rejected_session_ids += rejected
        started = trio.current_time()
        # Most paths hold no escape, and unquote_to_bytes would hand them back as they are.
        path = unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path
        info = RequestInfo(
            method=request.method.decode("latin-1"),
            path=path.decode("utf-8", "replace"),
            requested_ids=requested,
        )
        async with self.queues.serialized(session_key(info.requested_ids)) as admitted:
            if not admitted:
                await self._unavailable(exchange, "too many requests are waiting for this session")
                return
            try:
                await self._run(exchange, info, target, rewrite_urls=path_id is not None or not cookies)
            except _Abort:
                return  # response_complete stays False: the HTTP loop closes the connection
        self.latency.add(trio.current_time() - started)

    async def _run(self, exchange: HTTPExchange, info: RequestInfo, target: bytes, *, rewrite_urls: bool) -> None:
        """Open, run, close; on a conflict, re-run on a fresh slot while allowed, else refuse."""
        app = self.app
        body: ReplayableBody | None = None  # the app's, made at its first run, kept for its re-runs
        attempt = 0
        while True:
            try:
                slot = await self.backend.open_slot(info, self.backend.clock())
            except SessionUnavailable as exc:
                self.ack.unreadable += 1
                log.warning("session cannot be read: answering 503", path=info.path, reason=str(exc))
                await self._unavailable(exchange, "the session cannot be read now")
                return
            try:
                if app is None:
                    # Like Tomcat's encodeURL: put the id in links until the client is known to keep cookies.
                    await self._demo(exchange, slot, rewrite_urls)
                else:
                    if body is None:
                        body = ReplayableBody(exchange, keep=self.rerunnable)
                    await self._app(app, exchange, slot, body, target)
                return
            except SessionConflict as exc:
                self.ack.conflicts += 1
                if exchange.response_started:
                    self.ack.aborted += 1
                    log.warning("session not stored after the response head left: closing the connection",
                                path=info.path, reason=str(exc))
                    raise _Abort from exc
                if exc.rerun and self.rerunnable and attempt < self.cfg.session_reruns:
                    attempt += 1
                    self.ack.reruns += 1
                    continue
                log.warning("session not stored: answering 503", path=info.path, reason=str(exc),
                            reruns=attempt)
                await self._unavailable(exchange, "the session could not be stored")
                return

    async def _app(
        self, app: ASGIApp, exchange: HTTPExchange, slot: SessionSlot[Any], body: ReplayableBody, target: bytes
    ) -> None:
        """The ASGI app, which stores the session through the commit callback when it starts its response."""
        committed: list[tuple[bytes, bytes]] | None = None
        conflict: SessionConflict | None = None

        async def commit_session() -> list[tuple[bytes, bytes]]:
            nonlocal committed, conflict
            if conflict is not None:
                raise conflict  # every later call too: nothing may answer this request as a success
            if committed is None:
                try:
                    await self.backend.close_slot(slot, self.backend.clock())
                except SessionConflict as exc:
                    conflict = exc
                    raise
                # After close: a store failover during close may have given the session a new id.
                committed = self._session_cookies(slot)
            return committed

        try:
            scope = http_scope(exchange, target, slot, self.server_address)
            scope["state"] = dict(self.lifespan_state)
            await run_http(app, scope, exchange, commit_session, body.reader())
        finally:
            if committed is None and conflict is None:
                await self._close_unstored(slot)

    async def _close_unstored(self, slot: SessionSlot[Any]) -> None:
        """The handler failed or was cancelled before storing: close the slot anyway (locks, counts).
        Whatever it answered was not a success of a stored session."""
        with trio.CancelScope(shield=True):
            try:
                await self.backend.close_slot(slot, self.backend.clock())
            except SessionConflict as exc:
                self.ack.conflicts += 1
                log.warning("session not stored", path=slot.request.path, reason=str(exc))

    async def _unavailable(self, exchange: HTTPExchange, reason: str) -> None:
        self.ack.unavailable += 1
        headers = [(b"content-type", b"text/plain"), (b"cache-control", b"no-store"), (b"retry-after", RETRY_AFTER)]
        await exchange.respond(503, headers, f"503 Service Unavailable: {reason}; try again\n".encode())

    async def _demo(self, exchange: HTTPExchange, slot: SessionSlot[Any], rewrite_urls: bool) -> None:
        """The demo page. It closes the slot itself, at the one place it stores: the app's commit callback
        (a closure and two coroutine levels more) would be on every request of the common case."""
        request = exchange.request
        tx = None
        hits = 0
        settled = False  # the slot is closed, or its close refused: either way not to be closed again
        try:
            if request.method in _DEMO_METHODS:
                await exchange.read_body()
                tx = slot.transaction(create=True)
                assert tx is not None
                hits = demo.record_hit(tx, self.cfg.name)
            # Stored first, rendered after: a store failover while storing gives the session a new id,
            # and the page must show the id the Set-Cookie carries.
            try:
                await self.backend.close_slot(slot, self.backend.clock())
            except SessionConflict:
                settled = True
                raise
            settled = True
        finally:
            if not settled:
                await self._close_unstored(slot)
        extra = self._session_cookies(slot)
        if tx is None:
            await exchange.respond(405, [(b"allow", b"GET, HEAD, POST"), *extra])
            return
        view = demo.DemoView(self.cfg.name, self.cfg.route, tx.id, tx.session.created, hits)
        accept = request.header(b"accept") or b""
        if b"application/json" in accept:
            body, lines = demo.demo_json(view), _JSON_LINES
        else:
            reload_href = f"/;jsessionid={tx.id}" if rewrite_urls else "/"
            body, lines = demo.demo_html(view, reload_href), _HTML_LINES
        if extra:
            lines += b"".join(b"%s: %s\r\n" % header for header in extra)
        await exchange.respond_encoded(200, lines, body, has_date=False)

    def _session_cookies(self, slot: SessionSlot[Any]) -> list[tuple[bytes, bytes]]:
        """The Set-Cookie the response carries: the session's id when the client does not hold it yet;
        an expired cookie when the request invalidated its session (a logout) and made no new one, so the
        client stops sending (and a balancer stops routing on) a dead id; else none."""
        name, secure = self.cfg.cookie_name, self.cfg.cookie_secure
        cookie = slot.cookie_id()
        if cookie is not None:
            return [(b"set-cookie", set_cookie_header(name, cookie, secure=secure))]
        current = slot.current
        if current is not None and current.invalidated:
            return [(b"set-cookie", expired_cookie_header(name, secure=secure))]
        return []

    async def _status(self, exchange: HTTPExchange, query: bytes) -> None:
        request = exchange.request
        self.status_requests += 1
        if not status_allowed(request.headers, query, exchange.client, self.cfg.status_token):
            self.status_refused += 1
            await exchange.respond(
                403,
                [(b"content-type", b"text/plain"), (b"cache-control", b"no-store")],
                b"the node status is served to local clients, or with --status-token\n",
            )
            return
        body = json.dumps(dataclasses.asdict(self.statistics()), indent=1).encode() + b"\n"
        await exchange.respond(200, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body)


async def serve_node(
    cfg: NodeConfig,
    shutdown: Shutdown,
    *,
    clock: Clock = wall_time,
    sock: socket.socket | None = None,
    worker: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the node on a fresh listener, or on ``sock`` (a bound, listening socket from the parent
    of ``--workers``)."""
    backend = make_backend(cfg, clock)
    app = load_app(cfg.app) if cfg.app else None
    node = Node(cfg, backend, app)
    node.worker = worker

    timeouts = HTTPTimeouts(request_head=cfg.request_head_timeout)
    timer = WaitTimer()  # times every connection's parked waits (keep-alive, request reads, sends)

    async def handle_connection(stream: trio.SocketStream) -> None:
        await serve_http_connection(
            stream, node.handle, shutdown, max_body=cfg.max_body, counters=node.http, timeouts=timeouts,
            timer=timer,
        )

    lifespan_stop = trio.Event()
    listeners: list[trio.SocketListener] = []
    async with trio.open_nursery() as nursery:
        try:
            # The backend is ready before the HTTP port opens: a cluster node has every session from its
            # peers by then (state transfer), so no client is ever served from a half-filled node.
            await nursery.start(backend.run, shutdown)
            if sock is not None:
                listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
            else:
                listeners = await open_listeners(cfg.host, cfg.port)
            port = bound_port(listeners)
            node.server_address = (cfg.host, port)
            node.url = f"http://{cfg.host}:{port}/"
            if app is not None:
                lifespan = Lifespan(app)
                node.lifespan_state = lifespan.state
                await nursery.start(lifespan.run, lifespan_stop)
            task_status.started(port)
            async with trio.open_nursery() as timing:
                await timing.start(timer.run)
                await serve_connections(listeners, handle_connection, shutdown, node.connections, refusal=BUSY)
                timing.cancel_scope.cancel()
        finally:
            lifespan_stop.set()
            close_listeners(listeners)
    log.info("stopped")
