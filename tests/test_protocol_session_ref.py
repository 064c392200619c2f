"""Pure tests of what the node takes from a request's session references and what it sends back."""

from __future__ import annotations

from sesh.protocol.session_ref import (
    MAX_SESSION_CANDIDATES,
    cookie_values,
    expired_cookie_header,
    session_candidates,
    set_cookie_header,
)


def test_candidates_are_capped_path_parameter_first_then_cookies_in_order() -> None:
    cookies = [b"C%d" % i for i in range(1300)]
    candidates, rejected = session_candidates(b"P", cookies)
    assert MAX_SESSION_CANDIDATES == 4
    assert candidates == ("P", "C0", "C1", "C2")
    assert rejected == 1301 - 4
    assert session_candidates(None, cookies[:4]) == (("C0", "C1", "C2", "C3"), 0)
    assert session_candidates(None, []) == ((), 0)


def test_repeats_cost_nothing_and_malformed_values_count_as_rejected() -> None:
    # A browser sends the same cookie once per matching path; that is one candidate, not several.
    assert session_candidates(b"A", [b"A", b"A", b"B"]) == (("A", "B"), 0)
    assert session_candidates(None, [b"", b"a b", b"x" * 257, b"ok", b"\xff"]) == (("ok",), 4)


def test_candidates_from_a_real_cookie_header() -> None:
    header = b"; ".join(b"JSESSIONID=ID%d" % i for i in range(10)) + b"; other=1"
    candidates, rejected = session_candidates(None, cookie_values([header], b"JSESSIONID"))
    assert candidates == ("ID0", "ID1", "ID2", "ID3") and rejected == 6


def test_expired_cookie_replaces_the_session_cookie() -> None:
    expired = expired_cookie_header("JSESSIONID")
    assert expired == b"JSESSIONID=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
    assert expired_cookie_header("S", secure=True).endswith(b"; HttpOnly; SameSite=Lax; Secure")
    # Same name and path as the cookie it must replace, or the browser would keep both.
    assert set_cookie_header("JSESSIONID", "X").split(b";")[1] == expired.split(b";")[1] == b" Path=/"
