"""Pure tests of sticky routing (httpd's get_path_param / get_cookie_param)."""

from __future__ import annotations

import pytest

from sesh.balancer.sticky import StickyNames, cookie_param, find_sticky, path_param

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
