"""What a reverse proxy changes in the messages it passes on, as mod_proxy_http does. Pure functions.

* Hop-by-hop headers (RFC 9110 section 7.6.1: Connection, the headers it names, Keep-Alive, TE,
  Trailer, Transfer-Encoding, Upgrade, Proxy-*) are dropped both ways; each side frames its own body.
* Requests gain ``X-Forwarded-For`` (the client address appended to any existing list),
  ``X-Forwarded-Host`` (the client's Host) and ``X-Forwarded-Server`` (the balancer's server name);
  ``Host`` becomes the member's unless ProxyPreserveHost; ``Via`` with ProxyVia.
* ProxyPassReverse: a ``Location``, ``Content-Location`` or ``URI`` response header that points at any
  member is rewritten to the balancer's own address and mount path.
* Before the mount is matched, the path is normalized as httpd's core does (``ap_normalize_path`` then
  ``ap_unescape_url``'s checks): so ``/pub/../admin`` or ``/pub/%2e%2e/admin`` is ``/admin``, which is
  not under ``/pub``, and never reaches a member as ``/public/../admin``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from sesh.protocol.http import Headers, Request

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Not hop-by-hop, but the proxy frames the body itself and handles 100-continue with the client.
_REQUEST_DROPPED: Final = HOP_BY_HOP | {b"content-length", b"expect", b"host"}
_RESPONSE_DROPPED: Final = HOP_BY_HOP | {b"content-length"}
REVERSE_HEADERS: Final = frozenset({b"location", b"content-location", b"uri"})
# Every name the encoders below do more with than pass on, so a plain header costs one test.
_RESPONSE_HANDLED: Final = REVERSE_HEADERS | {b"date", b"via"}
_RESPONSE_SPECIAL: Final = _RESPONSE_DROPPED | _RESPONSE_HANDLED
_REQUEST_HANDLED: Final = frozenset({b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-server", b"via"})
_REQUEST_SPECIAL: Final = _REQUEST_DROPPED | _REQUEST_HANDLED


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in Connection (they are hop-by-hop too)."""
    tokens: set[bytes] | None = None
    for key, value in headers:
        if key == b"connection":
            if tokens is None:
                tokens = set()
            for token in value.split(b","):
                tokens.add(token.strip().lower())
    return _NO_TOKENS if tokens is None else frozenset(tokens)


_NO_TOKENS: Final[frozenset[bytes]] = frozenset()


def normalize_mount(path: str) -> bytes:
    """The ProxyPass mount without its trailing slash; ``/`` becomes empty (everything matches)."""
    mount = "/" + path.strip("/") if path.strip("/") else ""
    return mount.encode()


def strip_mount(target: bytes, mount: bytes) -> bytes | None:
    """The target as the member should see it (mount removed), or None if it is not under the mount."""
    if not mount:
        return target
    if not target.startswith(mount):
        return None
    rest = target[len(mount) :]
    if not rest:
        return b"/"
    if rest[:1] == b"/":
        return rest
    if rest[:1] == b"?":
        return b"/" + rest
    return None


class PathRefused(Exception):
    """The request path cannot be normalized: ``status`` is httpd's answer (400 or 404)."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


# RFC 3986 section 2.3: the unreserved characters, which a normalizer decodes from %XX.
_UNRESERVED: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# What normalize_path may change; a path with none of these is already normal. One regex search is
# the cheapest test (``b"%" in target`` first tries the operand as an integer, and formats the
# TypeError that fails, about 0.2 us a test).
needs_normalizing: Final = re.compile(rb"%|/\.|//").search


def normalize_path(target: bytes) -> bytes:
    """``target`` (origin-form, ``/path[?query]``) with its path normalized as httpd does before it maps
    a request (ap_normalize_path with NOT_ABOVE_ROOT, MERGE_SLASHES and DECODE_UNRESERVED, then the
    checks of ap_unescape_url); the query is left alone.

    * ``%XX`` of an unreserved character is decoded (so ``%2e`` is a dot, ``%41`` an ``A``); other
      escapes stay as they are; a ``%`` not followed by two hex digits is a 400.
    * runs of ``/`` become one; ``.`` segments go; ``..`` removes the segment before it (RFC 3986
      section 5.2.4), and one that would climb above the root is a 400.
    * an escaped ``/`` (``%2F``, httpd's AllowEncodedSlashes Off) or NUL (``%00``) is a 404: decoded
      by a member, either would undo the normalization.

    Raises :class:`PathRefused`. Most paths have nothing to normalize and come back as they are.
    """
    path, mark, query = target.partition(b"?")
    if needs_normalizing(path) is None:
        return target
    if path.find(b"%") >= 0:
        path = _decode_unreserved(path)
    # The segments between slashes; empty ones are merged slashes, except a trailing one ("/a/" keeps
    # its slash, as the last copy of httpd's loop does).
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == b"." or (segment == b"" and index < last):
            if segment == b"." and index == last:
                out.append(b"")  # "/a/." is "/a/"
            continue
        if segment == b"..":
            if not out or out == [b""]:
                raise PathRefused(400, "the path climbs above the root")
            out.pop()
            if index == last:
                out.append(b"")  # "/a/b/.." is "/a/"
            continue
        out.append(segment)
    normalized = b"/" + b"/".join(out)
    lowered = normalized.lower()
    if b"%2f" in lowered or b"%00" in lowered:
        raise PathRefused(404, "an encoded slash or NUL in the path")
    return normalized + mark + query


def _decode_unreserved(path: bytes) -> bytes:
    parts = path.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise PathRefused(400, "a bad %-escape in the path")
        char = int(part[:2], 16)
        if char in _UNRESERVED:
            out.append(bytes((char,)) + part[2:])
        else:
            out.append(b"%" + part)
    return b"".join(out)


def origin_form(target: bytes) -> bytes | None:
    """An absolute-form target (``http://host/path``) reduced to its path; None if it is neither."""
    if target[:1] == b"/":
        return target
    lowered = target[:8].lower()
    if lowered.startswith((b"http://", b"https://")):
        after = target.partition(b"://")[2]
        slash = after.find(b"/")
        query = after.find(b"?")
        if slash < 0 or (0 <= query < slash):
            return b"/" + after[query:] if query >= 0 else b"/"
        return after[slash:]
    return None


def _merge(existing: bytes | None, value: bytes) -> bytes:
    return value if existing is None else existing + b", " + value


def reverse_url(value: bytes, member_urls: Sequence[bytes], own_url: bytes) -> bytes:
    """ProxyPassReverse: ``http://member:8081/x`` -> ``http://balancer/mount/x``."""
    for url in member_urls:
        if value.startswith(url):
            rest = value[len(url) :]
            if not rest or rest[:1] in (b"/", b"?", b"#"):
                return own_url + (rest or b"/")
    return value


def encode_client_headers(
    headers: Headers,
    *,
    member_urls: Sequence[bytes],
    own_url: bytes,
    via: bytes | None,
    dropped: frozenset[bytes] = _RESPONSE_DROPPED,
) -> tuple[bytes, bool]:
    """The response headers to send to the client as header lines (``name: value\\r\\n`` each),
    without framing (the caller adds it), and whether a Date header is among them. One pass over the
    headers: the proxy's hot path. ``dropped``: the names left out; when a Connection header turns up,
    the pass starts again with the names it lists added (rare)."""
    lines: list[bytes] = []
    has_date = False
    via_value = None
    special = _RESPONSE_SPECIAL if dropped is _RESPONSE_DROPPED else dropped | _RESPONSE_HANDLED
    for key, value in headers:
        if key not in special:
            lines += (key, b": ", value, b"\r\n")  # (cheaper than formatting a line, joined at the end)
            continue
        if key in dropped:
            if key == b"connection" and dropped is _RESPONSE_DROPPED:
                return encode_client_headers(
                    headers, member_urls=member_urls, own_url=own_url, via=via,
                    dropped=_RESPONSE_DROPPED | connection_tokens(headers),
                )
            continue
        if key in REVERSE_HEADERS:
            value = reverse_url(value, member_urls, own_url)
        elif key == b"date":
            has_date = True
        elif key == b"via" and via is not None:
            via_value = value
            continue
        lines.append(b"%s: %s\r\n" % (key, value))
    if via is not None:
        lines.append(b"via: %s\r\n" % _merge(via_value, via))
    return b"".join(lines), has_date


def encode_upstream_headers(
    request: Request,
    *,
    host: bytes,
    client_ip: bytes,
    server_name: bytes,
    preserve_host: bool,
    via: bytes | None,
    dropped: frozenset[bytes] = _REQUEST_DROPPED,
) -> bytes:
    """The request headers to send to a member as header lines, without framing (the caller adds it),
    in one pass over the request's headers (the proxy's hot path). ``dropped`` as for
    :func:`encode_client_headers`."""
    lines: list[bytes] = [b""]  # the Host line goes first, once the client's Host is known
    client_host = forwarded_for = forwarded_host = forwarded_server = via_value = None
    special = _REQUEST_SPECIAL if dropped is _REQUEST_DROPPED else dropped | _REQUEST_HANDLED
    for key, value in request.headers:
        if key not in special:
            lines += (key, b": ", value, b"\r\n")  # (cheaper than formatting a line, joined at the end)
            continue
        if key in dropped:
            if key == b"host":
                client_host = value
            elif key == b"connection" and dropped is _REQUEST_DROPPED:
                return encode_upstream_headers(
                    request, host=host, client_ip=client_ip, server_name=server_name,
                    preserve_host=preserve_host, via=via,
                    dropped=_REQUEST_DROPPED | connection_tokens(request.headers),
                )
            continue
        if key == b"x-forwarded-for":
            forwarded_for = value
        elif key == b"x-forwarded-host":
            forwarded_host = value
        elif key == b"x-forwarded-server":
            forwarded_server = value
        else:  # via
            via_value = value
    lines[0] = b"host: %s\r\n" % (client_host if preserve_host and client_host else host)
    # httpd appends to what an earlier proxy put there ("a, b"), as apr_table_mergen does.
    # (_merge written out: three calls less per request.)
    lines.append(
        b"x-forwarded-for: %s\r\n" % (client_ip if forwarded_for is None else forwarded_for + b", " + client_ip)
    )
    if client_host:
        lines.append(
            b"x-forwarded-host: %s\r\n"
            % (client_host if forwarded_host is None else forwarded_host + b", " + client_host)
        )
    lines.append(
        b"x-forwarded-server: %s\r\n"
        % (server_name if forwarded_server is None else forwarded_server + b", " + server_name)
    )
    if via is not None:
        lines.append(b"via: %s\r\n" % _merge(via_value, via))
    elif via_value is not None:
        lines.append(b"via: %s\r\n" % via_value)
    return b"".join(lines)
