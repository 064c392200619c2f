"""Session ids: format, parse, and refusing everything a client could send that is not an id."""

from __future__ import annotations

import random

import pytest

from sesh.core.ids import MAX_ID_LENGTH, InvalidSessionId, SessionId, id_base, new_session_id

BASE = "0123456789ABCDEF0123456789ABCDEF"


@pytest.mark.parametrize(
    ("text", "store_node", "route"),
    [
        (BASE, "", ""),
        (BASE + ".node1", "", "node1"),
        (BASE + "-n1", "n1", ""),
        (BASE + "-n1.node1", "n1", "node1"),
        (BASE + "-a_b:c~d.r_1:x~y-z", "a_b:c~d", "r_1:x~y-z"),
    ],
)
def test_parse_and_format_round_trip(text: str, store_node: str, route: str) -> None:
    session_id = SessionId.parse(text)
    assert session_id == SessionId(BASE, store_node, route)
    assert str(session_id) == text
    assert SessionId.parse(str(session_id)) == session_id


def test_route_and_store_node_changes_keep_the_base() -> None:
    session_id = SessionId.parse(BASE + "-n1.node1")
    assert str(session_id.with_route("node2")) == BASE + "-n1.node2"
    assert str(session_id.with_store_node("n2")) == BASE + "-n2.node1"
    assert str(session_id.without_route()) == BASE + "-n1"
    assert str(session_id.with_store_node("")) == BASE + ".node1"
    assert str(SessionId(BASE).with_route("r").with_store_node("s")) == BASE + "-s.r"
    assert session_id.with_route("x").base == BASE


def test_new_session_ids_are_random_and_valid() -> None:
    ids = {new_session_id("node1", "n1") for _ in range(200)}
    assert len(ids) == 200
    for session_id in ids:
        assert SessionId.parse(str(session_id)) == session_id
        assert str(session_id).endswith("-n1.node1")
        assert len(session_id.base) == 32


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "base"),
        ("abc", "base"),
        (BASE.lower(), "base"),
        (BASE[:-1], "base"),
        (BASE + "0", "base"),
        ("G" + BASE[1:], "base"),
        (BASE + ".", "empty route"),
        (BASE + "-", "empty store node"),
        (BASE + "-.r", "empty store node"),
        (BASE + "-n1.", "empty route"),
        (BASE + ".a.b", "route"),
        (BASE + ".a b", "route"),
        (BASE + ".a;b", "route"),
        (BASE + ".a,b", "route"),
        (BASE + "-a-b", "store node"),
        (BASE + "-a b", "store node"),
        (BASE + ".r\n", "route"),
        (BASE + ".r\u00e9", "route"),
        (" " + BASE, "base"),
        (BASE + ".r" * 200, "characters"),
        (BASE + "." + "r" * (MAX_ID_LENGTH - 32), "characters"),
    ],
)
def test_invalid_ids_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidSessionId, match=reason):
        SessionId.parse(text)


def test_length_limit_is_inclusive() -> None:
    text = BASE + "." + "r" * (MAX_ID_LENGTH - 33)
    assert len(text) == MAX_ID_LENGTH
    assert str(SessionId.parse(text)) == text


def test_constructing_an_invalid_id_is_refused_too() -> None:
    with pytest.raises(InvalidSessionId):
        SessionId("nope")
    with pytest.raises(InvalidSessionId):
        SessionId(BASE).with_route("a.b")
    with pytest.raises(InvalidSessionId):
        SessionId(BASE).with_store_node("a-b")
    with pytest.raises(InvalidSessionId):
        SessionId(BASE).with_route("r" * MAX_ID_LENGTH)


def test_non_string_is_refused() -> None:
    # Compiled with `make mypyc`, the argument's type is checked on entry (TypeError): refused either way.
    with pytest.raises((InvalidSessionId, TypeError)):
        SessionId.parse(b"x" * 32)  # type: ignore[arg-type]


def test_error_message_does_not_echo_huge_input() -> None:
    with pytest.raises(InvalidSessionId) as info:
        SessionId.parse("x" * 100_000)
    assert len(str(info.value)) < 200


def test_mutated_ids_only_ever_raise_invalid_session_id() -> None:
    alphabet = BASE + "abcxyz-.;, _:~\x00\u00ff"
    for seed in range(500):
        rng = random.Random(seed)
        chars = list(BASE + "-n1.node1")
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(len(chars) + 1)
            match rng.randrange(3):
                case 0:
                    chars.insert(position, rng.choice(alphabet))
                case 1:
                    del chars[min(position, len(chars) - 1)]
                case _:
                    chars[min(position, len(chars) - 1)] = rng.choice(alphabet)
        text = "".join(chars)
        try:
            session_id = SessionId.parse(text)
        except InvalidSessionId:
            continue
        assert str(session_id) == text


def test_id_base_answers_as_parse_does() -> None:
    """The lookup shortcut accepts exactly what parse accepts, and gives the same base."""
    alphabet = BASE + "abcxyz-.;, _:~\x00\u00ff"
    texts = [BASE, BASE + "-n1", BASE + ".a-b", BASE + "-n1.node1", BASE + ".r\n", BASE + "-", BASE + ".",
             BASE + "-a-b", BASE + ".a.b", "", BASE + "." + "r" * (MAX_ID_LENGTH - 33),
             BASE + "." + "r" * (MAX_ID_LENGTH - 32)]
    rng = random.Random(7)
    texts += [BASE + "".join(rng.choice(alphabet) for _ in range(rng.randrange(8))) for _ in range(3000)]
    for text in texts:
        try:
            expected: str | None = SessionId.parse(text).base
        except InvalidSessionId:
            expected = None
        try:
            got: str | None = id_base(text)
        except InvalidSessionId:
            got = None
        assert got == expected, text
