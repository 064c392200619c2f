"""Pure tests of msm's pieces: settings checks, keys and expiry, node order, locking policy, rebasing."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sesh.config import ConfigError, NodeConfig, load
from sesh.core.delta import Delta, Invalidate, RemoveAttribute, SetAttribute, SetMaxInactive
from sesh.core.ids import SessionId
from sesh.core.session import Session
from sesh.node.msm.keys import MAX_RELATIVE_EXPTIME, KeyFormat, NodeRing, key_prefix, store_exptime
from sesh.node.msm.locking import READ_ONLY_AFTER, LockingPolicy, ReadOnlyPaths
from sesh.node.msm.merge import Conflict, rebase
from sesh.node.msm.settings import msm_settings
from tests.procs import ROOT

BASE = "0123456789ABCDEF0123456789ABCDEF"
TWO = "n1:127.0.0.1:11211,n2:127.0.0.1:11212"


def settings(**flags: str | bool):  # type: ignore[no-untyped-def]
    return msm_settings(load(NodeConfig, {"mode": "msm", "memcached_nodes": TWO, **flags}))


# --- settings -------------------------------------------------------------------------------------------


def test_defaults_are_msms_but_acknowledged_means_stored() -> None:
    s = settings()
    assert [str(n) for n in s.nodes] == ["n1:127.0.0.1:11211", "n2:127.0.0.1:11212"]
    assert s.sticky and str(s.locking) == "none" and s.keys.prefix == ""
    # Unlike msm, the store write is done before the answer unless asked otherwise (the acknowledge
    # rule), and its timeout is one store operation's, not msm's 100 ms.
    assert not s.backup_async and s.backup_timeout == s.operation_timeout == 1.0
    single = msm_settings(load(NodeConfig, {"mode": "msm", "memcached_nodes": "127.0.0.1:11211"}))
    assert single.nodes[0].node_id == ""


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"memcached_nodes": ""}, "--memcached-nodes: msm mode needs"),
        ({"memcached_nodes": "127.0.0.1:1,127.0.0.1:2"}, "--memcached-nodes: .* has no node id"),
        ({"memcached_nodes": "n1:h:1,n1:h:2"}, "--memcached-nodes: node id 'n1' appears twice"),
        ({"memcached_nodes": "n-1:h:1"}, "--memcached-nodes: node id 'n-1'"),
        ({"memcached_nodes": "n1:h:99999"}, "--memcached-nodes: expected id:host:port with a port"),
        ({"failover_nodes": "n1,n2"}, "--failover-nodes: every node is a failover node"),
        ({"failover_nodes": "n3"}, "--failover-nodes: unknown node id 'n3'"),
        ({"failover_nodes": "n1", "memcached_nodes": "n1:h:1"}, "--failover-nodes: with a single store node"),
        ({"failover_nodes": "n1", "sticky": False}, "--failover-nodes: only used with --sticky"),
        ({"locking_mode": "all"}, "--locking-mode: only used with --no-sticky"),
        ({"locking_mode": "some", "sticky": False}, "--locking-mode: expected none|all|auto|uriPattern"),
        ({"locking_mode": "uriPattern:(", "sticky": False}, "--locking-mode: uriPattern: not a valid"),
        ({"sticky": False, "route": "a"}, "--route: a --no-sticky node must not have a route"),
        ({"storage_key_prefix": "bogus"}, "--storage-key-prefix: expected static:NAME"),
    ],
)
def test_misconfigurations_msm_only_warns_about_are_errors(flags: dict[str, str | bool], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**flags)


def test_misconfigured_node_exits_naming_the_flag() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "sesh.py"), "node", "--mode", "msm", "--port", "0",
         "--memcached-nodes", TWO, "--failover-nodes", "n1,n2"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "sesh node: --failover-nodes: every node is a failover node" in result.stderr


# --- keys, expiry, node order ---------------------------------------------------------------------------


def test_keys_follow_msms_layout() -> None:
    session_id = SessionId(BASE, "n1", "a")
    assert KeyFormat().session_key(session_id) == f"{BASE}-n1.a".encode()
    keys = KeyFormat(key_prefix("static:shop,host,context,webappVersion"))
    assert keys.session_key(session_id) == f"shop_localhost_ROOT_{BASE}-n1.a".encode()
    assert keys.lock_key(session_id) == f"lock:shop_localhost_ROOT_{BASE}-n1.a".encode()
    assert keys.backup_key(session_id) == f"bak:shop_localhost_ROOT_{BASE}-n1.a".encode()
    assert re.fullmatch(r"[0-9a-f]{32}", key_prefix("host.hash"))
    with pytest.raises(ValueError, match="static: needs a name"):
        key_prefix("static:")
    with pytest.raises(ValueError, match="at most 64"):
        key_prefix("static:" + "x" * 65)


def test_store_expiry_is_relative_up_to_30_days_then_absolute() -> None:
    now = 1_700_000_000.0
    session = Session.new(SessionId(BASE), now, 1800)
    assert store_exptime(session, now) == 1800
    assert store_exptime(session, now + 1799.5) == 1  # never 0, which would mean "never expires"
    session.max_inactive = MAX_RELATIVE_EXPTIME
    assert store_exptime(session, now) == MAX_RELATIVE_EXPTIME
    session.max_inactive = MAX_RELATIVE_EXPTIME + 1
    assert store_exptime(session, now) == int(now) + MAX_RELATIVE_EXPTIME + 1
    session.max_inactive = 0
    assert store_exptime(session, now) == 0


def test_node_ring_orders_failover_nodes_last() -> None:
    ring = NodeRing(["n1", "n2", "n3", "n4"], frozenset({"n2"}))
    assert ring.successors("n3") == ["n4", "n1", "n2"]
    assert ring.successors("n1") == ["n3", "n4", "n2"]
    up = {"n1": False, "n2": True, "n3": False, "n4": False}
    assert ring.next_available("n1", up.__getitem__) == "n2"
    assert [ring.for_new_session(lambda n: True) for _ in range(4)] == ["n1", "n3", "n4", "n1"]
    assert ring.for_new_session(up.__getitem__) == "n2"  # only the failover node is left
    assert ring.for_new_session(lambda n: False) == "n1"
    assert ring.node_of(SessionId(BASE, "n3")) == "n3"
    assert ring.node_of(SessionId(BASE, "zz")) == "n1"  # not one of ours: the first regular node


# --- locking --------------------------------------------------------------------------------------------


def test_locking_policies() -> None:
    paths = ReadOnlyPaths()
    assert not LockingPolicy.parse("none").should_lock("/", paths)
    assert LockingPolicy.parse("all").should_lock("/", paths)
    pattern = LockingPolicy.parse("uriPattern:/cart.*|/pay")
    assert pattern.should_lock("/cart/1", paths) and pattern.should_lock("/pay", paths)
    assert not pattern.should_lock("/pay/x", paths)  # whole-path match, as Java's matches()
    assert str(pattern) == "uriPattern:/cart.*|/pay"


def test_auto_locking_learns_read_only_paths() -> None:
    auto, paths = LockingPolicy.parse("auto"), ReadOnlyPaths(limit=3)
    for _ in range(READ_ONLY_AFTER - 1):
        paths.record("/view", modified=False)
    assert auto.should_lock("/view", paths)
    paths.record("/view", modified=False)
    assert not auto.should_lock("/view", paths)
    paths.record("/view", modified=True)  # changed the session once: locked from now on
    for _ in range(5):
        paths.record("/view", modified=False)
    assert auto.should_lock("/view", paths)
    for path in ("/a", "/b", "/c"):  # bounded: the least recently seen are forgotten
        paths.record(path, modified=True)
    assert list(paths._modifying) == ["/a", "/b", "/c"]


# --- rebasing -------------------------------------------------------------------------------------------


def stored(version: int, **attributes: object) -> Session:
    session = Session.new(SessionId(BASE, "n1"), 100.0, 1800)
    session.attributes.update(attributes)
    session.version = version
    return session


def test_disjoint_changes_are_rebased() -> None:
    base, current = stored(3, a=1, b=1), stored(4, a=2, b=1)
    delta = Delta(str(base.id), 3, (SetAttribute("b", 2), RemoveAttribute("c")), accessed=150.0)
    merged = rebase(delta, base, current)
    assert isinstance(merged, Session)
    assert merged.attributes == {"a": 2, "b": 2} and merged.version == 5 and merged.this_accessed == 150.0
    assert current.attributes == {"a": 2, "b": 1}  # the stored copy is not modified in place


@pytest.mark.parametrize(
    ("delta_changes", "current", "reason"),
    [
        ((SetAttribute("hits", 5),), stored(4, hits=5), "attribute 'hits' was changed"),
        ((RemoveAttribute("cart"),), stored(4, hits=4), "attribute 'cart' was changed"),
        ((SetMaxInactive(60),), stored(4, hits=4, cart=1), "max inactive"),
    ],
)
def test_overlapping_changes_are_conflicts(delta_changes: tuple, current: Session, reason: str) -> None:  # type: ignore[type-arg]
    base = stored(3, hits=4, cart=[1])
    if isinstance(delta_changes[0], SetMaxInactive):
        current.max_inactive = 900
    result = rebase(Delta(str(base.id), 3, delta_changes), base, current)
    assert isinstance(result, Conflict) and reason in result.reason


def test_invalidated_or_unknown_base_is_a_conflict() -> None:
    current = stored(4)
    current.valid = False
    assert isinstance(rebase(Delta(str(current.id), 3, (SetAttribute("a", 1),)), stored(3), current), Conflict)
    assert isinstance(rebase(Delta(str(current.id), 0, (Invalidate(),)), None, stored(4)), Conflict)
