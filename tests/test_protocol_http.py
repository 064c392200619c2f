"""Pure tests of the sans-IO HTTP codec: bytes fed whole, one at a time, and with trailing data."""

from __future__ import annotations

import pytest

from sesh.protocol.http import (
    MAX_HEAD_BYTES,
    MAX_HEADER_LINE_BYTES,
    MAX_TARGET_BYTES,
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
    request_framing,
    response_framing,
)
from sesh.protocol.session_ref import (
    cookie_values,
    is_safe_value,
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
@pytest.mark.parametrize(("raw", "body"), [(POST_CL, b"hello"), (POST_CHUNKED, b"abcde")])
def test_bodies(raw: bytes, body: bytes, bytewise: bool) -> None:
    events = feed(ServerConnection(), raw, bytewise=bytewise)
    assert isinstance(events[0], Request)
    assert body_of(events) == body
    assert isinstance(events[-1], EndOfMessage)


def test_pipelined_requests_with_trailing_partial() -> None:
    conn = ServerConnection()
    events = feed(conn, GET + POST_CL + b"GET /third HT", bytewise=False)
    requests = [e for e in events if isinstance(e, Request)]
    assert [r.target for r in requests] == [b"/a?b=c", b"/p"]
    events = feed(conn, b"TP/1.1\r\nHost: x\r\n\r\n", bytewise=False)
    assert isinstance(events[0], Request) and events[0].target == b"/third"


def test_http10_is_not_keep_alive_and_close_header_is_honoured() -> None:
    events = feed(ServerConnection(), b"GET / HTTP/1.0\r\n\r\n", bytewise=False)
    assert isinstance(events[0], Request) and not events[0].keep_alive
    events = feed(ServerConnection(), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", bytewise=False)
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
    feed(conn, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", bytewise=False)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"")


def test_upgrade_request_is_answered_then_connection_closes() -> None:
    conn = ServerConnection()
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxyz"
    events = feed(conn, upgrade, bytewise=False)
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


def test_cookie_values_and_set_cookie() -> None:
    headers = [b"a=1; JSESSIONID=ABC.a", b'JSESSIONID="DEF.b"; z=2']
    assert cookie_values(headers, b"JSESSIONID") == [b"ABC.a", b"DEF.b"]
    assert is_safe_value(b"ABC-n1.a") and not is_safe_value(b"a b") and not is_safe_value(b"")
    cookie = set_cookie_header("JSESSIONID", "ABC.a", secure=True)
    assert cookie == b"JSESSIONID=ABC.a; Path=/; HttpOnly; SameSite=Lax; Secure"


# -- head limits on the bytes received (issue 8, item 3) --------------------------------------------


def feed_pieces(conn: ServerConnection | ClientConnection, head: bytes, piece: bytes, limit: int) -> int:
    """Feed ``head``, then ``piece`` again and again (a header that never ends) until the codec
    raises: the status it carries. Fails if ``limit`` bytes went in without an answer."""
    fed = 0
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(head)
        fed = len(head)
        while fed < limit:
            conn.receive_data(piece)
            fed += len(piece)
            drain(conn)
    return info.value.status


def field_bound(piece_size: int) -> int:
    """One field's limit (8190), give or take the two reads around the crossing."""
    return MAX_HEADER_LINE_BYTES + 2 * piece_size + 64


@pytest.mark.parametrize("piece_size", [1, 1000, 64 * 1024])
def test_endless_header_value_is_431_before_it_ends(piece_size: int) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: "
    assert feed_pieces(ServerConnection(), head, b"a" * piece_size, field_bound(piece_size)) == 431


@pytest.mark.parametrize("piece_size", [1, 1000])
def test_endless_header_name_is_431(piece_size: int) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-"
    assert feed_pieces(ServerConnection(), head, b"b" * piece_size, field_bound(piece_size)) == 431


def test_endless_stream_of_small_headers_is_431_on_count() -> None:
    assert feed_pieces(ServerConnection(), b"GET / HTTP/1.1\r\nHost: x\r\n", b"X: y\r\n", 1000) == 431


@pytest.mark.parametrize("piece_size", [1, 1000, 64 * 1024])
def test_endless_target_is_414(piece_size: int) -> None:
    limit = MAX_TARGET_BYTES + 2 * piece_size + 64
    assert feed_pieces(ServerConnection(), b"GET /", b"a" * piece_size, limit) == 414


@pytest.mark.parametrize("piece_size", [1, 1000, 64 * 1024])
def test_endless_response_header_is_502_before_it_ends(piece_size: int) -> None:
    conn = ClientConnection()
    conn.expect_response()
    assert feed_pieces(conn, b"HTTP/1.1 200 OK\r\nX-A: ", b"a" * piece_size, field_bound(piece_size)) == 502


def test_endless_response_reason_is_502() -> None:
    conn = ClientConnection()
    conn.expect_response()
    assert feed_pieces(conn, b"HTTP/1.1 200 ", b"r" * 1000, MAX_HEAD_BYTES + 2000) == 502


def test_head_of_many_headers_within_the_limits_is_accepted_in_small_pieces() -> None:
    # 99 headers of 600 bytes and a target of 8000: large, within every limit, fed 100 bytes at a time.
    head = (b"GET /" + b"t" * 8000 + b" HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%02d: %s\r\n" % (i, b"v" * 594) for i in range(99)) + b"\r\n")
    conn = ServerConnection()
    events: list[Event] = []
    for i in range(0, len(head), 100):
        conn.receive_data(head[i : i + 100])
        events += drain(conn)
    assert isinstance(events[0], Request) and len(events[0].headers) == 100
    field = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (MAX_HEADER_LINE_BYTES - 5) + b"\r\n\r\n"
    conn = ServerConnection()
    events = []
    for i in range(0, len(field), 7):
        conn.receive_data(field[i : i + 7])
        events += drain(conn)
    assert isinstance(events[0], Request)


def test_pipelined_head_after_a_large_body_is_not_counted_with_it() -> None:
    body = b"b" * 60000
    first = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    second = b"GET /s HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 8000
    conn = ServerConnection()
    conn.receive_data(first)
    conn.receive_data(body + second)
    for _ in range(8):  # the rest of the second head, slowly
        conn.receive_data(b"v" * 10)
    conn.receive_data(b"\r\n\r\n")
    targets = [e.target for e in drain(conn) if isinstance(e, Request)]
    assert targets == [b"/p", b"/s"]


# -- request validation as httpd's (issue 8, item 10) -----------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /x HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost:\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x?a=b#frag HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x  HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://example.com/x HTTP/1.1\r\n\r\n",  # absolute-form still needs Host in 1.1
        b"GET http://u@example.com/x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://example.com/x#f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET x HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
@pytest.mark.parametrize("how", ["whole", "bytewise", "pipelined"])
def test_requests_httpd_refuses_are_400(raw: bytes, how: str) -> None:
    conn = ServerConnection()
    with pytest.raises(RemoteProtocolError) as info:
        if how == "pipelined":  # after a good request, in the same read
            feed(conn, GET + raw, bytewise=False)
        else:
            feed(conn, raw, bytewise=how == "bytewise")
    assert info.value.status == 400


def test_double_space_is_found_in_every_pipelined_position() -> None:
    good = b"GET /g HTTP/1.1\r\nHost: a\r\n\r\n"
    post = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    bad = b"GET  /b HTTP/1.1\r\nHost: a\r\n\r\n"
    chunked = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n0\r\n\r\n\r\n0\r\n\r\n"
    for stream in (good + post + bad, post + good + bad, b"\r\n" + bad, good + b"\r\n" + bad, chunked + bad):
        conn = ServerConnection()
        with pytest.raises(RemoteProtocolError):
            feed(conn, stream, bytewise=False)
    # The same streams with the bad request fixed parse whole, bytewise and split anywhere.
    stream = good + post + chunked + good.replace(b"/g", b"/b")
    for split in range(1, len(stream)):
        conn = ServerConnection()
        events = feed(conn, stream[:split], bytewise=False) + feed(conn, stream[split:], bytewise=False)
        assert [e.target for e in events if isinstance(e, Request)] == [b"/g", b"/p", b"/c", b"/b"], split
        assert body_of(events) == b"abc" + b"0\r\n\r\n", split


def test_head_end_split_over_tiny_feeds_still_cuts_the_next_request() -> None:
    # "\r", "\n\r", "\n" + the next request: its request line must still be found (and refused).
    conn = ServerConnection()
    for piece in (b"GET /a HTTP/1.1\r\nHost: a\r", b"\n\r"):
        conn.receive_data(piece)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"\nGET  /b HTTP/1.1\r\nHost: a\r\n\r\n")
    for tiny in (b"  x", b" "):  # too short to be a head: never taken for a whole one
        with pytest.raises(RemoteProtocolError):
            feed(ServerConnection(), tiny + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", bytewise=False)


def test_requests_httpd_accepts_still_parse() -> None:
    for raw in (
        b"GET /x HTTP/1.0\r\n\r\n",  # HTTP/1.0 needs no Host
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a:8080\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost:  a  \r\n\r\n",
    ):
        events = feed(ServerConnection(), raw, bytewise=False)
        assert isinstance(events[0], Request), raw


@pytest.mark.parametrize("bytewise", [False, True])
def test_absolute_form_authority_wins_over_host(bytewise: bool) -> None:
    raw = b"GET http://example.com:81/x?q HTTP/1.1\r\nHost: other\r\nAccept: */*\r\n\r\n"
    events = feed(ServerConnection(), raw, bytewise=bytewise)
    request = events[0]
    assert isinstance(request, Request)
    assert request.header(b"host") == b"example.com:81"
    assert request.headers == ((b"host", b"example.com:81"), (b"accept", b"*/*"))
    assert request.target == b"/x?q"  # as the origin-form request for the same resource
    events = feed(ServerConnection(), b"GET HTTP://a.example?q HTTP/1.1\r\nHost: b\r\n\r\n", bytewise=False)
    assert isinstance(events[0], Request) and (events[0].target, events[0].header(b"host")) == (b"/?q", b"a.example")


# -- the one framing decision (issue 8, item 11) ------------------------------------------------------


def test_response_framing_follows_the_request_version_and_method() -> None:
    chunked = response_framing(b"GET", "1.1", 200, length_known=False, keep_alive=True)
    assert (chunked.body, chunked.chunked, chunked.keep_alive, chunked.connection) == (True, True, True, None)
    until_close = response_framing(b"GET", "1.0", 200, length_known=False, keep_alive=True)
    assert (until_close.body, until_close.chunked, until_close.keep_alive) == (True, False, False)
    assert until_close.lines == b"connection: close\r\n"
    length_10 = response_framing(b"GET", "1.0", 200, length_known=True, keep_alive=True)
    assert (length_10.send_length, length_10.keep_alive, length_10.lines) == (True, True, b"connection: keep-alive\r\n")
    head = response_framing(b"HEAD", "1.1", 200, length_known=False, keep_alive=True)
    assert (head.body, head.chunked, head.send_length, head.keep_alive) == (False, False, True, True)
    for status in (101, 204, 304):
        none = response_framing(b"GET", "1.1", status, length_known=True, keep_alive=False)
        assert (none.body, none.send_length, none.chunked) == (False, False, False)
        assert none.lines == b"connection: close\r\n"
    assert request_framing(b"GET", 0) == b""
    assert request_framing(b"POST", 0) == b"content-length: 0\r\n"
    assert request_framing(b"PUT", None) == b"transfer-encoding: chunked\r\n"
