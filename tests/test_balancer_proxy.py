"""Loopback tests of the balancer: real sockets, in-test trio backends, the balancer served in-process."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio
import trio.testing

from sesh.balancer.server import serve_balancer
from sesh.config import BalancerConfig, as_member
from sesh.net.http_server import HTTPExchange, HTTPServerCounters, serve_http_connection
from sesh.net.server import open_listeners, serve_connections
from sesh.net.shutdown import Shutdown
from sesh.protocol.http import Request
from tests.http_client import HTTPTestClient, Reply, get
from tests.procs import free_port

Handler = Callable[["Backend", HTTPExchange], Awaitable[None]]
TOKEN = "test-token"


@dataclass
class Backend:
    name: str
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def answer_name(backend: Backend, exchange: HTTPExchange) -> None:
    backend.bodies.append(await exchange.read_body())
    await exchange.respond(200, [(b"content-type", b"text/plain")], backend.name.encode())


async def start_backend(nursery: trio.Nursery, name: str, handler: Handler = answer_name) -> Backend:
    backend = Backend(name)
    listeners = await open_listeners("127.0.0.1", 0)
    backend.port = listeners[0].socket.getsockname()[1]
    counters = HTTPServerCounters()

    async def handle(exchange: HTTPExchange) -> None:
        backend.requests.append(exchange.request)
        await handler(backend, exchange)

    async def connection(stream: trio.SocketStream) -> None:
        await serve_http_connection(stream, handle, Shutdown(), max_body=None, counters=counters)

    nursery.start_soon(serve_connections, listeners, connection, Shutdown())
    return backend


async def start_balancer(nursery: trio.Nursery, *members: str, **settings: object) -> int:
    cfg = BalancerConfig(
        port=0, members=tuple(as_member(m) for m in members), manager_token=TOKEN, **settings  # type: ignore[arg-type]
    )
    port: int = await nursery.start(partial(serve_balancer, cfg, Shutdown()))
    return port


async def names(port: int, count: int, headers: list[tuple[str, str]] | None = None, target: str = "/") -> str:
    client = await HTTPTestClient.connect(port)
    try:
        out = []
        for _ in range(count):
            reply = await client.request("GET", target, headers)
            assert reply.status == 200, reply.body
            out.append(reply.body.decode())
        return "".join(out)
    finally:
        await client.aclose()


def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[dict[str, object]]:
    """The fields of every sesh log record with this message (what the balancer told the log)."""
    out = []
    for record in caplog.records:
        if record.getMessage() == message:
            fields: dict[str, object] = getattr(record, "fields", {})
            out.append(fields)
    return out


async def manager_json(port: int) -> dict[str, object]:
    reply = await get(port, "/balancer-manager", [("Accept", "application/json")])
    assert reply.status == 200
    doc: dict[str, object] = json.loads(reply.body)
    return doc


def members_of(doc: dict[str, object]) -> list[dict[str, object]]:
    balancer = doc["balancer"]
    assert isinstance(balancer, dict)
    members: list[dict[str, object]] = balancer["members"]
    return members


# -- elections over real sockets ----------------------------------------------------------------------


async def test_byrequests_3_to_1_over_keep_alive(nursery: trio.Nursery) -> None:
    a, b = await start_backend(nursery, "a"), await start_backend(nursery, "b")
    port = await start_balancer(nursery, f"{a.url} loadfactor=3", b.url)
    assert await names(port, 12) == "aaba" * 3
    doc = await manager_json(port)
    assert [m["elected"] for m in members_of(doc)] == [9, 3]
    pools = doc["pools"]
    assert isinstance(pools, list) and [p["opened"] for p in pools] == [1, 1]  # keep-alive to members


async def test_bybusyness_avoids_the_member_holding_a_slow_request(nursery: trio.Nursery) -> None:
    slow_started, release, slow_done = trio.Event(), trio.Event(), trio.Event()

    async def slow(backend: Backend, exchange: HTTPExchange) -> None:
        if exchange.request.target == b"/slow":
            slow_started.set()
            await release.wait()
        await answer_name(backend, exchange)

    a, b = await start_backend(nursery, "a", slow), await start_backend(nursery, "b", slow)
    port = await start_balancer(nursery, a.url, b.url, lbmethod="bybusyness")
    results: list[Reply] = []

    async def slow_request() -> None:
        results.append(await get(port, "/slow"))
        slow_done.set()

    nursery.start_soon(slow_request)
    with trio.fail_after(5):
        await slow_started.wait()
    assert await names(port, 3) == "bbb"  # a is busy with one request
    release.set()
    with trio.fail_after(5):
        await slow_done.wait()
    assert results[0].body == b"a"
    assert await names(port, 4) == "aaab"  # idle again, and owed the elections b took meanwhile


async def test_bytraffic_sends_the_next_requests_away_from_heavy_traffic(nursery: trio.Nursery) -> None:
    async def heavy(backend: Backend, exchange: HTTPExchange) -> None:
        await exchange.read_body()
        size = 100_000 if exchange.request.target == b"/big" else 1
        await exchange.respond(200, [], backend.name.encode() * size)

    a, b = await start_backend(nursery, "a", heavy), await start_backend(nursery, "b", heavy)
    port = await start_balancer(nursery, a.url, b.url, lbmethod="bytraffic")
    assert (await get(port, "/big")).body[:1] == b"a"
    assert await names(port, 5) == "bbbbb"


# -- sticky sessions ----------------------------------------------------------------------------------


async def test_sticky_from_cookie_and_path_parameter(nursery: trio.Nursery) -> None:
    a, b = await start_backend(nursery, "a"), await start_backend(nursery, "b")
    port = await start_balancer(
        nursery, f"{a.url} route=a", f"{b.url} route=b", stickysession="JSESSIONID|jsessionid"
    )
    assert await names(port, 4, [("Cookie", "JSESSIONID=ABC.b")]) == "bbbb"
    assert await names(port, 3, [("Cookie", "other=1; JSESSIONID=ABC-n1.a")]) == "aaa"
    assert await names(port, 3, target="/x;jsessionid=ABC.b?q=1") == "bbb"
    assert b.requests[-1].target == b"/x;jsessionid=ABC.b?q=1"  # passed on unchanged, as httpd does
    # The URL parameter wins over the cookie.
    assert await names(port, 1, [("Cookie", "JSESSIONID=X.a")], "/;jsessionid=X.b") == "b"
    # An unknown route falls back to the lbmethod, where a is owed the elections b took by stickiness
    # (3 sticky to a, 8 to b: lbstatus a=+500, b=-500).
    assert await names(port, 7, [("Cookie", "JSESSIONID=X.zz")]) == "aaaaaab"


async def test_sticky_traffic_counts_in_the_round_robin(nursery: trio.Nursery) -> None:
    a, b = await start_backend(nursery, "a"), await start_backend(nursery, "b")
    port = await start_balancer(nursery, f"{a.url} route=a", f"{b.url} route=b", stickysession="JSESSIONID")
    assert await names(port, 1, [("Cookie", "JSESSIONID=S.a")]) == "a"
    assert await names(port, 2) == "ba"  # a paid for its sticky election


# -- failure handling ---------------------------------------------------------------------------------


async def test_refused_member_goes_in_error_and_the_request_fails_over(nursery: trio.Nursery) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    b = await start_backend(nursery, "b")
    port = await start_balancer(nursery, f"{dead} route=a", f"{b.url} route=b")
    assert await names(port, 4) == "bbbb"
    dead_member = members_of(await manager_json(port))[0]
    assert "Err" in str(dead_member["status"]) and dead_member["flags"] == "E"
    assert dead_member["elected"] == 1  # elected once, then in error for retry=60 s


async def test_failover_of_a_sticky_session_unless_nofailover(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    dead = f"http://127.0.0.1:{free_port()}"
    b = await start_backend(nursery, "b")
    port = await start_balancer(nursery, f"{dead} route=a", f"{b.url} route=b", stickysession="JSESSIONID")
    assert await names(port, 2, [("Cookie", "JSESSIONID=S.a")]) == "bb"
    port = await start_balancer(
        nursery, f"{dead} route=a", f"{b.url} route=b", stickysession="JSESSIONID", nofailover=True
    )
    reply = await get(port, "/", [("Cookie", "JSESSIONID=S.a")])
    assert reply.status == 503 and reply.body == b"503 Service Unavailable\n"
    assert "nofailover" in str(logged(caplog, "no member for a request")[-1]["reason"])


async def test_all_members_unusable_gives_503_explained_in_the_log_only(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    port = await start_balancer(nursery, *dead)
    reply = await get(port, "/")
    # The client learns the status, not the members' URLs or the OS's error (httpd's page neither).
    assert reply.status == 503 and reply.body == b"503 Service Unavailable\n"
    assert logged(caplog, "no member could take the request")[-1]["last"] in dead
    assert {f["member"] for f in logged(caplog, "member unavailable, in error")} == set(dead)
    assert "connect" in str(logged(caplog, "member unavailable, in error")[0]["reason"])
    reply = await get(port, "/")  # forcerecovery: both are retried at once, and fail again
    assert reply.status == 503
    port = await start_balancer(nursery, f"http://127.0.0.1:{free_port()} status=+D")
    reply = await get(port, "/")
    assert reply.status == 503 and reply.body == b"503 Service Unavailable\n"
    assert "every member is unusable" in str(logged(caplog, "no member for a request")[-1]["reason"])


async def test_hot_standby_takes_over_only_when_the_others_fail(nursery: trio.Nursery) -> None:
    a, s = await start_backend(nursery, "a"), await start_backend(nursery, "s")
    port = await start_balancer(nursery, a.url, f"{s.url} status=+H")
    assert await names(port, 3) == "aaa"
    dead = f"http://127.0.0.1:{free_port()}"
    port = await start_balancer(nursery, dead, f"{s.url} status=+H")
    assert await names(port, 3) == "sss"


async def test_drain_keeps_sticky_sessions_but_takes_no_new_ones(nursery: trio.Nursery) -> None:
    a, b = await start_backend(nursery, "a"), await start_backend(nursery, "b")
    port = await start_balancer(
        nursery, f"{a.url} route=a status=+N", f"{b.url} route=b", stickysession="JSESSIONID"
    )
    assert await names(port, 4) == "bbbb"
    assert await names(port, 2, [("Cookie", "JSESSIONID=S.a")]) == "aa"


async def test_disabled_member_sends_its_sessions_to_its_redirect(nursery: trio.Nursery) -> None:
    a, b, c = [await start_backend(nursery, n) for n in "abc"]
    port = await start_balancer(
        nursery,
        f"{a.url} route=a status=+D redirect=c",
        f"{b.url} route=b",
        f"{c.url} route=c",
        stickysession="JSESSIONID",
    )
    assert await names(port, 3, [("Cookie", "JSESSIONID=S.a")]) == "ccc"
    assert "a" not in await names(port, 4)


async def test_failonstatus_puts_the_member_in_error_after_answering(nursery: trio.Nursery) -> None:
    async def unavailable(backend: Backend, exchange: HTTPExchange) -> None:
        await exchange.respond(503, [], b"down")

    a, b = await start_backend(nursery, "a", unavailable), await start_backend(nursery, "b")
    port = await start_balancer(nursery, a.url, b.url, failonstatus="500,503")
    assert (await get(port, "/")).status == 503  # the member's own answer reaches the client
    assert await names(port, 3) == "bbb"


async def test_garbage_from_a_member_is_502(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async def serve_garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")

    listeners = await open_listeners("127.0.0.1", 0)
    nursery.start_soon(serve_connections, listeners, serve_garbage, Shutdown())
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    port = await start_balancer(nursery, url)
    reply = await get(port, "/")
    assert reply.status == 502 and reply.body == b"502 Bad Gateway\n"
    assert logged(caplog, "bad response from member")[-1]["member"] == url


async def test_silent_member_is_504(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def silent(backend: Backend, exchange: HTTPExchange) -> None:
        await trio.sleep(5)

    a = await start_backend(nursery, "a", silent)
    port = await start_balancer(nursery, f"{a.url} timeout=0.2")
    with trio.fail_after(3):
        reply = await get(port, "/")
    assert reply.status == 504


async def test_bad_client_request_is_400_and_no_member_sees_it(nursery: trio.Nursery) -> None:
    a = await start_backend(nursery, "a")
    port = await start_balancer(nursery, a.url)
    client = await HTTPTestClient.connect(port)
    await client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    reply = await client.read_reply()
    await client.aclose()
    assert reply.status == 400
    assert a.requests == []


# -- streaming -----------------------------------------------------------------------------------------


async def test_response_streams_before_the_member_finished(nursery: trio.Nursery) -> None:
    more = trio.Event()

    async def trickle(backend: Backend, exchange: HTTPExchange) -> None:
        await exchange.start_response(200, [(b"content-length", b"%d" % (2 * 300_000))])
        await exchange.send_data(b"x" * 300_000)
        await more.wait()  # the rest only once the client has seen the beginning
        await exchange.send_data(b"y" * 300_000)
        await exchange.end_response()

    a = await start_backend(nursery, "a", trickle)
    port = await start_balancer(nursery, a.url)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    with trio.fail_after(5):
        while received.count(b"x") < 300_000:
            received += await stream.receive_some(65536)
        more.set()
        while received.count(b"y") < 300_000:
            received += await stream.receive_some(65536)
    assert b"content-length: 600000" in received.lower()
    await stream.aclose()


async def test_chunked_request_body_streams_to_the_member(nursery: trio.Nursery) -> None:
    first_piece = trio.Event()

    async def consume(backend: Backend, exchange: HTTPExchange) -> None:
        total = 0
        while piece := await exchange.receive_data():
            total += len(piece)
            first_piece.set()
        await exchange.respond(200, [], b"%d" % total)

    a = await start_backend(nursery, "a", consume)
    port = await start_balancer(nursery, a.url)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"z" * 100_000
    await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    with trio.fail_after(5):
        await first_piece.wait()  # the member reads while the client has not finished sending
    for _ in range(9):
        await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    await stream.send_all(b"0\r\n\r\n")
    reply = b""
    with trio.fail_after(5):
        while not reply.endswith(b"1000000"):
            reply += await stream.receive_some(65536)
    assert a.requests[0].chunked
    await stream.aclose()


async def test_large_bodies_both_ways_arrive_intact(nursery: trio.Nursery) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, over the replayable limit: streamed

    async def digest_or_send(backend: Backend, exchange: HTTPExchange) -> None:
        if exchange.request.method == b"POST":
            body = await exchange.read_body()
            await exchange.respond(200, [], hashlib.sha256(body).hexdigest().encode())
            return
        await exchange.start_response(200, [])  # no length: chunked to the balancer and on
        for start in range(0, len(payload), 100_000):
            await exchange.send_data(payload[start : start + 100_000])
        await exchange.end_response()

    a = await start_backend(nursery, "a", digest_or_send)
    port = await start_balancer(nursery, a.url)
    client = await HTTPTestClient.connect(port)
    reply = await client.request("POST", "/up", body=payload)
    assert reply.body == hashlib.sha256(payload).hexdigest().encode()
    reply = await client.request("GET", "/down")
    assert reply.status == 200 and reply.body == payload
    assert reply.header(b"transfer-encoding") == b"chunked"
    reply = await client.request("HEAD", "/down")
    assert reply.status == 200 and reply.body == b""
    await client.aclose()


# -- what the proxy adds and rewrites -----------------------------------------------------------------


async def test_forwarded_headers_host_and_via(nursery: trio.Nursery) -> None:
    a = await start_backend(nursery, "a")
    port = await start_balancer(nursery, a.url)
    await get(port, "/", [("X-Forwarded-For", "10.1.2.3"), ("Connection", "keep-alive")])
    request = a.requests[-1]
    assert request.header(b"host") == f"127.0.0.1:{a.port}".encode()
    assert request.header(b"x-forwarded-for") == b"10.1.2.3, 127.0.0.1"
    assert request.header(b"x-forwarded-host") == b"127.0.0.1"
    assert request.header(b"x-forwarded-server")
    assert request.header(b"via") is None
    port = await start_balancer(nursery, a.url, preserve_host=True, via=True)
    reply = await get(port, "/")
    assert a.requests[-1].header(b"host") == b"127.0.0.1"
    assert (a.requests[-1].header(b"via") or b"").startswith(b"1.1 ")
    assert (reply.header(b"via") or b"").startswith(b"1.1 ")


async def test_proxypassreverse_and_mount_path(nursery: trio.Nursery) -> None:
    async def redirect(backend: Backend, exchange: HTTPExchange) -> None:
        await exchange.respond(302, [(b"location", f"{backend.url}/login?next=1".encode())], b"")

    a = await start_backend(nursery, "a", redirect)
    port = await start_balancer(nursery, a.url, path="/app")
    reply = await get(port, "/app/secret?x=1")
    assert reply.status == 302
    assert reply.header(b"location") == b"http://127.0.0.1/app/login?next=1"
    assert a.requests[-1].target == b"/secret?x=1"
    assert (await get(port, "/elsewhere")).status == 404
    assert len(a.requests) == 1


# -- balancer-manager ---------------------------------------------------------------------------------


async def post_form(port: int, form: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    client = await HTTPTestClient.connect(port)
    try:
        all_headers = [("Content-Type", "application/x-www-form-urlencoded"), *(headers or [])]
        return await client.request("POST", "/balancer-manager", all_headers, form.encode())
    finally:
        await client.aclose()


async def test_manager_page_shows_httpd_columns(nursery: trio.Nursery) -> None:
    a = await start_backend(nursery, "a")
    port = await start_balancer(nursery, f"{a.url} route=a loadfactor=2", stickysession="JSESSIONID")
    await names(port, 2)
    reply = await get(port, "/balancer-manager")
    page = reply.body.decode()
    for column in ("Worker URL", "Route", "RouteRedir", "Factor", "Set", "Status", "Elected", "Busy",
                   "Load", "To", "From", "StickySession", "Timeout", "FailoverAttempts", "Method"):
        assert f"<th>{column}</th>" in page
    assert f"{a.url}</a></td><td>a</td><td></td><td>2.00</td><td>0</td><td>Init Ok</td><td>2</td>" in page


async def test_manager_edits_need_token_and_nonce(nursery: trio.Nursery) -> None:
    a, b = await start_backend(nursery, "a"), await start_backend(nursery, "b")
    port = await start_balancer(nursery, f"{a.url} route=a", f"{b.url} route=b")
    nonce = (await manager_json(port))["nonce"]
    disable_a = f"w={a.url}&w_status_D=1&nonce={nonce}"
    assert (await post_form(port, disable_a)).status == 403
    assert (await post_form(port, disable_a + "&token=wrong")).status == 403
    assert (await post_form(port, f"w={a.url}&w_status_D=1&nonce=bad&token={TOKEN}")).status == 403
    assert members_of(await manager_json(port))[0]["status"] == "Init Ok"
    assert await names(port, 2) == "ab"
    reply = await post_form(port, disable_a, [("Authorization", f"Bearer {TOKEN}")])
    assert reply.status == 200
    assert members_of(await manager_json(port))[0]["status"] == "Init Dis"
    assert await names(port, 3) == "bbb"
    doc = await manager_json(port)
    assert doc["manager"] == {"edits": 1, "refused": 3, "worker": 0, "workers": 1}


async def test_manager_edits_loadfactor_lbmethod_route_and_rejects_bad_values(nursery: trio.Nursery) -> None:
    a, b = await start_backend(nursery, "a"), await start_backend(nursery, "b")
    port = await start_balancer(nursery, f"{a.url} route=a", f"{b.url} route=b")
    nonce = (await manager_json(port))["nonce"]
    base = f"token={TOKEN}&nonce={nonce}"
    reply = await post_form(port, f"{base}&w={b.url}&w_lf=3&w_wr=bee", [("Accept", "application/json")])
    assert reply.status == 200
    member_b = members_of(json.loads(reply.body))[1]
    assert (member_b["loadfactor"], member_b["route"]) == (3.0, "bee")
    assert await names(port, 4) == "bbab"  # recalc_factors restarted lbstatus from the factors (1:3)
    reply = await post_form(port, f"{base}&b_lbm=bybusyness&b_ss=JSESSIONID")
    assert reply.status == 200
    doc = await manager_json(port)
    balancer = doc["balancer"]
    assert isinstance(balancer, dict)
    assert (balancer["lbmethod"], balancer["stickysession"]) == ("bybusyness", "JSESSIONID")
    assert await names(port, 3, [("Cookie", "JSESSIONID=x.bee")]) == "bbb"
    for bad in ("w_lf=0", "w_lf=101", "w_ls=x", "w_status_D=2", "w_wr=a%20b", "w_bogus=1"):
        assert (await post_form(port, f"{base}&w={a.url}&{bad}")).status == 400, bad
    assert (await post_form(port, f"{base}&b_lbm=rr")).status == 400
    assert (await post_form(port, f"{base}&w=http://nowhere:1&w_lf=2")).status == 400
    assert [m["loadfactor"] for m in members_of(await manager_json(port))] == [1.0, 3.0]


# -- health checks ------------------------------------------------------------------------------------


async def test_health_checks_mark_a_member_down_and_up_again(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    healthy = [True]

    async def with_health(backend: Backend, exchange: HTTPExchange) -> None:
        if exchange.request.target == b"/health":
            await exchange.respond(200 if healthy[0] else 500, [], b"")
        else:
            await answer_name(backend, exchange)

    a, b = await start_backend(nursery, "a", with_health), await start_backend(nursery, "b")
    port = await start_balancer(
        nursery, f"{a.url} hcmethod=GET hcuri=/health hcinterval=0.05 hcfails=2 hcpasses=2", b.url
    )

    async def wait_for_flags(flags: str) -> None:
        for _ in range(250):
            if members_of(await manager_json(port))[0]["flags"] == flags:
                return
            await trio.sleep(0.02)
        raise AssertionError(f"member a never got flags {flags!r}")

    assert await names(port, 2) == "ab"
    healthy[0] = False
    await wait_for_flags("C")
    assert await names(port, 3) == "bbb"
    healthy[0] = True
    await wait_for_flags("")
    assert "a" in await names(port, 2)
