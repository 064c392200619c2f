"""Pure tests of message rewriting (sesh/balancer/rewrite.py): what the proxy changes in the heads it
passes on, and the mount.

The product encodes headers in one pass (the proxy's hot path); the plain list-building versions of
those rewrites live here as the slow reference they are compared against, on fixed cases and on
random header sets.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from sesh.balancer import rewrite
from sesh.protocol.http import Headers, Request

# -- the reference: the rewrites as lists of (name, value), one rule at a time --


def upstream_headers(
    request: Request, *, host: bytes, client_ip: bytes, server_name: bytes, preserve_host: bool, via: bytes | None
) -> list[tuple[bytes, bytes]]:
    """The request headers to send to a member, without framing."""
    dropped = rewrite.HOP_BY_HOP | {b"content-length", b"expect", b"host"} | rewrite.connection_tokens(request.headers)
    client_host = request.header(b"host")
    out: list[tuple[bytes, bytes]] = [(b"host", client_host if preserve_host and client_host else host)]
    forwarded_for = forwarded_host = forwarded_server = via_value = None
    for key, value in request.headers:
        if key in dropped:
            continue
        if key == b"x-forwarded-for":
            forwarded_for = value
        elif key == b"x-forwarded-host":
            forwarded_host = value
        elif key == b"x-forwarded-server":
            forwarded_server = value
        elif key == b"via":
            via_value = value
        else:
            out.append((key, value))
    out.append((b"x-forwarded-for", merge(forwarded_for, client_ip)))
    if client_host:
        out.append((b"x-forwarded-host", merge(forwarded_host, client_host)))
    out.append((b"x-forwarded-server", merge(forwarded_server, server_name)))
    if via is not None:
        out.append((b"via", merge(via_value, via)))
    elif via_value is not None:
        out.append((b"via", via_value))
    return out


def client_headers(
    headers: Headers, *, member_urls: Sequence[bytes], own_url: bytes, via: bytes | None
) -> list[tuple[bytes, bytes]]:
    """The response headers to send to the client, without framing."""
    dropped = rewrite.HOP_BY_HOP | {b"content-length"} | rewrite.connection_tokens(headers)
    out: list[tuple[bytes, bytes]] = []
    via_value = None
    for key, value in headers:
        if key in dropped:
            continue
        if key in rewrite.REVERSE_HEADERS:
            value = rewrite.reverse_url(value, member_urls, own_url)
        elif key == b"via" and via is not None:
            via_value = value
            continue
        out.append((key, value))
    if via is not None:
        out.append((b"via", merge(via_value, via)))
    return out


def merge(existing: bytes | None, value: bytes) -> bytes:
    return value if existing is None else existing + b", " + value


def encode(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


def parse_lines(lines: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in lines.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        out.append((name, value))
    return out


# -- the product --


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
    out = parse_lines(
        rewrite.encode_upstream_headers(
            req, host=b"127.0.0.1:8081", client_ip=b"127.0.0.9", server_name=b"lb", preserve_host=False, via=None
        )
    )
    assert out == [
        (b"host", b"127.0.0.1:8081"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"10.0.0.1, 127.0.0.9"),
        (b"x-forwarded-host", b"front.example:8080"),
        (b"x-forwarded-server", b"lb"),
    ]
    kept = parse_lines(
        rewrite.encode_upstream_headers(
            req, host=b"m", client_ip=b"c", server_name=b"lb", preserve_host=True, via=b"1.1 lb:8080 (sesh)"
        )
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
    lines, has_date = rewrite.encode_client_headers(
        headers,
        member_urls=[b"http://127.0.0.1:8081", b"http://127.0.0.1:8082"],
        own_url=b"http://front:8080/app",
        via=None,
    )
    assert not has_date
    assert parse_lines(lines) == [
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
def test_encode_upstream_headers_matches_the_reference(
    headers: tuple[tuple[bytes, bytes], ...], via: bytes | None, preserve_host: bool
) -> None:
    req = Request(b"GET", b"/", headers, "1.1", True, None, False)
    kwargs = {"host": b"m:81", "client_ip": b"c", "server_name": b"lb", "preserve_host": preserve_host, "via": via}
    assert rewrite.encode_upstream_headers(req, **kwargs) == encode(upstream_headers(req, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("headers", _CLIENT_HEADER_CASES)
@pytest.mark.parametrize("via", [None, b"1.1 lb:80 (sesh)"])
def test_encode_client_headers_matches_the_reference(
    headers: tuple[tuple[bytes, bytes], ...], via: bytes | None
) -> None:
    kwargs = {"member_urls": [b"http://127.0.0.1:8081"], "own_url": b"http://front/app", "via": via}
    out = client_headers(headers, **kwargs)  # type: ignore[arg-type]
    lines, has_date = rewrite.encode_client_headers(headers, **kwargs)  # type: ignore[arg-type]
    assert lines == encode(out)
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


# Names and values the random header sets are drawn from: every name either rewrite treats specially,
# Connection values naming some of them, and ordinary headers.
_NAMES = [
    b"host", b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"proxy-authorization", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-host",
    b"x-forwarded-server", b"via", b"date", b"location", b"content-location", b"uri", b"accept",
    b"set-cookie", b"x-secret",
]
_VALUES = [
    b"", b"1", b"http://127.0.0.1:8081/x", b"http://127.0.0.1:80810/y", b"http://127.0.0.1:8082?q",
    b"close", b"keep-alive, x-secret", b"date, via", b"x-forwarded-for , Location", b"host",
]


def test_the_rewrites_match_the_reference_on_random_headers() -> None:
    rng = random.Random(9)
    for _ in range(2000):
        headers = tuple((rng.choice(_NAMES), rng.choice(_VALUES)) for _ in range(rng.randrange(8)))
        via = rng.choice([None, b"1.1 lb:80 (sesh)"])
        preserve_host = rng.random() < 0.5
        req = Request(b"GET", b"/", headers, "1.1", True, None, False)
        lines = rewrite.encode_upstream_headers(
            req, host=b"m:81", client_ip=b"c", server_name=b"lb", preserve_host=preserve_host, via=via
        )
        expected = upstream_headers(
            req, host=b"m:81", client_ip=b"c", server_name=b"lb", preserve_host=preserve_host, via=via
        )
        assert lines == encode(expected), headers
        members = [b"http://127.0.0.1:8081", b"http://127.0.0.1:8082"]
        out = client_headers(headers, member_urls=members, own_url=b"http://f/a", via=via)
        encoded = rewrite.encode_client_headers(headers, member_urls=members, own_url=b"http://f/a", via=via)
        assert encoded == (encode(out), any(name == b"date" for name, _ in out)), headers
