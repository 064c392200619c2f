"""Where a request names its session: the ``;jsessionid=`` path parameter and the session cookie.

Shared by the node (which loads the session) and the balancer (which routes on what follows the
first ``.`` of the id, as httpd does). Pure functions over bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

# Cookie values are restricted to RFC 6265's cookie-octet; session ids only use a safe subset.
_SAFE_VALUE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:"


def split_path_parameter(target: bytes, name: bytes = b"jsessionid") -> tuple[bytes, bytes | None]:
    """``/app;jsessionid=ABC.a?x=1`` -> (``/app?x=1``, ``ABC.a``); the parameter is case-insensitive
    (Tomcat matches ``jsessionid`` in any case). Targets without it come back unchanged with None."""
    path, sep, query = target.partition(b"?")
    marker = b";" + name.lower() + b"="
    lowered = path.lower()
    start = lowered.find(marker)
    if start < 0:
        return target, None
    value_start = start + len(marker)
    end = value_start
    while end < len(path) and path[end] not in b";/?#":
        end += 1
    value = path[value_start:end]
    rest = path[:start] + path[end:]
    return (rest + sep + query if sep else rest), value


def cookie_values(cookie_headers: Iterable[bytes], name: bytes) -> list[bytes]:
    """Every value of cookie ``name`` in the Cookie headers, in order (browsers may send several)."""
    found = []
    for header in cookie_headers:
        for pair in header.split(b";"):
            key, sep, value = pair.strip().partition(b"=")
            if sep and key == name:
                value = value.strip()
                if len(value) >= 2 and value[:1] == value[-1:] == b'"':
                    value = value[1:-1]
                found.append(value)
    return found


def is_safe_value(value: bytes) -> bool:
    # What is left once every safe byte is deleted: nothing, for a safe value (one C call per cookie).
    return 0 < len(value) <= 256 and not value.translate(None, _SAFE_VALUE)


def set_cookie_header(name: str, value: str, *, path: str = "/", secure: bool = False) -> bytes:
    """``JSESSIONID=<id>; Path=/; HttpOnly; SameSite=Lax`` (+ ``Secure``); always HttpOnly: session
    cookies are never for scripts."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()


# A request names its session a handful of times at most: a path parameter, and a cookie for each path
# or domain a browser kept one for. Each candidate may cost a backend store round trips (an msm node
# reads the session, then looks for its backup), so one request carrying 1,300 cookies once cost 3,900
# of them; beyond this many the ids are not tried, and counted as rejected.
MAX_SESSION_CANDIDATES = 4


def session_candidates(path_id: bytes | None, cookies: list[bytes]) -> tuple[tuple[str, ...], int]:
    """The session ids to try, path parameter first, then cookies in order, without repeats and at most
    :data:`MAX_SESSION_CANDIDATES`; and how many values were rejected (malformed, or beyond the cap)."""
    candidates: list[str] = []
    rejected = 0
    for value in ([path_id] if path_id is not None else []) + cookies:
        if not is_safe_value(value):
            rejected += 1
            continue
        text = value.decode("ascii")
        if text in candidates:
            continue  # the same cookie under two paths costs nothing more
        if len(candidates) >= MAX_SESSION_CANDIDATES:
            rejected += 1
            continue
        candidates.append(text)
    return tuple(candidates), rejected


# Max-Age=0 is RFC 6265's way to drop a cookie; an Expires in the past says the same to clients that only
# know Netscape's original attribute.
_EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


def expired_cookie_header(name: str, *, path: str = "/", secure: bool = False) -> bytes:
    """``JSESSIONID=; Path=/; Max-Age=0; Expires=<1970>; HttpOnly; SameSite=Lax``: makes the client drop
    the session cookie (after a logout), with the attributes it was set with so it replaces that one."""
    parts = [f"{name}=", f"Path={path}", "Max-Age=0", f"Expires={_EPOCH}", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts).encode()
