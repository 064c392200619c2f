"""Helpers for the msm end-to-end suites (no tests here): store processes and a cookie-keeping client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import trio

from tests.http_client import Reply, get
from tests.procs import SeshProcess, free_port, wait_for_port
from tests.references import reference

STORE_KINDS = ["memcached", "sesh-store"]


class StoreProc:
    """A store node on a fixed port that can be killed, paused and started again on the same port."""

    def __init__(self, kind: str, sesh: Callable[..., SeshProcess], port: int | None = None) -> None:
        self.kind = kind
        self._sesh = sesh
        self.port = port or free_port()
        self._mc: subprocess.Popen[bytes] | None = None
        self._proc: SeshProcess | None = None
        self.start()

    def start(self) -> None:
        if self.kind == "memcached":
            binary = reference("memcached")
            user = ["-u", "root"] if os.geteuid() == 0 else []
            self._mc = subprocess.Popen(
                [binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", *user],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_for_port(self.port)
        else:
            self._proc = self._sesh("store", "--port", str(self.port))

    @property
    def pid(self) -> int:
        if self._mc is not None:
            return self._mc.pid
        assert self._proc is not None
        return self._proc.proc.pid

    def kill(self) -> None:
        if self._mc is not None:
            self._mc.kill()
            self._mc.wait(10)
            self._mc = None
        if self._proc is not None:
            self._proc.kill()
            self._proc = None

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def nodes_flag(stores: list[StoreProc]) -> str:
    return ",".join(f"n{i + 1}:127.0.0.1:{s.port}" for i, s in enumerate(stores))


class Browser:
    """Keeps the session cookie like a browser and reads the demo page's JSON."""

    def __init__(self, cookie: str = "") -> None:
        self.cookie = cookie

    async def hit(self, port: int, path: str = "/") -> dict[str, Any]:
        reply = await self._get(port, path)
        assert reply.status == 200, reply.body
        return self._page(reply)

    async def refused(self, port: int, path: str = "/") -> None:
        """The node answers 503 with Retry-After and leaves the cookie alone (no new session)."""
        self._check_refused(await self._get(port, path))

    async def hit_when_served(self, port: int, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109 a polling helper's bound, applied with fail_after
        """The page, once the node serves it: until then every answer must be a refusal (503)."""
        with trio.fail_after(timeout):
            while True:
                reply = await self._get(port, "/")
                if reply.status == 200:
                    return self._page(reply)
                self._check_refused(reply)
                await trio.sleep(0.1)

    async def _get(self, port: int, path: str) -> Reply:
        headers = [("accept", "application/json")]
        if self.cookie:
            headers.append(("cookie", f"JSESSIONID={self.cookie}"))
        return await get(port, path, headers)

    def _page(self, reply: Reply) -> dict[str, Any]:
        for value in reply.headers_named(b"set-cookie"):
            name, _, rest = value.decode().partition("=")
            if name == "JSESSIONID":
                self.cookie = rest.split(";", 1)[0]
        data: dict[str, Any] = json.loads(reply.body)
        assert data["session_id"] == self.cookie
        return data

    @staticmethod
    def _check_refused(reply: Reply) -> None:
        assert reply.status == 503, (reply.status, reply.body)
        assert reply.headers_named(b"retry-after") == [b"1"]
        assert reply.headers_named(b"set-cookie") == []


class AppBrowser:
    """Keeps the session cookie like a browser, for an ASGI app's JSON pages (tests/apps)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""

    async def get(self, path: str) -> dict[str, Any]:
        headers = [("cookie", f"JSESSIONID={self.cookie}")] if self.cookie else []
        reply = await get(self.port, path, headers)
        assert reply.status == 200, (reply.status, reply.body)
        for value in reply.headers_named(b"set-cookie"):
            name, _, rest = value.decode().partition("=")
            if name == "JSESSIONID":
                self.cookie = rest.split(";", 1)[0]
        data: dict[str, Any] = json.loads(reply.body)
        return data


async def status(port: int) -> dict[str, Any]:
    reply = await get(port, "/sesh/status")
    assert reply.status == 200
    backend: dict[str, Any] = json.loads(reply.body)["backend"]
    return backend


async def wait_status(port: int, check: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109 a polling helper's bound, applied with fail_after
    """Poll a node's backend statistics until ``check`` holds (bounded in time)."""
    with trio.fail_after(timeout):
        while True:
            backend = await status(port)
            if check(backend):
                return backend
            await trio.sleep(0.05)


def store_node(session_id: str) -> str:
    return session_id.partition(".")[0].partition("-")[2]
