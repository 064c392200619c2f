"""Pure tests of sticky routing (httpd's get_path_param / get_cookie_param) and of message rewriting."""

from __future__ import annotations

import pytest

from sesh.balancer import rewrite
from sesh.balancer.sticky import StickyNames, cookie_param, find_sticky, path_param
from sesh.protocol.http import Request

NAMES = StickyNames.parse("JSESSIONID|jsessionid")


def test_sticky_names() -> None:
    assert StickyNames.parse("") is None
    assert StickyNames(b"JSESSIONID", b"jsessionid") == NAMES
    assert StickyNames.parse("ROUTEID") == StickyNames(b"ROUTEID", b"ROUTEID")
    assert str(NAMES) == "JSESSIONID|jsessionid"


@pytest.mark.parametrize(
    ("target", "scolon", "expected"),
    [
        (b"/app;jsessionid=ABC.a", False, b"ABC.a"),
        (b"/app;jsessionid=ABC.a?x=1", False, b"ABC.a"),
        (b"/app?jsessionid=ABC.b&x=1", False, b"ABC.b"),
        (b"/app;jsessionid=ABC.a;v=2", False, b"ABC.a;v=2"),  # without scolonpathdelim ';' is data
        (b"/app;jsessionid=ABC.a;v=2", True, b"ABC.a"),
        (b"/jsessionid/x;jsessionid=Z.c", False, b"Z.c"),  # the name not followed by '=' is skipped
        (b"/app", False, None),
        (b"/app;jsessionid=", False, None),
        (b"/app;jsessionid=&x", False, b"x"),  # apr_strtok skips leading delimiters
    ],
)
def test_path_param(target: bytes, scolon: bool, expected: bytes | None) -> None:
    assert path_param(target, b"jsessionid", scolon) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"JSESSIONID=ABC.a", b"ABC.a"),
        (b"foo=1; JSESSIONID=ABC.b; bar=2", b"ABC.b"),
        (b"XJSESSIONID=nope; JSESSIONID=ABC.c", b"ABC.c"),  # must start at a boundary
        (b"JSESSIONID = ABC.d", b" ABC.d"),  # spaces before '=' skipped, after kept (as httpd)
        (b"a=1, JSESSIONID=ABC.e, b=2", b"ABC.e"),
        (b"foo=JSESSIONID", None),
        (b"JSESSIONID=", None),
    ],
)
def test_cookie_param(header: bytes, expected: bytes | None) -> None:
    assert cookie_param(header, b"JSESSIONID") == expected


def test_find_sticky_prefers_url_then_cookie_and_takes_route_after_first_separator() -> None:
    assert NAMES is not None
    cookie = [(b"cookie", b"JSESSIONID=ID1-n1.b")]
    ref = find_sticky(b"/;jsessionid=ID2.a.x", cookie, NAMES, b".", False)
    assert ref is not None and (ref.source, ref.route) == (b"jsessionid", "a.x")
    ref = find_sticky(b"/", cookie, NAMES, b".", False)
    assert ref is not None and (ref.source, ref.value, ref.route) == (b"JSESSIONID", b"ID1-n1.b", "b")
    ref = find_sticky(b"/", [(b"cookie", b"JSESSIONID=NOROUTE")], NAMES, b".", False)
    assert ref is not None and ref.route == ""
    assert find_sticky(b"/", [], NAMES, b".", False) is None
    # Two Cookie headers are merged with ", " before the search, as httpd merges them.
    ref = find_sticky(b"/", [(b"cookie", b"x=1"), (b"cookie", b"JSESSIONID=Q.c")], NAMES, b".", False)
    assert ref is not None and ref.route == "c"


def request(headers: list[tuple[bytes, bytes]], target: bytes = b"/") -> Request:
    return Request(b"GET", target, tuple(headers), "1.1", True, None, False)


def test_upstream_headers_drop_hop_by_hop_and_add_forwarded() -> None:
    req = request(
        [
            (b"host", b"front.example:8080"),
            (b"connection", b"keep-alive, x-secret"),
            (b"keep-alive", b"timeout=5"),
            (b"x-secret", b"hop"),
            (b"te", b"trailers"),
            (b"upgrade", b"h2c"),
            (b"proxy-authorization", b"Basic x"),
            (b"x-forwarded-for", b"10.0.0.1"),
            (b"accept", b"*/*"),
            (b"expect", b"100-continue"),
            (b"content-length", b"5"),
        ]
    )
    out = rewrite.upstream_headers(
        req, host=b"127.0.0.1:8081", client_ip=b"127.0.0.9", server_name=b"lb", preserve_host=False, via=None
    )
    assert out == [
        (b"host", b"127.0.0.1:8081"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"10.0.0.1, 127.0.0.9"),
        (b"x-forwarded-host", b"front.example:8080"),
        (b"x-forwarded-server", b"lb"),
    ]
    kept = rewrite.upstream_headers(
        req, host=b"m", client_ip=b"c", server_name=b"lb", preserve_host=True, via=b"1.1 lb:8080 (sesh)"
    )
    assert kept[0] == (b"host", b"front.example:8080")
    assert (b"via", b"1.1 lb:8080 (sesh)") in kept


def test_client_headers_reverse_member_urls() -> None:
    headers = (
        (b"location", b"http://127.0.0.1:8081/login?x=1"),
        (b"content-location", b"http://127.0.0.1:8082"),
        (b"uri", b"http://elsewhere/x"),
        (b"connection", b"close"),
        (b"transfer-encoding", b"chunked"),
        (b"set-cookie", b"a=b"),
    )
    out = rewrite.client_headers(
        headers,
        member_urls=[b"http://127.0.0.1:8081", b"http://127.0.0.1:8082"],
        own_url=b"http://front:8080/app",
        via=None,
    )
    assert out == [
        (b"location", b"http://front:8080/app/login?x=1"),
        (b"content-location", b"http://front:8080/app/"),
        (b"uri", b"http://elsewhere/x"),
        (b"set-cookie", b"a=b"),
    ]
    # A longer port that merely starts like a member URL is not the member.
    assert rewrite.reverse_url(b"http://127.0.0.1:80810/x", [b"http://127.0.0.1:8081"], b"http://f") == (
        b"http://127.0.0.1:80810/x"
    )


_CLIENT_HEADER_CASES = [
    (),
    ((b"date", b"Tue"), (b"content-type", b"text/plain"), (b"keep-alive", b"timeout=5")),
    ((b"location", b"http://127.0.0.1:8081/x"), (b"via", b"1.0 up"), (b"content-length", b"3")),
    ((b"connection", b"close, x-secret"), (b"x-secret", b"1"), (b"date", b"Tue"), (b"etag", b'"a"')),
    ((b"connection", b"date"), (b"date", b"Tue"), (b"via", b"1.0 up")),
    ((b"transfer-encoding", b"chunked"), (b"uri", b"http://127.0.0.1:8081"), (b"set-cookie", b"a=b")),
]


_REQUEST_HEADER_CASES = [
    (),
    ((b"host", b"front:8080"), (b"user-agent", b"wrk")),
    ((b"host", b"a"), (b"x-forwarded-for", b"1.2.3.4"), (b"via", b"1.0 p"), (b"host", b"b"), (b"expect", b"x")),
    ((b"x-forwarded-host", b"h"), (b"x-forwarded-server", b"s"), (b"content-length", b"3"), (b"te", b"x")),
    ((b"connection", b"close, x-forwarded-for"), (b"x-forwarded-for", b"9"), (b"host", b"h"), (b"a", b"1")),
    ((b"host", b""), (b"cookie", b"JSESSIONID=x.a")),
]


@pytest.mark.parametrize("headers", _REQUEST_HEADER_CASES)
@pytest.mark.parametrize("via", [None, b"1.1 lb:80 (sesh)"])
@pytest.mark.parametrize("preserve_host", [False, True])
def test_encode_upstream_headers_matches_upstream_headers(
    headers: tuple[tuple[bytes, bytes], ...], via: bytes | None, preserve_host: bool
) -> None:
    req = Request(b"GET", b"/", headers, "1.1", True, None, False)
    kwargs = {"host": b"m:81", "client_ip": b"c", "server_name": b"lb", "preserve_host": preserve_host, "via": via}
    out = rewrite.upstream_headers(req, **kwargs)  # type: ignore[arg-type]
    lines = rewrite.encode_upstream_headers(req, **kwargs)  # type: ignore[arg-type]
    assert lines == b"".join(b"%s: %s\r\n" % pair for pair in out)


@pytest.mark.parametrize("headers", _CLIENT_HEADER_CASES)
@pytest.mark.parametrize("via", [None, b"1.1 lb:80 (sesh)"])
def test_encode_client_headers_matches_client_headers(
    headers: tuple[tuple[bytes, bytes], ...], via: bytes | None
) -> None:
    kwargs = {"member_urls": [b"http://127.0.0.1:8081"], "own_url": b"http://front/app", "via": via}
    out = rewrite.client_headers(headers, **kwargs)  # type: ignore[arg-type]
    lines, has_date = rewrite.encode_client_headers(headers, **kwargs)  # type: ignore[arg-type]
    assert lines == b"".join(b"%s: %s\r\n" % pair for pair in out)
    assert has_date == any(name == b"date" for name, _ in out)


@pytest.mark.parametrize(
    ("target", "mount", "expected"),
    [
        (b"/x?y", b"", b"/x?y"),
        (b"/app", b"/app", b"/"),
        (b"/app/x", b"/app", b"/x"),
        (b"/app?q", b"/app", b"/?q"),
        (b"/apple", b"/app", None),
        (b"/other", b"/app", None),
    ],
)
def test_mount(target: bytes, mount: bytes, expected: bytes | None) -> None:
    assert rewrite.strip_mount(target, mount) == expected


def test_normalize_mount_and_origin_form() -> None:
    assert rewrite.normalize_mount("/") == b""
    assert rewrite.normalize_mount("/app/") == b"/app"
    assert rewrite.origin_form(b"http://h:1/p?q") == b"/p?q"
    assert rewrite.origin_form(b"http://h:1") == b"/"
    assert rewrite.origin_form(b"http://h:1?q") == b"/?q"
    assert rewrite.origin_form(b"*") is None
