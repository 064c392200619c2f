"""scope["session"]: the dict-like view an ASGI app (Starlette's request.session) uses."""

from __future__ import annotations

import pytest

from sesh.core.delta import Invalidate, RemoveAttribute, SetAttribute
from sesh.core.manager import SessionManager, SessionTransaction
from sesh.core.mapping import SessionMapping
from sesh.core.serializer import UnencodableValue

T0 = 1_700_000_000.0


def open_session() -> tuple[SessionManager, SessionTransaction, SessionMapping]:
    manager = SessionManager(route="node1", max_inactive=60)
    tx = manager.begin(manager.create(T0), T0)
    return manager, tx, SessionMapping(tx)


def test_dict_operations_go_through_the_transaction() -> None:
    _, tx, session = open_session()
    assert len(session) == 0
    assert not session
    session["user"] = "ann"
    session["count"] = 1
    session["count"] += 1
    assert session["count"] == 2
    assert session.get("missing") is None
    assert session.get("missing", 5) == 5
    assert "user" in session
    assert "missing" not in session
    assert 3 not in session  # type: ignore[comparison-overlap]
    assert sorted(session) == ["count", "user"]
    assert dict(session) == {"user": "ann", "count": 2}
    assert len(session) == 2
    del session["user"]
    with pytest.raises(KeyError):
        session["user"]
    with pytest.raises(KeyError):
        del session["user"]
    assert session.pop("count") == 2
    assert session.setdefault("theme", "dark") == "dark"
    session.update({"a": 1}, b=2)
    assert dict(session) == {"theme": "dark", "a": 1, "b": 2}
    assert tx.delta.changes[:4] == (
        SetAttribute("user", "ann"),
        SetAttribute("count", 1),
        SetAttribute("count", 2),
        RemoveAttribute("user"),
    )
    assert session.id == tx.id
    assert session.transaction is tx


def test_none_is_a_value_not_a_missing_key() -> None:
    _, _, session = open_session()
    session["nothing"] = None
    assert session["nothing"] is None
    assert "nothing" in session


def test_clear_is_logout_without_losing_the_session() -> None:
    manager, tx, session = open_session()
    session["user"] = "ann"
    session["cart"] = [1]
    session.clear()
    assert len(session) == 0
    delta = tx.finish()
    assert set(delta.changes[2:]) == {RemoveAttribute("user"), RemoveAttribute("cart")}
    assert len(manager) == 1
    assert tx.session.version == 1


def test_iteration_while_deleting() -> None:
    _, _, session = open_session()
    for key in "abc":
        session[key] = key
    for key in session:
        del session[key]
    assert len(session) == 0


def test_invalidate() -> None:
    manager, tx, session = open_session()
    session["user"] = "ann"
    session.invalidate()
    assert len(session) == 0
    assert tx.finish().changes[-1] == Invalidate()
    assert len(manager) == 0


def test_unencodable_value_names_the_key() -> None:
    _, tx, session = open_session()
    with pytest.raises(UnencodableValue, match="'handler'"):
        session["handler"] = lambda: None
    assert "handler" not in session
    assert tx.delta.empty


def test_unusable_after_the_request() -> None:
    _, tx, session = open_session()
    tx.finish()
    with pytest.raises(RuntimeError):
        session["a"] = 1
    with pytest.raises(RuntimeError):
        len(session)
