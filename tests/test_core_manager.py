"""The session manager, transactions and deltas, driven by fake times."""

from __future__ import annotations

import pytest

from sesh.core.delta import (
    ChangeId,
    Delta,
    Invalidate,
    RemoveAttribute,
    SetAttribute,
    SetMaxInactive,
    SetPrincipal,
    apply_delta,
)
from sesh.core.ids import SessionId
from sesh.core.manager import Fit, ManagerStatistics, SessionManager, delta_fit
from sesh.core.serializer import UnencodableValue, decode_delta, decode_session, encode_delta, encode_session
from sesh.core.session import Session

T0 = 1_700_000_000.0


def make_manager() -> SessionManager:
    return SessionManager(route="node1", store_node="n1", max_inactive=60)


# --- sessions ---------------------------------------------------------------------------------------


def test_session_expiry_arithmetic() -> None:
    session = Session.new(SessionId("A" * 32), T0, 60)
    assert not session.is_expired(T0 + 59.9)
    assert session.is_expired(T0 + 60)
    assert session.idle_seconds(T0 + 10) == 10
    assert session.idle_seconds(T0 - 10) == 0  # a clock that went backwards is not negative idleness
    assert session.expires_at() == T0 + 60
    session.max_inactive = 0
    assert not session.is_expired(T0 + 10**9)
    assert session.expires_at() is None
    session.max_inactive = -1
    assert not session.is_expired(T0 + 10**9)


# --- the manager ------------------------------------------------------------------------------------


def test_create_and_find() -> None:
    manager = make_manager()
    session = manager.create(T0)
    assert session.id.route == "node1"
    assert session.id.store_node == "n1"
    assert (session.created, session.last_accessed, session.this_accessed) == (T0, T0, T0)
    assert session.version == 0
    assert session.max_inactive == 60
    assert manager.find(str(session.id), T0 + 1) is session
    assert len(manager) == 1
    assert manager.sessions() == [session]
    assert manager.get_by_base(session.id.base) is session


def test_find_ignores_route_and_store_node() -> None:
    manager = make_manager()
    session = manager.create(T0)
    assert manager.find(str(session.id.with_route("node2")), T0) is session
    assert manager.find(str(session.id.without_route().with_store_node("")), T0) is session


def test_find_unknown_and_malformed() -> None:
    manager = make_manager()
    assert manager.find("F" * 32 + ".node1", T0) is None
    assert manager.statistics().rejected_ids == 0
    assert manager.find("garbage", T0) is None
    assert manager.find("", T0) is None
    assert manager.statistics().rejected_ids == 2


def test_find_removes_an_expired_session() -> None:
    manager = make_manager()
    session = manager.create(T0)
    assert manager.find(str(session.id), T0 + 59) is session
    assert manager.find(str(session.id), T0 + 60) is None
    assert not session.valid
    assert len(manager) == 0
    assert manager.statistics().expired == 1


def test_begin_touches_and_keeps_the_session_alive() -> None:
    manager = make_manager()
    session = manager.create(T0)
    manager.begin(session, T0 + 50).finish()
    assert (session.last_accessed, session.this_accessed) == (T0, T0 + 50)
    manager.begin(session, T0 + 100).finish()
    assert (session.last_accessed, session.this_accessed) == (T0 + 50, T0 + 100)
    assert manager.find(str(session.id), T0 + 159) is session
    assert manager.find(str(session.id), T0 + 160) is None


def test_expire_sweep() -> None:
    manager = make_manager()
    old = manager.create(T0)
    young = manager.create(T0 + 30)
    forever = manager.create(T0)
    manager.begin(forever, T0).set_max_inactive(0)
    assert manager.expire(T0 + 59) == []
    assert manager.expire(T0 + 60) == [old]
    assert not old.valid
    assert manager.expire(T0 + 1000) == [young]
    assert manager.sessions() == [forever]
    stats = manager.statistics()
    assert (stats.active, stats.created, stats.expired, stats.max_active) == (1, 3, 2, 3)


def test_a_session_in_use_is_not_expired() -> None:
    manager = make_manager()
    session = manager.create(T0)
    tx = manager.begin(session, T0)
    assert manager.statistics().in_use == 1
    assert manager.expire(T0 + 1000) == []
    assert manager.find(str(session.id), T0 + 1000) is session
    tx.finish()
    assert manager.statistics().in_use == 0
    assert manager.expire(T0 + 1000) == [session]


def test_invalidate() -> None:
    manager = make_manager()
    session = manager.create(T0)
    manager.begin(session, T0).set("user", "ann")
    manager.invalidate(session)
    assert not session.valid
    assert session.attributes == {}
    assert manager.find(str(session.id), T0) is None
    assert manager.statistics().invalidated == 1
    manager.invalidate(session)  # not held any more: not counted twice
    assert manager.statistics().invalidated == 1
    with pytest.raises(RuntimeError):
        manager.begin(session, T0)


def test_change_id() -> None:
    manager = make_manager()
    session = manager.create(T0)
    first = session.id
    assert manager.change_id(session, route="node2") == first
    assert session.id == first.with_route("node2")
    assert manager.change_id(session, store_node="n2").store_node == "n1"
    assert str(session.id) == f"{first.base}-n2.node2"
    old = manager.change_id(session, new_base=True)
    assert session.id.base != first.base
    assert (session.id.store_node, session.id.route) == ("n2", "node2")
    assert manager.find(str(old), T0) is None
    assert manager.find(str(session.id), T0) is session
    assert manager.get_by_base(first.base) is None
    assert len(manager) == 1


def test_add_and_remove() -> None:
    manager = make_manager()
    loaded = Session.new(SessionId("B" * 32, "n2", "node2"), T0, 60)
    manager.add(loaded)
    assert manager.find("B" * 32 + ".node1", T0) is loaded
    replacement = Session.new(SessionId("B" * 32), T0, 60)
    manager.add(replacement)
    assert manager.get_by_base("B" * 32) is replacement
    assert len(manager) == 1
    assert manager.remove("B" * 32 + "-x.y") is replacement
    assert manager.remove(SessionId("B" * 32)) is None
    assert manager.remove("not an id") is None
    assert len(manager) == 0
    assert replacement.valid  # removed, not invalidated: it lives on elsewhere
    stats = manager.statistics()
    assert (stats.added, stats.created, stats.invalidated) == (2, 0, 0)
    dead = Session.new(SessionId("C" * 32), T0, 60)
    dead.valid = False
    with pytest.raises(ValueError, match="invalidated"):
        manager.add(dead)


def test_statistics_is_a_frozen_snapshot() -> None:
    manager = make_manager()
    stats = manager.statistics()
    assert stats == ManagerStatistics(0, 0, 0, 0, 0, 0, 0, 0)
    manager.create(T0)
    assert stats.active == 0
    with pytest.raises(AttributeError):
        stats.active = 5  # type: ignore[misc]


def test_bad_route_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="route"):
        SessionManager(route="a.b")
    with pytest.raises(ValueError, match="store node"):
        SessionManager(store_node="a-b")


# --- transactions -----------------------------------------------------------------------------------


def test_transaction_records_changes_and_applies_them_at_once() -> None:
    manager = make_manager()
    session = manager.create(T0)
    tx = manager.begin(session, T0 + 1)
    assert tx.is_new
    assert tx.id == str(session.id)
    assert not tx.changed
    tx.set("cart", [1, 2])
    tx.set("user", "ann")
    tx.remove("user")
    tx.remove("never-there")
    tx.set_max_inactive(120)
    tx.set_principal({"name": "ann", "roles": ["admin"]})
    assert session.attributes == {"cart": [1, 2]}
    assert tx.get("cart") == [1, 2]
    assert tx.get("user", "gone") == "gone"
    assert tx.names() == ["cart"]
    assert session.max_inactive == 120
    assert tx.changed
    assert tx.delta.changes == (
        SetAttribute("cart", [1, 2]),
        SetAttribute("user", "ann"),
        RemoveAttribute("user"),
        SetMaxInactive(120),
        SetPrincipal({"name": "ann", "roles": ["admin"]}),
    )
    assert session.version == 0  # bumped once, at the end of the request
    delta = tx.finish()
    assert session.version == 1
    assert delta.base_version == 0
    assert delta.session_id == str(session.id)
    assert delta.accessed == T0 + 1
    assert not delta.empty


def test_version_bumps_once_per_changed_request_only() -> None:
    manager = make_manager()
    session = manager.create(T0)
    for i in range(3):
        tx = manager.begin(session, T0 + i)
        for j in range(5):
            tx.set(f"k{j}", i)
        assert tx.finish().base_version == i
        assert session.version == i + 1
    read_only = manager.begin(session, T0 + 10)
    read_only.get("k0")
    read_only.names()
    read_only.remove("absent")
    delta = read_only.finish()
    assert delta.empty
    assert session.version == 3


def test_is_new_only_for_the_first_request_on_a_created_session() -> None:
    manager = make_manager()
    session = manager.create(T0)
    first = manager.begin(session, T0)
    assert first.is_new
    first.finish()
    assert not manager.begin(session, T0 + 1).is_new
    loaded = Session.new(SessionId("D" * 32), T0, 60)
    manager.add(loaded)
    assert not manager.begin(loaded, T0).is_new


def test_unencodable_value_is_refused_before_anything_changes() -> None:
    manager = make_manager()
    session = manager.create(T0)
    tx = manager.begin(session, T0)
    tx.set("ok", 1)
    for bad in (object(), lambda: 1, {1, 2}, [1, object()]):
        with pytest.raises(UnencodableValue, match="'widget'"):
            tx.set("widget", bad)
    assert session.attributes == {"ok": 1}
    assert tx.delta.changes == (SetAttribute("ok", 1),)
    with pytest.raises(UnencodableValue, match="principal"):
        tx.set_principal(object())
    with pytest.raises(TypeError):
        tx.set(1, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tx.set_max_inactive(1.5)  # type: ignore[arg-type]
    # Out of range is refused where the app sets it, not by every node that later reads the session.
    for seconds in (int(1e30), 365 * 24 * 3600 + 1, -(2**31) - 1):
        with pytest.raises(ValueError, match="outside"):
            tx.set_max_inactive(seconds)
    with pytest.raises(UnencodableValue, match=r"'hits'.*1025 bits"):
        tx.set("hits", 2**1024)
    assert tx.delta.changes == (SetAttribute("ok", 1),)
    tx.set_max_inactive(365 * 24 * 3600)
    with pytest.raises(ValueError, match="max_inactive"):
        SessionManager(max_inactive=10**20)


def test_transaction_is_unusable_after_finish() -> None:
    manager = make_manager()
    tx = manager.begin(manager.create(T0), T0)
    tx.finish()
    for call in (
        lambda: tx.get("a"),
        lambda: tx.set("a", 1),
        lambda: tx.remove("a"),
        tx.names,
        lambda: tx.set_max_inactive(1),
        lambda: tx.set_principal("p"),
        tx.invalidate,
        tx.finish,
        lambda: tx.change_id(route="x"),
    ):
        with pytest.raises(RuntimeError, match="finished"):
            call()
    assert tx.finished
    assert tx.delta.empty  # still readable for the backend


def test_invalidate_in_a_transaction() -> None:
    manager = make_manager()
    session = manager.create(T0)
    tx = manager.begin(session, T0)
    tx.set("user", "ann")
    tx.invalidate()
    tx.invalidate()
    assert not session.valid
    assert tx.get("user") is None
    with pytest.raises(RuntimeError, match="invalidated"):
        tx.set("user", "bob")
    assert manager.find(str(session.id), T0) is None  # gone at once for other requests
    assert len(manager) == 0
    assert manager.statistics() == ManagerStatistics(0, 1, 0, 1, 1, 0, 0, 0)
    delta = tx.finish()
    assert delta.changes == (SetAttribute("user", "ann"), Invalidate())
    assert len(manager) == 0
    assert manager.statistics().invalidated == 1


def test_change_id_in_a_transaction_is_recorded() -> None:
    manager = make_manager()
    session = manager.create(T0)
    start = str(session.id)
    tx = manager.begin(session, T0)
    old = tx.change_id(new_base=True)
    assert str(old) == start
    assert tx.id == str(session.id) != start
    tx.change_id(route="node1")  # unchanged: nothing recorded
    delta = tx.finish()
    assert delta.session_id == start
    assert delta.changes == (ChangeId(str(session.id)),)
    assert session.version == 1


def test_context_manager_finishes() -> None:
    manager = make_manager()
    session = manager.create(T0)
    with pytest.raises(KeyError), manager.begin(session, T0) as tx:
        tx.set("a", 1)
        raise KeyError("app failure")
    assert tx.finished
    assert session.version == 1
    assert manager.statistics().in_use == 0


# --- deltas -----------------------------------------------------------------------------------------


def run_request(manager: SessionManager, session: Session, now: float) -> Delta:
    tx = manager.begin(session, now)
    tx.set("cart", {"items": [1, 2, {"sku": "x", "qty": 2}], "total": 12.5})
    tx.set("n", 2**80)
    tx.set("blob", b"\x00\xff")
    tx.remove("old")
    tx.set_max_inactive(300)
    tx.set_principal("ann")
    return tx.finish()


def test_apply_delta_onto_a_copy_gives_an_equal_session() -> None:
    manager = make_manager()
    session = manager.create(T0)
    with manager.begin(session, T0 + 1) as tx:
        tx.set("old", 1)
    replica = session.copy()
    delta = run_request(manager, session, T0 + 5)
    assert replica != session
    apply_delta(replica, delta)
    assert replica == session
    # ... also after the delta crossed the wire, and onto a copy that crossed it as well.
    replica = decode_session(encode_session(session))
    other = make_manager()
    other.add(replica)
    delta = run_request(manager, session, T0 + 9)
    assert other.apply_delta(decode_delta(encode_delta(delta))).session is replica
    assert replica == session


def test_apply_delta_does_not_move_access_time_backwards() -> None:
    session = Session.new(SessionId("E" * 32), T0, 60)
    session.touch(T0 + 10)
    apply_delta(session, Delta(str(session.id), 0, (), accessed=T0 + 5))
    assert (session.last_accessed, session.this_accessed) == (T0, T0 + 10)
    assert session.version == 0  # an empty delta changes nothing else


def test_apply_delta_on_a_newer_copy_after_a_conflict() -> None:
    # msm: two requests started from version 0; the second writer re-applies its delta on the stored one.
    manager = make_manager()
    session = manager.create(T0)
    stored = session.copy()
    tx = manager.begin(session, T0 + 1)
    tx.set("b", 2)
    mine = tx.finish()
    stored.attributes["a"] = 1
    stored.version = 1
    assert mine.base_version != stored.version  # the conflict is visible
    apply_delta(stored, mine)
    assert stored.attributes == {"a": 1, "b": 2}
    assert stored.version == 2


def test_manager_apply_delta_follows_id_changes_and_invalidation() -> None:
    primary, replica_manager = make_manager(), make_manager()
    session = primary.create(T0)
    replica_manager.add(session.copy())
    tx = primary.begin(session, T0)
    tx.change_id(new_base=True)
    result = replica_manager.apply_delta(tx.finish())
    replica = result.session
    assert result.fit is Fit.APPLIED and replica is not None and replica.id == session.id
    assert replica_manager.get_by_base(session.id.base) is replica
    assert len(replica_manager) == 1
    tx = primary.begin(session, T0)
    tx.invalidate()
    assert replica_manager.apply_delta(tx.finish()).session is replica
    assert not replica.valid
    assert len(replica_manager) == 0
    assert replica_manager.statistics().invalidated == 1
    assert replica_manager.apply_delta(Delta("F" * 32, 0, ())).fit is Fit.MISSING
    assert replica_manager.apply_delta(Delta("not an id", 0, ())).fit is Fit.MISSING
    assert replica_manager.statistics().rejected_ids == 1


def test_delta_fit_tells_stale_from_gap() -> None:
    assert delta_fit(None, 3) is Fit.MISSING
    assert delta_fit(3, 3) is Fit.APPLIED
    assert delta_fit(4, 3) is Fit.STALE  # the copy moved on: a lost race, or a delta already applied
    assert delta_fit(2, 3) is Fit.GAP  # the copy missed version 3: only the whole session repairs it


def test_a_delta_that_does_not_fit_is_not_applied_unless_forced() -> None:
    primary, replica_manager = make_manager(), make_manager()
    session = primary.create(T0)
    replica = session.copy()
    replica_manager.add(replica)
    with primary.begin(session, T0 + 1) as tx:
        tx.set("a", 1)
    first = tx.delta  # made from version 0
    with primary.begin(session, T0 + 2) as tx:
        tx.set("a", 2)
    second = tx.delta  # made from version 1
    gap = replica_manager.apply_delta(second)
    assert (gap.fit, gap.session, replica.attributes, replica.version) == (Fit.GAP, replica, {}, 0)
    assert replica_manager.apply_delta(first).fit is Fit.APPLIED
    stale = replica_manager.apply_delta(first)
    assert (stale.fit, replica.attributes, replica.version) == (Fit.STALE, {"a": 1}, 1)
    assert replica_manager.apply_delta(second).fit is Fit.APPLIED and replica == session
    with primary.begin(session, T0 + 3) as tx:
        tx.invalidate()
    ended = Delta(tx.delta.session_id, 0, tx.delta.changes)  # an old base: forced, it still ends the copy
    assert replica_manager.apply_delta(ended, force=True).fit is Fit.APPLIED
    assert not replica.valid and len(replica_manager) == 0


def test_state_transfer_is_snapshot_then_install_all() -> None:
    donor, joiner = make_manager(), make_manager()
    sessions = [donor.create(T0) for _ in range(3)]
    for session in sessions:
        with donor.begin(session, T0 + 1) as tx:
            tx.set("id", str(session.id))
    ended = donor.create(T0)
    with donor.begin(ended, T0 + 1) as tx:
        tx.invalidate()
    snapshot = donor.snapshot()
    assert sorted(map(str, (s.id for s in snapshot))) == sorted(str(s.id) for s in sessions)
    donor.create(T0 + 2)  # made after the snapshot: travels as a delta, not in it
    assert len(snapshot) == 3
    # On the joiner meanwhile: a newer copy of one (a forward applied during the transfer) and the end
    # of another; both win over the transferred copies.
    newer = sessions[0].copy()
    newer.version += 1
    joiner.add(newer)
    seen = {sessions[1].id.base: 1 << 62}
    wire = [decode_session(encode_session(s)) for s in snapshot]
    installed = joiner.install_all(wire, newer=seen)
    assert [str(s.id) for s in installed] == [str(sessions[2].id)]
    assert joiner.get_by_base(sessions[0].id.base) is newer
    assert joiner.get_by_base(sessions[1].id.base) is None
    assert joiner.get_by_base(sessions[2].id.base) == sessions[2]
    assert joiner.install_all(wire, newer=seen) == [] and joiner.statistics().added == 2  # nothing newer now
    assert joiner.install(wire[0], force=True) and joiner.get_by_base(sessions[0].id.base) is wire[0]


def test_an_unfinished_invalidated_transaction_leaks_nothing() -> None:
    # A node that replaces an invalidated session with a new one may never finish the old transaction.
    manager = make_manager()
    session = manager.create(T0)
    manager.begin(session, T0).invalidate()
    assert len(manager) == 0
    assert manager.statistics().in_use == 0


def test_in_use_follows_a_new_base() -> None:
    manager = make_manager()
    session = manager.create(T0)
    tx = manager.begin(session, T0)
    tx.change_id(new_base=True)
    assert manager.expire(T0 + 1000) == []
    tx.finish()
    assert manager.statistics().in_use == 0
    assert manager.expire(T0 + 1000) == [session]


def test_concurrent_requests_on_one_session() -> None:
    manager = make_manager()
    session = manager.create(T0)
    first, second = manager.begin(session, T0 + 1), manager.begin(session, T0 + 2)
    first.set("a", 1)
    second.set("b", 2)
    assert first.finish().base_version == second.finish().base_version == 0
    assert session.version == 2  # both requests changed it; the second delta shows a stale base
    assert session.attributes == {"a": 1, "b": 2}
    assert manager.statistics().in_use == 0


def test_a_session_not_held_by_the_manager_can_run_a_request() -> None:
    manager = make_manager()
    loose = Session.new(SessionId("A" * 32), T0, 60)
    with manager.begin(loose, T0) as tx:
        tx.set("a", 1)
    assert loose.version == 1
    assert manager.statistics().in_use == 0
