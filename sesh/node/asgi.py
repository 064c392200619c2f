"""Hosting an ASGI 3 application: the http scope (with ``scope["session"]``) and lifespan.

``scope["session"]`` is a mutable mapping backed by the sesh session, so Starlette's
``request.session`` works unchanged without its cookie-based SessionMiddleware. The session is created
only when the app first writes to it. The response head is held back until the first body message so
that a session created while the app runs still gets its Set-Cookie, and the head is sent only after
the session backend has stored the request's changes (the acknowledge rule, see
:mod:`sesh.node.acknowledge`): a store that refuses them raises :class:`SessionConflict` out of
:func:`run_http` with nothing sent yet, so the node can re-run the app or answer 503.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

import trio

from sesh.config import ConfigError
from sesh.core.mapping import SessionMapping
from sesh.log import get_logger
from sesh.net.http_server import HTTPExchange
from sesh.node.acknowledge import BodyReader
from sesh.node.backend import SessionConflict, SessionSlot

log = get_logger("asgi")

# How long an app's lifespan startup or shutdown may take before the node gives up on it.
LIFESPAN_TIMEOUT = 10.0

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def load_app(spec: str) -> ASGIApp:
    """``package.module:attr`` -> the application object; errors name ``--app``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--app: expected package.module:attr, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--app: cannot import {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"--app: {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"--app: {spec!r} is not callable")
    app: ASGIApp = obj
    return app


class ScopeSession(MutableMapping[str, Any]):
    """``scope["session"]``: the core's :class:`SessionMapping`, made lazy. Reads see the session if the
    request has one; the first write creates it."""

    def __init__(self, slot: SessionSlot[Any]) -> None:
        self._slot = slot

    def _view(self, create: bool) -> SessionMapping | None:
        tx = self._slot.transaction(create=create)
        return None if tx is None else SessionMapping(tx)

    def __getitem__(self, key: str) -> Any:
        view = self._view(False)
        if view is None:
            raise KeyError(key)
        return view[key]

    def __setitem__(self, key: str, value: Any) -> None:
        view = self._view(True)
        assert view is not None
        view[key] = value

    def __delitem__(self, key: str) -> None:
        view = self._view(False)
        if view is None:
            raise KeyError(key)
        del view[key]

    def __contains__(self, key: object) -> bool:
        view = self._view(False)
        return view is not None and key in view

    def __iter__(self) -> Iterator[str]:
        view = self._view(False)
        return iter(()) if view is None else iter(view)

    def __len__(self) -> int:
        view = self._view(False)
        return 0 if view is None else len(view)

    def clear(self) -> None:
        """Starlette's logout idiom; sesh invalidates the session, as HttpSession.invalidate()."""
        view = self._view(False)
        if view is not None:
            view.invalidate()

    @property
    def id(self) -> str | None:
        view = self._view(False)
        return None if view is None else view.id


def http_scope(exchange: HTTPExchange, target: bytes, slot: SessionSlot[Any], server: tuple[str, int]) -> Scope:
    request = exchange.request
    raw_path, _, query = target.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version,
        "method": request.method.decode("latin-1"),
        "scheme": "http",
        "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(name, value) for name, value in request.headers],
        "client": exchange.client,
        "server": server,
        "session": ScopeSession(slot),
    }


async def run_http(
    app: ASGIApp,
    scope: Scope,
    exchange: HTTPExchange,
    commit_session: Callable[[], Awaitable[list[tuple[bytes, bytes]]]],
    body: BodyReader | None = None,
) -> None:
    """Run one request through the app. ``commit_session`` stores the session and returns the headers
    (Set-Cookie) to add; it is awaited before the response head is sent, and raises
    :class:`SessionConflict` (again on every later call) when the session cannot be stored, which then
    leaves this function with nothing sent. ``body`` reads the request body (a re-run replays it)."""
    response_done = trio.Event()
    head: dict[str, Any] = {}

    async def receive() -> Message:
        if body is not None:
            if not body.complete:
                piece, more = await body.receive()
                return {"type": "http.request", "body": piece, "more_body": more}
        elif not exchange.request_complete:
            piece = await exchange.receive_data()
            return {"type": "http.request", "body": piece, "more_body": not exchange.request_complete}
        await response_done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if head or exchange.response_started:
                raise RuntimeError("ASGI app sent http.response.start twice")
            head["status"] = int(message["status"])
            head["headers"] = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
            return
        if kind != "http.response.body":
            raise RuntimeError(f"ASGI app sent an unexpected message {kind!r}")
        if not head:
            raise RuntimeError("ASGI app sent a body before http.response.start")
        if exchange.response_complete:
            return
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not exchange.response_started:
            if not more:
                extra = await commit_session()
                headers = [(k, v) for k, v in head["headers"] if k != b"content-length"]
                await exchange.respond(head["status"], headers + extra, body)
                response_done.set()
                return
            extra = await commit_session()
            await exchange.start_response(head["status"], head["headers"] + extra)
        await exchange.send_data(body)
        if not more:
            await exchange.end_response()
            response_done.set()

    try:
        await app(scope, receive, send)
    except SessionConflict:
        raise  # out of our own send(): the node decides (re-run or 503)
    except Exception:
        # An app may catch what send() raised and fail with its own error: the commit below raises the
        # conflict again, so such a request is never answered 500 (or 200) in place of the node's rule.
        log.exception("the ASGI app failed", path=scope.get("path", ""))
        if not exchange.response_started:
            extra = await commit_session()
            await exchange.respond(500, [(b"content-type", b"text/plain"), *extra], b"Internal Server Error\n")
    finally:
        response_done.set()
    if exchange.response_started and not exchange.response_complete:
        return  # the app stopped mid-response: the connection closes and the client sees it
    if not exchange.response_started and head:
        extra = await commit_session()
        await exchange.respond(head["status"], head["headers"] + extra)


class Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after the last request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True

    async def run(self, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the app, report started, wait for ``stop``, then shut the app down.

        The app's lifespan task is shielded: it must still be running to answer lifespan.shutdown, so it
        is ended by ``stop`` (which the server sets in a ``finally``), not by an outer cancellation."""
        to_app_send, to_app_receive = trio.open_memory_channel[Message](2)
        from_app_send, from_app_receive = trio.open_memory_channel[Message](2)

        async def receive() -> Message:
            return await to_app_receive.receive()

        async def send(message: Message) -> None:
            await from_app_send.send(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}

        async def run_app() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                if self.supported:
                    self.supported = False
                    await from_app_send.send({"type": "lifespan.unsupported", "error": repr(exc)})

        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.shield = True
            nursery.start_soon(run_app)
            with trio.move_on_after(LIFESPAN_TIMEOUT) as startup:
                await to_app_send.send({"type": "lifespan.startup"})
                reply = await from_app_receive.receive()
            if startup.cancelled_caught:
                nursery.cancel_scope.cancel()
                raise ConfigError(f"--app: the application did not start within {LIFESPAN_TIMEOUT:g}s")
            if reply["type"] == "lifespan.startup.failed":
                nursery.cancel_scope.cancel()
                raise ConfigError(f"--app: the application failed to start: {reply.get('message', '')}")
            if reply["type"] != "lifespan.startup.complete":
                nursery.cancel_scope.cancel()  # the app does not speak lifespan: serve without it
                task_status.started()
                return
            task_status.started()
            await stop.wait()
            with trio.move_on_after(LIFESPAN_TIMEOUT):
                await to_app_send.send({"type": "lifespan.shutdown"})
                await from_app_receive.receive()
            nursery.cancel_scope.cancel()
