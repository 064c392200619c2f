"""The local node over real loopback sockets: serve_node runs in-process on port 0."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import AsyncIterator

import pytest
import trio

from sesh.config import NodeConfig
from sesh.net.shutdown import Shutdown
from sesh.node.clock import Clock, wall_time
from sesh.node.server import serve_node
from tests.http_client import HTTPTestClient, Reply, get

JSON = [("Accept", "application/json")]
COOKIE = re.compile(rb"^JSESSIONID=([0-9A-F]{32}\.a); Path=/; HttpOnly; SameSite=Lax$")


class RunningNode:
    def __init__(self, port: int, shutdown: Shutdown) -> None:
        self.port = port
        self.shutdown = shutdown


class ManualClock:
    """The node's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def start_node(nursery: trio.Nursery, clock: Clock = wall_time, **overrides: object) -> RunningNode:
    cfg = NodeConfig(**{"port": 0, "name": "node1", "route": "a", **overrides})  # type: ignore[arg-type]
    shutdown = Shutdown()
    port = await nursery.start(functools.partial(serve_node, cfg, shutdown, clock=clock))
    return RunningNode(port, shutdown)


@pytest.fixture
async def node(nursery: trio.Nursery) -> AsyncIterator[RunningNode]:
    running = await start_node(nursery)
    yield running
    running.shutdown.request()


def session_cookie(reply: Reply) -> str:
    cookies = reply.headers_named(b"set-cookie")
    assert len(cookies) == 1, reply.headers
    match = COOKIE.match(cookies[0])
    assert match, cookies[0]
    return match.group(1).decode()


async def test_first_visit_creates_session_and_cookie(node: RunningNode) -> None:
    reply = await get(node.port, "/", JSON)
    assert reply.status == 200
    data = json.loads(reply.body)
    assert data["node"] == "node1" and data["route"] == "a" and data["hits"] == 1
    assert data["session_id"] == session_cookie(reply)
    assert isinstance(data["created"], float)


async def test_cookie_keeps_session_and_counts_hits_on_one_keep_alive_connection(node: RunningNode) -> None:
    client = await HTTPTestClient.connect(node.port)
    first = await client.request("GET", "/", JSON)
    sid = session_cookie(first)
    for expected_hits in (2, 3, 4):
        reply = await client.request("GET", "/", [*JSON, ("Cookie", f"JSESSIONID={sid}")])
        data = json.loads(reply.body)
        assert (data["session_id"], data["hits"]) == (sid, expected_hits)
        assert reply.headers_named(b"set-cookie") == []
        assert reply.keep_alive
    await client.aclose()


async def test_path_parameter_carries_the_session_without_cookies(node: RunningNode) -> None:
    first = await get(node.port, "/", JSON)
    sid = json.loads(first.body)["session_id"]
    reply = await get(node.port, f"/;jsessionid={sid}", JSON)
    assert json.loads(reply.body) | {"created": 0} == {
        "node": "node1", "route": "a", "session_id": sid, "created": 0, "hits": 2
    }
    page = await get(node.port, f"/;jsessionid={sid}")
    assert f'href="/;jsessionid={sid}"'.encode() in page.body
    assert sid.encode() in page.body and b"node1" in page.body


@pytest.mark.parametrize(
    "cookie",
    ["0123456789ABCDEF0123456789ABCDEF.a", "garbage", "x" * 300, "ABC.a", "'; DROP TABLE"],
)
async def test_unknown_or_malformed_ids_get_a_fresh_session(node: RunningNode, cookie: str) -> None:
    reply = await get(node.port, "/", [*JSON, ("Cookie", f"JSESSIONID={cookie}")])
    assert reply.status == 200
    data = json.loads(reply.body)
    assert data["hits"] == 1
    assert data["session_id"] == session_cookie(reply) != cookie


async def test_expired_session_is_replaced(nursery: trio.Nursery) -> None:
    clock = ManualClock()
    running = await start_node(nursery, clock, max_inactive=1)
    sid = json.loads((await get(running.port, "/", JSON)).body)["session_id"]
    clock.now += 0.9
    assert json.loads((await get(running.port, "/", [*JSON, ("Cookie", f"JSESSIONID={sid}")])).body)["hits"] == 2
    clock.now += 1.2
    reply = await get(running.port, "/", [*JSON, ("Cookie", f"JSESSIONID={sid}")])
    assert json.loads(reply.body)["session_id"] != sid
    status = json.loads((await get(running.port, "/sesh/status")).body)
    assert status["backend"]["sessions"]["expired"] == 1
    running.shutdown.request()


async def test_pipelined_requests_are_answered_in_order(node: RunningNode) -> None:
    client = await HTTPTestClient.connect(node.port)
    await client.send_raw(
        b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n"
        b"GET /sesh/status HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    first = await client.read_reply()
    second = await client.read_reply()
    assert json.loads(first.body)["hits"] == 1
    assert json.loads(second.body)["requests"] == 2
    await client.aclose()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), 400),
        (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 5000000\r\n\r\n", 413),
    ],
)
async def test_bad_requests_get_4xx_and_the_node_keeps_serving(node: RunningNode, raw: bytes, status: int) -> None:
    client = await HTTPTestClient.connect(node.port)
    await client.send_raw(raw)
    answer = await client.read_until_closed()
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:80]
    assert b"connection: close" in answer.lower()
    await client.aclose()
    reply = await get(node.port, "/", JSON)
    assert reply.status == 200
    status_doc = json.loads((await get(node.port, "/sesh/status")).body)
    assert status_doc["bad_requests"] == 1


async def test_chunked_body_over_limit_is_413(nursery: trio.Nursery) -> None:
    running = await start_node(nursery, max_body=1000)
    client = await HTTPTestClient.connect(running.port)
    await client.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    await client.send_raw(b"400\r\n" + b"x" * 1024 + b"\r\n")
    answer = await client.read_until_closed()
    await client.aclose()
    assert answer.startswith(b"HTTP/1.1 413 ")
    running.shutdown.request()


async def test_post_body_is_read_and_connection_reused(node: RunningNode) -> None:
    client = await HTTPTestClient.connect(node.port)
    reply = await client.request("POST", "/", JSON, body=b"x" * 100_000)
    assert reply.status == 200 and reply.keep_alive
    sid = json.loads(reply.body)["session_id"]
    reply = await client.request("GET", "/", [*JSON, ("Cookie", f"JSESSIONID={sid}")])
    assert json.loads(reply.body)["hits"] == 2
    await client.aclose()


async def test_head_gets_headers_without_body(node: RunningNode) -> None:
    client = await HTTPTestClient.connect(node.port)
    reply = await client.request("HEAD", "/")
    assert reply.status == 200 and reply.body == b""
    assert int(reply.header(b"content-length") or 0) > 0
    follow = await client.request("GET", "/sesh/status")
    assert follow.status == 200
    await client.aclose()


async def test_client_disconnecting_mid_request_harms_nobody(node: RunningNode) -> None:
    for partial in (b"GET / HTTP/1.1\r\nHost: x\r\n", b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc"):
        client = await HTTPTestClient.connect(node.port)
        await client.send_raw(partial)
        await client.aclose()
    await trio.sleep(0.05)
    reply = await get(node.port, "/", JSON)
    assert reply.status == 200
    status = json.loads((await get(node.port, "/sesh/status")).body)
    assert status["connections"] == 1  # only the status request's own connection is still open


async def test_expect_100_continue(node: RunningNode) -> None:
    client = await HTTPTestClient.connect(node.port)
    await client.send_raw(
        b"POST / HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    with trio.fail_after(5):
        interim = await client.stream.receive_some(100)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send_raw(b"body")
    reply = await client.read_reply()
    assert reply.status == 200
    await client.aclose()


async def test_status_reports_statistics(node: RunningNode) -> None:
    await get(node.port, "/", JSON)
    await get(node.port, "/", JSON)
    status = json.loads((await get(node.port, "/sesh/status")).body)
    assert status["name"] == "node1" and status["route"] == "a" and status["mode"] == "local"
    assert status["requests"] == 3
    assert status["backend"]["sessions"]["active"] == 2
    assert status["backend"]["sessions"]["created"] == 2
    assert status["uptime"] >= 0


async def test_shutdown_closes_idle_keep_alive_connections(nursery: trio.Nursery) -> None:
    cfg = NodeConfig(port=0)
    shutdown = Shutdown()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        await serve_node(cfg, shutdown, task_status=task_status)
        done.set()

    port = await nursery.start(run)
    client = await HTTPTestClient.connect(port)
    assert (await client.request("GET", "/")).status == 200
    shutdown.request()
    with trio.fail_after(5):
        await done.wait()
        assert await client.read_until_closed() == b""
    await client.aclose()
