"""Pure tests of the sans-IO HTTP codec: bytes fed whole, one at a time, and with trailing data."""

from __future__ import annotations

import pytest

from sesh.protocol.http import (
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    RemoteProtocolError,
    Request,
    Response,
    ServerConnection,
    encode_chunk,
    encode_request_head,
    encode_response_head,
    error_response,
)
from sesh.protocol.session_ref import (
    cookie_values,
    is_safe_value,
    route_of,
    set_cookie_header,
    split_path_parameter,
)


def drain(conn: ServerConnection | ClientConnection) -> list[Event]:
    events = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def feed(conn: ServerConnection | ClientConnection, data: bytes, *, bytewise: bool) -> list[Event]:
    events: list[Event] = []
    if bytewise:
        for i in range(len(data)):
            conn.receive_data(data[i : i + 1])
            events += drain(conn)
    else:
        conn.receive_data(data)
        events += drain(conn)
    return events


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


GET = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=ABC.a\r\n\r\n"
POST_CL = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
POST_CHUNKED = b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


@pytest.mark.parametrize("bytewise", [False, True])
def test_simple_get(bytewise: bool) -> None:
    events = feed(ServerConnection(), GET, bytewise=bytewise)
    request = events[0]
    assert isinstance(request, Request)
    assert request.method == b"GET"
    assert request.target == b"/a?b=c"
    assert request.header(b"cookie") == b"JSESSIONID=ABC.a"
    assert request.keep_alive
    assert isinstance(events[-1], EndOfMessage)


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("raw", [POST_CL, POST_CHUNKED])
def test_bodies(raw: bytes, bytewise: bool) -> None:
    events = feed(ServerConnection(), raw, bytewise=bytewise)
    assert isinstance(events[0], Request)
    assert body_of(events) in (b"hello", b"abcde")
    assert isinstance(events[-1], EndOfMessage)


def test_pipelined_requests_with_trailing_partial() -> None:
    conn = ServerConnection()
    events = feed(conn, GET + POST_CL + b"GET /third HT", bytewise=False)
    requests = [e for e in events if isinstance(e, Request)]
    assert [r.target for r in requests] == [b"/a?b=c", b"/p"]
    events = feed(conn, b"TP/1.1\r\n\r\n", bytewise=False)
    assert isinstance(events[0], Request) and events[0].target == b"/third"


def test_http10_is_not_keep_alive_and_close_header_is_honoured() -> None:
    events = feed(ServerConnection(), b"GET / HTTP/1.0\r\n\r\n", bytewise=False)
    assert isinstance(events[0], Request) and not events[0].keep_alive
    events = feed(ServerConnection(), b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", bytewise=False)
    assert isinstance(events[0], Request) and not events[0].keep_alive


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"\x00\x01\x02\xff\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: zz\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413),
    ],
)
def test_bad_requests_carry_their_status(raw: bytes, status: int) -> None:
    conn = ServerConnection(max_body=1024 * 1024)
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, raw, bytewise=False)
    assert info.value.status == status


def test_chunked_body_over_limit_is_413() -> None:
    conn = ServerConnection(max_body=4)
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, POST_CHUNKED, bytewise=False)
    assert info.value.status == 413


def test_eof_between_and_inside_requests() -> None:
    conn = ServerConnection()
    feed(conn, GET, bytewise=False)
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), ConnectionClosed)
    conn = ServerConnection()
    feed(conn, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", bytewise=False)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"")


def test_upgrade_request_is_answered_then_connection_closes() -> None:
    conn = ServerConnection()
    events = feed(conn, b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxyz", bytewise=False)
    assert isinstance(events[0], Request) and not events[0].keep_alive
    assert conn.upgraded


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nSet-Cookie: a=b\r\n\r\nabc"
CHUNKED_RESPONSE = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"


@pytest.mark.parametrize("bytewise", [False, True])
def test_responses(bytewise: bool) -> None:
    conn = ClientConnection()
    conn.expect_response()
    conn.expect_response()
    events = feed(conn, RESPONSE + CHUNKED_RESPONSE, bytewise=bytewise)
    responses = [e for e in events if isinstance(e, Response)]
    assert [r.status for r in responses] == [200, 201]
    assert body_of(events) == b"abcxy"
    assert sum(isinstance(e, EndOfMessage) for e in events) == 2


@pytest.mark.parametrize("bytewise", [False, True])
def test_response_to_head_has_no_body_even_with_length(bytewise: bool) -> None:
    conn = ClientConnection()
    conn.expect_response(to_head=True)
    conn.expect_response()
    head_reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    events = feed(conn, head_reply + RESPONSE, bytewise=bytewise)
    assert [e.status for e in events if isinstance(e, Response)] == [200, 200]
    assert sum(isinstance(e, EndOfMessage) for e in events) == 2
    assert body_of(events) == b"abc"


def test_response_delimited_by_close() -> None:
    conn = ClientConnection()
    conn.expect_response()
    events = feed(conn, b"HTTP/1.1 200 OK\r\n\r\nsome body", bytewise=False)
    assert isinstance(events[0], Response) and not events[0].keep_alive
    conn.receive_data(b"")
    events += drain(conn)
    assert body_of(events) == b"some body"
    assert any(isinstance(e, EndOfMessage) for e in events)


def test_garbage_response_is_502() -> None:
    conn = ClientConnection()
    conn.expect_response()
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, b"SSH-2.0-OpenSSH\r\n\r\n", bytewise=False)
    assert info.value.status == 502
    conn = ClientConnection()
    conn.expect_response()
    feed(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", bytewise=False)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(b"")
    assert info.value.status == 502


def test_encoders_round_trip_through_the_parsers() -> None:
    head = encode_request_head(b"PUT", b"/x", [(b"host", b"h"), (b"transfer-encoding", b"chunked")])
    events = feed(ServerConnection(), head + encode_chunk(b"hello") + encode_chunk(b"") + b"0\r\n\r\n", bytewise=False)
    assert isinstance(events[0], Request) and events[0].method == b"PUT"
    assert body_of(events) == b"hello"
    conn = ClientConnection()
    conn.expect_response()
    events = feed(conn, encode_response_head(404, [(b"content-length", b"0")]), bytewise=False)
    assert isinstance(events[0], Response) and events[0].status == 404 and events[0].reason == b"Not Found"
    assert error_response(400, "bad").startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_path_parameter() -> None:
    assert split_path_parameter(b"/app;jsessionid=ABC.a?x=1") == (b"/app?x=1", b"ABC.a")
    assert split_path_parameter(b"/app;JSESSIONID=ABC;other=1/next") == (b"/app;other=1/next", b"ABC")
    assert split_path_parameter(b"/plain?jsessionid=no") == (b"/plain?jsessionid=no", None)


def test_cookies_and_routes() -> None:
    headers = [b"a=1; JSESSIONID=ABC.a", b'JSESSIONID="DEF.b"; z=2']
    assert cookie_values(headers, b"JSESSIONID") == [b"ABC.a", b"DEF.b"]
    assert route_of(b"ABC-n1.a.b") == b"a.b"
    assert route_of(b"ABC") is None
    assert is_safe_value(b"ABC-n1.a") and not is_safe_value(b"a b") and not is_safe_value(b"")
    cookie = set_cookie_header("JSESSIONID", "ABC.a", secure=True)
    assert cookie == b"JSESSIONID=ABC.a; Path=/; HttpOnly; SameSite=Lax; Secure"
