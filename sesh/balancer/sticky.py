"""Sticky sessions, httpd's way: find the session value in the URL, then in the cookie, and take the route
from what follows the first ``stickysessionsep``. Pure functions over bytes.

``stickysession=JSESSIONID|jsessionid`` names the cookie and the URL parameter; a single name is used for
both. The URL parameter is searched the way mod_proxy_balancer's get_path_param does: anywhere in the
path and query (``/app;jsessionid=ABC.a`` and ``/app?jsessionid=ABC.a`` both match), up to ``?`` or
``&``, and also ``;`` with ``scolonpathdelim`` on. The cookie is searched as get_cookie_param does: the
name at the start of the header or after ``;``, ``,`` or a space, then ``=``, up to ``;`` or ``,``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StickyNames:
    cookie: bytes
    path: bytes

    @classmethod
    def parse(cls, stickysession: str) -> StickyNames | None:
        """``JSESSIONID|jsessionid`` -> cookie and path names; ``""`` -> None (not sticky)."""
        if not stickysession:
            return None
        cookie, sep, path = stickysession.partition("|")
        return cls(cookie.encode(), (path if sep and path else cookie).encode())

    def __str__(self) -> str:
        if self.cookie == self.path:
            return self.cookie.decode()
        return f"{self.cookie.decode()}|{self.path.decode()}"


def path_param(target: bytes, name: bytes, scolonpathdelim: bool) -> bytes | None:
    """The value of ``name=`` anywhere in the request target (httpd's get_path_param)."""
    delims = b";?&" if scolonpathdelim else b"?&"
    start = target.find(name)
    while start >= 0:
        at = start + len(name)
        if target[at : at + 1] == b"=":
            value = target[at + 1 :]
            # apr_strtok skips leading delimiters, then stops at the next one.
            value = value.lstrip(delims)
            end = len(value)
            for delim in delims:
                pos = value.find(bytes((delim,)))
                if 0 <= pos < end:
                    end = pos
            return value[:end] if value else None
        start = target.find(name, start + 1)
    return None


_COOKIE_BOUNDARY = frozenset(b";, \t\r\n\v\f")


def cookie_param(cookie_header: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a (merged) Cookie header (httpd's get_cookie_param)."""
    start = cookie_header.find(name)
    while start >= 0:
        if start == 0 or cookie_header[start - 1] in _COOKIE_BOUNDARY:
            at = start + len(name)
            while at < len(cookie_header) and cookie_header[at] in b" \t\r\n\v\f":
                at += 1
            if cookie_header[at : at + 1] == b"=" and at + 1 < len(cookie_header):
                value = cookie_header[at + 1 :]
                for stop in (b";", b","):
                    value = value.partition(stop)[0]
                return value
        start = cookie_header.find(name, start + 1)
    return None


def merged_cookie_header(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """httpd merges repeated request headers with ``", "``; apr_table_get then sees one value."""
    values = [value for key, value in headers if key == b"cookie"]
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)


@dataclass(frozen=True, slots=True)
class StickyRef:
    """Where the sticky value was found, and the route in it (empty when it has none)."""

    source: bytes  # the cookie or parameter name that matched
    value: bytes
    route: str


def find_sticky(
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    names: StickyNames,
    separator: bytes,
    scolonpathdelim: bool,
) -> StickyRef | None:
    """The URL parameter first, then the cookie, as find_session_route does."""
    source = names.path
    value = path_param(target, names.path, scolonpathdelim)
    if value is None:
        cookie = merged_cookie_header(headers)
        if cookie is not None:
            value = cookie_param(cookie, names.cookie)
            source = names.cookie
    if value is None:
        return None
    route = b""
    if separator:
        _, sep, rest = value.partition(separator)
        route = rest if sep else b""
    else:
        route = value
    return StickyRef(source, value, route.decode("latin-1"))
