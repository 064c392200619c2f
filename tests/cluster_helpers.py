"""Helpers for the cluster end-to-end tests: node arguments on loopback multicast, requests, status."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import trio

from tests.http_client import HTTPTestClient

# Extra flags for every node, to check that the tests can fail: SESH_CLUSTER_TEST_FLAGS="--send-options
# async" makes the replication, SIGKILL, secret and concurrency tests fail on lost updates.
EXTRA = os.environ.get("SESH_CLUSTER_TEST_FLAGS", "").split()


def mcast_port() -> int:
    """A random group port per test, so parallel or leftover clusters never hear each other."""
    return random.randint(20000, 60000)


def cluster_args(name: str, group_port: int, *extra: str) -> list[str]:
    """A cluster node on loopback: multicast on 127.0.0.1 (TTL 0), fast heartbeats for quick tests."""
    return [
        "node", "--mode", "cluster", "--name", name, "--port", "0", "--receiver-port", "0",
        "--mcast-port", str(group_port), "--mcast-bind", "127.0.0.1", "--mcast-ttl", "0",
        "--frequency", "100", "--drop-time", "1000", "--ack-timeout", "2", *EXTRA, *extra,
    ]


class Hit:
    def __init__(self, status: int, body: dict[str, Any] | None, set_cookie: str | None) -> None:
        self.status = status
        self.body = body
        self.set_cookie = set_cookie

    @property
    def hits(self) -> int:
        assert self.body is not None
        hits: int = self.body["hits"]
        return hits

    @property
    def session_id(self) -> str:
        assert self.body is not None
        sid: str = self.body["session_id"]
        return sid


async def hit(port: int, session_id: str | None = None) -> Hit:
    """One demo-page request (it adds one hit); connection errors raise OSError-like trio errors."""
    headers = [("Accept", "application/json")]
    if session_id:
        headers.append(("Cookie", f"JSESSIONID={session_id}"))
    client = await HTTPTestClient.connect(port)
    try:
        reply = await client.request("GET", "/", headers)
    finally:
        await client.aclose()
    cookies = reply.headers_named(b"set-cookie")
    cookie = cookies[0].split(b";")[0].split(b"=", 1)[1].decode() if cookies else None
    body = json.loads(reply.body) if reply.status == 200 else None
    return Hit(reply.status, body, cookie)


async def try_hit(port: int, session_id: str | None = None) -> Hit | None:
    """:func:`hit`, with None for a request a dying node or a conflict cut short."""
    try:
        return await hit(port, session_id)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, AssertionError, trio.TooSlowError):
        return None


async def status(port: int) -> dict[str, Any]:
    client = await HTTPTestClient.connect(port)
    try:
        reply = await client.request("GET", "/sesh/status")
    finally:
        await client.aclose()
    backend: dict[str, Any] = json.loads(reply.body)["backend"]
    return backend


def member_states(backend: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["state"] for m in backend["members"]}


async def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:  # noqa: ASYNC109 a hang guard that names what it waited for
    """Poll an async predicate; the timeout is a hang guard, not a speed assertion."""
    with trio.fail_after(timeout):
        while True:
            if await predicate():
                return
            await trio.sleep(0.05)
