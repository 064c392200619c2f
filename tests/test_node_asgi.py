"""A real Starlette app hosted by the node: request.session backed by sesh sessions, lifespan, streaming."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio

from sesh.config import NodeConfig
from sesh.net.shutdown import Shutdown
from sesh.node.server import serve_node
from tests.http_client import HTTPTestClient, Reply


@pytest.fixture
async def port(nursery: trio.Nursery) -> AsyncIterator[int]:
    shutdown = Shutdown()
    cfg = NodeConfig(port=0, route="b", app="tests.apps.starlette_counter:app")
    yield await nursery.start(serve_node, cfg, shutdown)
    shutdown.request()


@pytest.fixture
async def client(port: int) -> AsyncIterator[HTTPTestClient]:
    client = await HTTPTestClient.connect(port)
    yield client
    await client.aclose()


def cookie_of(reply: Reply) -> str:
    (cookie,) = reply.headers_named(b"set-cookie")
    assert cookie.endswith(b"; Path=/; HttpOnly; SameSite=Lax")
    return cookie.split(b";")[0].decode()


async def test_request_session_counts_across_requests(client: HTTPTestClient) -> None:
    first = await client.request("GET", "/")
    assert json.loads(first.body) == {"count": 1, "keys": ["count"]}
    cookie = cookie_of(first)
    assert cookie.startswith("JSESSIONID=") and cookie.endswith(".b")
    for n in (2, 3):
        reply = await client.request("GET", "/", [("Cookie", cookie)])
        assert json.loads(reply.body)["count"] == n
        assert reply.headers_named(b"set-cookie") == []


async def test_reading_creates_no_session_and_lifespan_state_is_visible(client: HTTPTestClient) -> None:
    reply = await client.request("GET", "/peek")
    assert json.loads(reply.body) == {"session": {}, "lifespan": True}
    assert reply.headers_named(b"set-cookie") == []


EXPIRED_COOKIE = b"JSESSIONID=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"


async def test_login_then_logout_invalidates(client: HTTPTestClient) -> None:
    body = json.dumps({"user": "ada"}).encode()
    reply = await client.request("POST", "/login", [("Content-Type", "application/json")], body)
    cookie = cookie_of(reply)
    peek = await client.request("GET", "/peek", [("Cookie", cookie)])
    assert json.loads(peek.body)["session"] == {"user": "ada"}
    logout = await client.request("GET", "/logout", [("Cookie", cookie)])
    assert logout.body == b"bye"
    assert logout.headers_named(b"set-cookie") == [EXPIRED_COOKIE]  # the client drops it
    peek = await client.request("GET", "/peek", [("Cookie", cookie)])
    assert json.loads(peek.body)["session"] == {}  # and a client that kept it finds the session gone


async def test_logout_expires_the_cookie(client: HTTPTestClient) -> None:
    body = json.dumps({"user": "ada"}).encode()
    cookie = cookie_of(await client.request("POST", "/login", [("Content-Type", "application/json")], body))
    logout = await client.request("GET", "/logout", [("Cookie", cookie)])
    assert logout.body == b"bye"
    # The browser drops the cookie, so the dead id is not sent (nor routed on by a balancer) again.
    assert logout.headers_named(b"set-cookie") == [EXPIRED_COOKIE]
    # Nothing to log out of, or a session that is already gone: no cookie is touched.
    assert (await client.request("GET", "/logout")).headers_named(b"set-cookie") == []
    again = await client.request("GET", "/logout", [("Cookie", cookie)])
    assert again.headers_named(b"set-cookie") == []


async def test_logout_then_new_session_in_one_request_sets_the_new_cookie(client: HTTPTestClient) -> None:
    first = cookie_of(await client.request("GET", "/"))
    reply = await client.request("GET", "/switch-user?user=bob", [("Cookie", first)])
    second = cookie_of(reply)  # exactly one Set-Cookie, for the new session, not an expiry
    assert second != first
    peek = await client.request("GET", "/peek", [("Cookie", second)])
    assert json.loads(peek.body)["session"] == {"user": "bob"}


async def test_streaming_response_sets_cookie_and_streams(client: HTTPTestClient) -> None:
    reply = await client.request("GET", "/stream")
    assert reply.body == b"".join(f"piece {i}\n".encode() for i in range(5))
    assert reply.header(b"transfer-encoding") == b"chunked"
    cookie = cookie_of(reply)
    peek = await client.request("GET", "/peek", [("Cookie", cookie)])
    assert json.loads(peek.body)["session"] == {"streamed": True}


async def test_request_body_reaches_the_app(client: HTTPTestClient) -> None:
    reply = await client.request("POST", "/echo", body=b"z" * 200_000)
    assert reply.body == b"200000 bytes"


async def test_app_error_is_500_and_node_keeps_serving(client: HTTPTestClient) -> None:
    reply = await client.request("GET", "/boom")
    assert reply.status == 500
    assert (await client.request("GET", "/")).status == 200
