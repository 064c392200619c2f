"""Issue 8 part 2 on the balancer: dot-segments, send timeouts, 1xx, 101 and tunnels, what error pages
say, and balancer-manager input. Pure tests of the functions, then loopback tests over real sockets with
the balancer in-process and members that are real servers (some raw, to send what a codec would not)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from sesh.balancer.rewrite import PathRefused, normalize_path
from sesh.log import LineFormatter
from sesh.net.http_server import HTTPExchange
from sesh.net.server import open_listeners, serve_connections
from sesh.net.shutdown import Shutdown
from sesh.protocol.http import (
    NEED_DATA,
    ClientConnection,
    EndOfMessage,
    Event,
    InformationalResponse,
    RemoteProtocolError,
    Response,
)
from tests.http_client import HTTPTestClient, get
from tests.test_balancer_proxy import (
    TOKEN,
    Backend,
    logged,
    manager_json,
    members_of,
    post_form,
    start_backend,
    start_balancer,
)

# -- item 5: dot-segments, pure --------------------------------------------------------------------------

NORMALIZED = {
    b"/pub/../admin": b"/admin",
    b"/pub/%2e%2e/admin": b"/admin",
    b"/pub/%2E%2e/admin": b"/admin",
    b"/pub/.%2e/admin": b"/admin",
    b"/pub/./../admin": b"/admin",
    b"/pub//../admin": b"/admin",
    b"/pub/x/../y?a=/../b": b"/pub/y?a=/../b",  # the query is not a path
    b"/pub/x/..": b"/pub/",
    b"/pub/.": b"/pub/",
    b"/pub/a/./b/": b"/pub/a/b/",
    b"//pub///a": b"/pub/a",
    b"/pub/%41%7e%2D": b"/pub/A~-",  # unreserved characters are decoded
    b"/pub/%20%3b%25": b"/pub/%20%3b%25",  # the others are not
    b"/pub/...": b"/pub/...",
    b"/pub;jsessionid=X.a/x": b"/pub;jsessionid=X.a/x",
    b"/": b"/",
}
REFUSED = {
    b"/..": 400,
    b"/pub/../../x": 400,
    b"/%2e%2e/x": 400,
    b"/pub/%zz": 400,
    b"/pub/%4": 400,
    b"/pub/..%2fadmin": 404,
    b"/pub/a%2Fb": 404,
    b"/pub/a%00": 404,
}


@pytest.mark.parametrize("target", list(NORMALIZED))
def test_normalize_path(target: bytes) -> None:
    assert normalize_path(target) == NORMALIZED[target]


@pytest.mark.parametrize("target", list(REFUSED))
def test_normalize_path_refuses(target: bytes) -> None:
    with pytest.raises(PathRefused) as info:
        normalize_path(target)
    assert info.value.status == REFUSED[target]


# -- items 8 and 9: the response parser's 1xx and 101 events, pure ---------------------------------------


def parse(data: bytes, *, bytewise: bool) -> tuple[list[Event], ClientConnection]:
    conn = ClientConnection()
    conn.expect_response()
    events: list[Event] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        if conn.switched:
            break
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)
    return events, conn


@pytest.mark.parametrize("bytewise", [False, True])
def test_interim_responses_are_events_of_their_own(bytewise: bool) -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    events, _ = parse(data, bytewise=bytewise)
    interim = [e for e in events if isinstance(e, InformationalResponse)]
    assert [(e.status, e.reason, e.headers) for e in interim] == [
        (100, b"Continue", ()),
        (103, b"Early Hints", ((b"link", b"</s.css>; rel=preload"),)),
    ]
    assert [type(e) for e in events][-2:] == [type(events[-2]), EndOfMessage]
    assert sum(isinstance(e, EndOfMessage) for e in events) == 1  # only the final response ends
    assert [e.status for e in events if isinstance(e, Response)] == [200]


@pytest.mark.parametrize("bytewise", [False, True])
def test_101_switches_and_keeps_what_followed_the_head(bytewise: bool) -> None:
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    events, conn = parse(head + b"\x81\x02hi", bytewise=bytewise)
    assert [(type(e), getattr(e, "status", None)) for e in events] == [(InformationalResponse, 101)]
    assert conn.switched
    if not bytewise:
        assert conn.trailing_data == b"\x81\x02hi"
    with pytest.raises(RuntimeError):
        conn.receive_data(b"more")


def test_101_without_upgrade_is_502() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\nxyz", bytewise=False)
    assert info.value.status == 502


def test_101_to_head_keeps_its_trailing_data() -> None:
    conn = ClientConnection()
    conn.expect_response(to_head=True)
    conn.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nabc")
    assert isinstance(conn.next_event(), InformationalResponse) and conn.switched
    assert conn.trailing_data == b"abc"


# -- raw members: what they send is written by hand ----------------------------------------------------

RawHandler = Callable[[trio.SocketStream], Awaitable[None]]


async def start_raw_member(nursery: trio.Nursery, handler: RawHandler) -> str:
    listeners = await open_listeners("127.0.0.1", 0)
    nursery.start_soon(serve_connections, listeners, handler, Shutdown())
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def read_head(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """A request or response head read off a raw stream, and what came after it."""
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            piece = await stream.receive_some(65536)
            if not piece:
                raise AssertionError(f"closed before a head: {data!r}")
            data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


async def read_until_closed(stream: trio.SocketStream, limit: float = 10) -> bytes:
    data = b""
    with trio.fail_after(limit):
        while piece := await stream.receive_some(65536):
            data += piece
    return data


# -- item 5: dot-segments over sockets -------------------------------------------------------------------

ESCAPES = ["/pub/../admin", "/pub/%2e%2e/admin", "/pub/.%2e/admin", "/pub/./../admin", "/pub//../admin",
           "/pub/x/../../admin"]


async def test_dot_segments_cannot_leave_the_mount(nursery: trio.Nursery) -> None:
    member = await start_backend(nursery, "a")
    port = await start_balancer(nursery, f"{member.url}/public", path="/pub")
    for target in ESCAPES:
        reply = await get(port, target)
        assert reply.status == 404, (target, reply.status)
    assert (await get(port, "/../admin")).status == 400
    assert (await get(port, "/pub/..%2fadmin")).status == 404
    assert member.requests == []  # the member never saw any of them
    assert (await get(port, "/pub/x/%2e%2e/y")).status == 200
    assert (await get(port, "/pub/./z?q=/../")).status == 200
    assert [r.target for r in member.requests] == [b"/public/y", b"/public/z?q=/../"]


# -- item 6: send timeouts -------------------------------------------------------------------------------

BIG = 8 * 1024 * 1024  # more than any socket buffer pair on loopback holds


async def test_a_client_that_stops_reading_is_cut_off_and_the_member_released(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    member_failed = trio.Event()

    async def big(backend: Backend, exchange: HTTPExchange) -> None:
        await exchange.start_response(200, [(b"content-length", b"%d" % BIG)])
        piece = b"x" * 65536
        try:
            for _ in range(BIG // len(piece)):
                await exchange.send_data(piece)
            await exchange.end_response()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            member_failed.set()  # the balancer closed its connection to this member
            raise

    member = await start_backend(nursery, "a", big)
    port = await start_balancer(nursery, f"{member.url} timeout=3", send_timeout=0.5)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(15):  # without a send timeout this waits forever (httpd: Timeout, 60 s)
        await member_failed.wait()
    received = await read_until_closed(stream)  # the balancer closed the client's connection too
    assert len(received) < BIG
    doc = await manager_json(port)
    assert members_of(doc)[0]["busy"] == 0
    await stream.aclose()


async def test_a_member_that_stops_reading_a_body_is_cut_off(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cut_off = trio.Event()

    async def trickles_without_reading(stream: trio.SocketStream) -> None:
        # Answers at once and keeps the answer coming (so reads never time out), but never reads
        # the request body: only a send timeout toward the member can end this.
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        try:
            for _ in range(300):
                await stream.send_all(b"x")
                await trio.sleep(0.05)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            cut_off.set()

    url = await start_raw_member(nursery, trickles_without_reading)
    port = await start_balancer(nursery, f"{url} timeout=0.5 retry=0")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")

    async def send_body() -> None:
        chunk = b"z" * 65536
        try:
            for _ in range(BIG // len(chunk)):
                await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except trio.BrokenResourceError:
            pass

    nursery.start_soon(send_body)
    with trio.fail_after(10):
        await cut_off.wait()
    try:
        received = await read_until_closed(stream)
    except trio.BrokenResourceError:  # closed with our body unread: a reset, which is fine
        received = b""
    assert len(received) < 1_000_000
    await stream.aclose()


# -- item 8: 1xx ---------------------------------------------------------------------------------------

INTERIM = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"


async def interim_then_ok(stream: trio.SocketStream) -> None:
    while True:
        try:
            await read_head(stream)
        except AssertionError:
            return
        await stream.send_all(INTERIM + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def test_interim_responses_reach_http11_clients_only(nursery: trio.Nursery) -> None:
    port = await start_balancer(nursery, await start_raw_member(nursery, interim_then_ok))
    client = await HTTPTestClient.connect(port)
    for _ in range(2):  # and the member connection is reused after them
        reply = await client.request("GET", "/")
        assert (reply.status, reply.body) == (200, b"ok")
        assert [(i.status, i.header(b"link")) for i in reply.interim] == [(103, b"</s.css>; rel=preload"), (100, None)]
    await client.aclose()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    received = await read_until_closed(stream)
    await stream.aclose()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"ok")
    assert b" 103 " not in received and b" 100 " not in received  # RFC 9110: no 1xx to HTTP/1.0
    doc = await manager_json(port)
    pools = doc["pools"]
    assert isinstance(pools, list) and pools[0]["opened"] == 1


async def test_a_100_continue_reaches_the_client_once(nursery: trio.Nursery) -> None:
    port = await start_balancer(nursery, await start_raw_member(nursery, interim_then_ok))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    head, rest = await read_head(stream)  # the balancer's own 100, before it reads the body
    assert head == b"HTTP/1.1 100 Continue\r\n\r\n"
    await stream.send_all(b"abc")
    data = rest
    with trio.fail_after(5):
        while not data.endswith(b"ok"):
            data += await stream.receive_some(65536)
    assert data.count(b"HTTP/1.1 100 ") == 0 and data.count(b"HTTP/1.1 103 ") == 1
    await stream.aclose()


# -- item 9: 101 and tunnels -------------------------------------------------------------------------------

SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
UPGRADE_REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_an_unasked_101_is_502(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def switches(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(SWITCH + b"\x81\x05hello")

    url = await start_raw_member(nursery, switches)
    port = await start_balancer(nursery, url)
    reply = await get(port, "/")
    assert (reply.status, reply.body) == (502, b"502 Bad Gateway\n")
    assert logged(caplog, "member switched protocols unasked")[-1]["member"] == url
    # A protocol the client offered but --upgrade does not allow is not forwarded, so also unasked.
    port = await start_balancer(nursery, url, upgrade="none")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(UPGRADE_REQUEST)
    assert (await read_until_closed(stream)).startswith(b"HTTP/1.1 502 ")
    await stream.aclose()


async def test_websocket_upgrade_becomes_a_tunnel(nursery: trio.Nursery) -> None:
    seen: list[bytes] = []

    async def echo_upper(stream: trio.SocketStream) -> None:
        head, _ = await read_head(stream)
        seen.append(head)
        await stream.send_all(SWITCH + b"hello ")  # bytes of the new protocol right after the head
        while data := await stream.receive_some(65536):
            await stream.send_all(data.upper())
        await stream.send_all(b"bye")  # the client half-closed; this direction still works
        await stream.aclose()

    url = await start_raw_member(nursery, echo_upper)
    port = await start_balancer(nursery, url)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(UPGRADE_REQUEST)
    head, rest = await read_head(stream)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"upgrade: websocket\r\n" in head.lower() and b"connection: upgrade\r\n" in head.lower()
    forwarded = seen[0].lower()
    assert b"upgrade: websocket\r\n" in forwarded and b"connection: upgrade\r\n" in forwarded
    assert b"sec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n" in forwarded
    data = rest
    with trio.fail_after(5):
        while not data.endswith(b"hello "):
            data += await stream.receive_some(65536)
        for word in (b"ping", b"pong" * 50_000):
            await stream.send_all(word)
            data = b""
            while len(data) < len(word):
                data += await stream.receive_some(65536)
            assert data == word.upper()
    await stream.send_eof()
    assert await read_until_closed(stream) == b"bye"
    await stream.aclose()


async def test_an_idle_tunnel_is_closed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    member_saw_eof = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(SWITCH)
        while await stream.receive_some(65536):
            pass
        member_saw_eof.set()

    port = await start_balancer(nursery, f"{await start_raw_member(nursery, silent)} timeout=0.5")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(UPGRADE_REQUEST)
    await read_head(stream)
    assert await read_until_closed(stream, 10) == b""  # closed by the balancer after 0.5 s idle
    with trio.fail_after(5):
        await member_saw_eof.wait()
    await stream.aclose()


# -- item 13b: error pages name no member ------------------------------------------------------------


async def test_error_pages_say_only_the_reason(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.WARNING)

    async def silent(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await trio.sleep_forever()

    url = await start_raw_member(nursery, silent)
    port = await start_balancer(nursery, f"{url} timeout=0.2")
    reply = await get(port, "/")
    assert (reply.status, reply.body) == (504, b"504 Gateway Timeout\n")
    assert logged(caplog, "member did not answer in time")[-1]["member"] == url


# -- item 14: balancer-manager input -----------------------------------------------------------------------

BAD_EDITS = [
    "w_lf=inf", "w_lf=1e400", "w_lf=nan", "w_lf=-1", "w_lf=1e1", "w_lf=%C2%B2", "w_lf=%D9%A3",
    "w_ls=%C2%B2", "w_ls=%D9%A3", "w_ls=100", "w_ls=-1", "w_ls=1e1",
    "w_wr=%C3%A9", "w_wr=%D9%A3", "w_wr=a.b", "w_wr=a%0Ab", "w_rr=%E2%85%A0", "w_rr=a%00",
    "w_status_D=%D9%A1", "w_x%0A2026-12-01T00:00:00.000Z%20forged=1",
]
BAD_STICKYSESSIONS = ["X%0A2026-12-01T00:00:00.000Z balancer - WARNING forged", "X%1B[31m", "X%00", "J%C3%89",
                      "A%20B", "A;B", "A=B"]


async def test_manager_refuses_what_is_not_ascii_with_400(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a, b = await start_backend(nursery, "a"), await start_backend(nursery, "b")
    port = await start_balancer(nursery, f"{a.url} route=a", b.url, stickysession="JSESSIONID")
    nonce = (await manager_json(port))["nonce"]
    base = f"token={TOKEN}&nonce={nonce}&w={a.url}"
    for bad in BAD_EDITS + [f"b_ss={value}" for value in BAD_STICKYSESSIONS]:
        reply = await post_form(port, f"{base}&{bad}")
        assert reply.status == 400, (bad, reply.status)
    doc = await manager_json(port)
    member = members_of(doc)[0]
    assert (member["loadfactor"], member["lbset"], member["route"], member["status"]) == (1.0, 0, "a", "Init Ok")
    balancer = doc["balancer"]
    assert isinstance(balancer, dict) and balancer["stickysession"] == "JSESSIONID"
    assert doc["manager"] == {"edits": 0, "refused": 0, "worker": 0, "workers": 1}
    reply = await post_form(port, f"{base}&w_lf=2.5&w_ls=7&w_wr=a-1_b&b_ss=SID|sid")
    assert reply.status == 200
    member = members_of(await manager_json(port))[0]
    assert (member["loadfactor"], member["lbset"], member["route"]) == (2.5, 7, "a-1_b")
    # Whatever reached the log, each record is one line with no control characters.
    formatter = LineFormatter("balancer", "test")
    lines = [formatter.format(r) for r in caplog.records if r.name.startswith("sesh")]
    assert any("edit refused: bad value" in line for line in lines)
    assert all("\n" not in line and "\x1b" not in line and "\x00" not in line for line in lines)


async def test_a_health_check_answered_after_an_interim_response_passes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    answers = [0]
    five = trio.Event()

    async def continue_then_ok(stream: trio.SocketStream) -> None:
        await read_head(stream)
        answers[0] += 1
        if answers[0] == 5:
            five.set()
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    url = await start_raw_member(nursery, continue_then_ok)
    port = await start_balancer(nursery, f"{url} hcmethod=GET hcuri=/health hcinterval=0.05 hcfails=1 hcpasses=1")
    with trio.fail_after(5):
        await five.wait()
    assert members_of(await manager_json(port))[0]["flags"] == ""  # never marked down


@pytest.mark.parametrize("bytewise", [False, True])
def test_interim_responses_to_head(bytewise: bool) -> None:
    conn = ClientConnection()
    conn.expect_response(to_head=True)
    conn.expect_response()
    data = (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    events: list[Event] = []
    for piece in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)
    kinds = [type(e).__name__ for e in events if type(e).__name__ != "Data"]
    assert kinds == ["InformationalResponse", "Response", "EndOfMessage", "Response", "EndOfMessage"]


# -- the proxy's retry of a pooled connection the member closed ------------------------------------------


async def test_a_pooled_connection_the_member_dropped_is_retried_once_on_a_new_one(nursery: trio.Nursery) -> None:
    connections = [0]

    async def one_answer_per_connection(stream: trio.SocketStream) -> None:
        # Answers the first request on a connection and closes on the second without answering: to
        # the balancer, a pooled connection the member closed while it was being reused.
        connections[0] += 1
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        with trio.move_on_after(5):
            await read_head(stream)
        await stream.aclose()

    url = await start_raw_member(nursery, one_answer_per_connection)
    port = await start_balancer(nursery, url)
    client = await HTTPTestClient.connect(port)
    for _ in range(3):
        reply = await client.request("GET", "/")
        assert (reply.status, reply.body) == (200, b"ok")
    await client.aclose()
    assert connections[0] == 3  # each later request went out again on a fresh connection
    assert members_of(await manager_json(port))[0]["flags"] == ""  # and the member is not in error


async def test_a_response_that_ends_before_the_streamed_body_spoils_the_member_connection(
    nursery: trio.Nursery,
) -> None:
    connections = [0]

    async def answers_at_once(stream: trio.SocketStream) -> None:
        connections[0] += 1
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        with trio.move_on_after(5):
            while await stream.receive_some(65536):  # the rest of the body, or a next request
                pass
        await stream.aclose()

    url = await start_raw_member(nursery, answers_at_once)
    port = await start_balancer(nursery, url)
    client = await HTTPTestClient.connect(port)
    await client.send_raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    reply = await client.read_reply()
    assert (reply.status, reply.body) == (200, b"ok")
    await client.aclose()
    # The member connection was in the middle of a request body: it is closed, never pooled.
    with trio.fail_after(5):
        reply = await get(port, "/")
    assert (reply.status, reply.body, connections[0]) == (200, b"ok", 2)
