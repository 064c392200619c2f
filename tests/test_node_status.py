"""The node's status document: only for local tools and token holders, never for what a balancer forwards.
Real ``sesh node`` and ``sesh balancer`` processes on loopback; the access rule itself is pure."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from sesh.node.status import is_loopback, presented_token, status_allowed
from tests.http_client import Reply, get
from tests.procs import SeshProcess

Start = Callable[..., SeshProcess]
TOKEN = "t0ken-for-tests"


def is_status(reply: Reply) -> bool:
    return reply.status == 200 and reply.header(b"content-type") == b"application/json" and b'"backend"' in reply.body


def balancer_for(sesh: Start, node: SeshProcess) -> SeshProcess:
    return sesh("balancer", "--port", "0", "--member", f"http://127.0.0.1:{node.port}")


async def test_status_is_served_directly_but_not_through_a_balancer(sesh: Start) -> None:
    node = sesh("node", "--port", "0", "--name", "n1")
    balancer = balancer_for(sesh, node)
    # sesh top and the tests read it this way: loopback, no proxy in between.
    assert is_status(await get(node.port, "/sesh/status"))
    # Through the balancer, which is a loopback peer too but adds X-Forwarded-For.
    proxied = await get(balancer.port, "/sesh/status")
    assert proxied.status == 403 and b"backend" not in proxied.body and b"127.0.0.1" not in proxied.body
    assert (await get(balancer.port, "/sesh/status?x=1")).status == 403
    # A client that forges a proxy header directly is refused the same way.
    assert (await get(node.port, "/sesh/status", [("x-forwarded-for", "10.0.0.7")])).status == 403
    # No token configured: none opens it.
    assert (await get(balancer.port, "/sesh/status", [("authorization", "Bearer x")])).status == 403
    # The page itself is still proxied as before.
    assert (await get(balancer.port, "/", [("accept", "application/json")])).status == 200
    doc = json.loads((await get(node.port, "/sesh/status")).body)
    assert doc["status_refused"] == 4
    # Every read of the status path is counted apart (sesh top leaves them out of the request rate).
    assert doc["status_requests"] == 6 and doc["requests"] >= 7


async def test_the_token_opens_it_through_the_balancer(sesh: Start) -> None:
    node = sesh("node", "--port", "0", "--status-token", TOKEN)
    balancer = balancer_for(sesh, node)
    assert is_status(await get(balancer.port, "/sesh/status", [("authorization", f"Bearer {TOKEN}")]))
    assert is_status(await get(balancer.port, f"/sesh/status?token={TOKEN}"))
    for headers, target in [
        ([("authorization", "Bearer wrong")], "/sesh/status"),
        ([("authorization", f"Basic {TOKEN}")], "/sesh/status"),
        ([], "/sesh/status?token=wrong"),
        ([], "/sesh/status?token="),
        ([], "/sesh/status?token=%ff%00"),
        ([], "/sesh/status"),
    ]:
        reply = await get(balancer.port, target, headers)
        assert reply.status == 403, (headers, target)
    # Local tools still need no token.
    assert is_status(await get(node.port, "/sesh/status"))


async def test_the_status_path_moves_or_goes(sesh: Start) -> None:
    moved = sesh("node", "--port", "0", "--status-path", "/internal/node-status")
    assert is_status(await get(moved.port, "/internal/node-status"))
    page = await get(moved.port, "/sesh/status", [("accept", "application/json")])
    assert page.status == 200 and json.loads(page.body)["hits"] == 1  # just the demo page now
    off = sesh("node", "--port", "0", "--status-path", "")
    for target in ("/sesh/status", "/internal/node-status"):
        reply = await get(off.port, target, [("accept", "application/json")])
        assert reply.status == 200 and "hits" in json.loads(reply.body)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("2001:db8::1", False), ("", False), ("localhost", False)],
)
def test_loopback_peers(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_access_rule() -> None:
    local, remote = ("127.0.0.1", 5000), ("192.0.2.1", 5000)
    assert status_allowed((), b"", local, "")
    assert not status_allowed((), b"", remote, "")
    assert not status_allowed((), b"token=s", remote, "")  # no token configured: none is accepted
    for proxy in (b"x-forwarded-for", b"forwarded", b"via", b"x-forwarded-host"):
        assert not status_allowed(((proxy, b"x"),), b"", local, "s")
    assert status_allowed(((b"authorization", b"Bearer s"),), b"", remote, "s")
    assert status_allowed(((b"x-forwarded-for", b"1.2.3.4"), (b"authorization", b"bearer  s ")), b"", local, "s")
    assert status_allowed((), b"a=1&token=s", remote, "s")
    assert not status_allowed((), b"token=S", remote, "s")
    assert not status_allowed((), b"token=s2", remote, "s")
    assert not status_allowed((), b"token", remote, "s")
    assert status_allowed((), b"token=a+b/c", remote, "a+b/c")  # base64 tokens work as typed
    assert status_allowed((), b"token=a%2Bb%2Fc", remote, "a+b/c")  # and escaped
    assert presented_token((), b"token=%E2%82%AC") == "€".encode()  # bytes as sent, whatever they are
    assert presented_token(((b"authorization", b"Bearer"),), b"") is None


async def test_the_status_reports_request_latency(sesh: Start) -> None:
    node = sesh("node", "--port", "0")
    empty = json.loads((await get(node.port, "/sesh/status")).body)["latency"]
    assert empty == {"p50": None, "p99": None, "samples": 0}
    for _ in range(5):
        assert (await get(node.port, "/", [("accept", "application/json")])).status == 200
    latency = json.loads((await get(node.port, "/sesh/status")).body)["latency"]
    # Status reads are not requests of the application: only the five pages are timed.
    assert latency["samples"] == 5
    assert 0 < latency["p50"] <= latency["p99"] < 5
