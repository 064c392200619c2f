"""The plan of a ``sesh up`` topology, pure: members, ports, command lines, pass-through settings."""

from __future__ import annotations

import pytest

from sesh.config import ConfigError, UpConfig, load
from sesh.up.topology import plan


def _flags(argv: tuple[str, ...]) -> list[str]:
    return [a for a in argv if a.startswith("-")]


def test_the_seed_msm_non_sticky() -> None:
    p = plan(load(UpConfig, {"port": "18555", "control_socket": "/tmp/x.sock"}))
    assert [m.name for m in p.members] == ["store-n1", "store-n2", "node1", "node2", "balancer"]
    assert len({m.port for m in p.members}) == 5
    stores, nodes, [balancer] = p.by_role("store"), p.by_role("node"), p.by_role("balancer")
    memcached_nodes = f"--memcached-nodes=n1:127.0.0.1:{stores[0].port},n2:127.0.0.1:{stores[1].port}"
    for node in nodes:
        assert "--mode=msm" in node.argv and "--no-sticky" in node.argv and memcached_nodes in node.argv
        assert not any(a.startswith("--route") for a in node.argv)
    assert balancer.port == 18555 and p.balancer_url == "http://127.0.0.1:18555/"
    assert "--lbmethod=bytraffic" in balancer.argv and "--manager-path=/status" in balancer.argv
    assert f"--manager-token={p.manager_token}" in balancer.argv and "--workers=1" in balancer.argv
    assert not any(a.startswith("--stickysession") for a in balancer.argv)
    assert [a for a in balancer.argv if a.startswith("--member=")] == [f"--member={n.url.rstrip('/')}" for n in nodes]
    assert p.control_socket == "/tmp/x.sock"


def test_sticky_routes_and_failover_nodes_as_the_seed() -> None:
    p = plan(load(UpConfig, {"port": "18556", "sticky": True}))
    node1, node2 = p.by_role("node")
    assert "--route=a" in node1.argv and "--route=b" in node2.argv
    assert "--sticky" in node1.argv and "--failover-nodes=n1" in node1.argv and "--failover-nodes=n2" in node2.argv
    [balancer] = p.by_role("balancer")
    assert "--stickysession=JSESSIONID|jsessionid" in balancer.argv
    assert f"--member=http://127.0.0.1:{node1.port} route=a" in balancer.argv
    assert p.control_socket.endswith("sesh-up-18556.sock")


def test_local_mode_has_no_stores_and_shapes_follow_the_counts() -> None:
    p = plan(load(UpConfig, {"port": "0", "mode": "local", "nodes": "3"}))
    assert [m.name for m in p.members] == ["node1", "node2", "node3", "balancer"]
    assert p.by_role("balancer")[0].port != 0  # a free port picked up front, so the socket is named after it
    p = plan(load(UpConfig, {"port": "0", "stores": "3", "nodes": "1"}))
    assert [m.name for m in p.by_role("store")] == ["store-n1", "store-n2", "store-n3"]


def test_settings_pass_through_member_over_role() -> None:
    cfg = load(UpConfig, {"port": "18557", "set": ["node.max-inactive=600", "node2.max-inactive=60",
                                                   "node1.port=18558", "balancer.lbmethod=byrequests",
                                                   "store.memory-limit=16", "balancer.workers=auto"]})
    p = plan(cfg)
    node1, node2 = p.by_role("node")
    assert node1.port == 18558 and "--port=18558" in node1.argv
    assert "--max-inactive=600" in node1.argv and "--max-inactive=60" in node2.argv
    assert "--lbmethod=byrequests" in p.by_role("balancer")[0].argv
    assert "--workers=auto" in p.by_role("balancer")[0].argv
    assert all("--memory-limit=16" in s.argv for s in p.by_role("store"))


def test_settings_from_toml_tables(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "t.toml"
    path.write_text("nodes = 1\nport = 18559\n[set.node]\ncookie-secure = true\nmax-inactive = 90\n")
    p = plan(load(UpConfig, {}, str(path)))
    [node] = p.by_role("node")
    assert "--cookie-secure" in node.argv and "--max-inactive=90" in node.argv


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("node.lbmethod=bytraffic", "--set node.lbmethod: 'sesh node' has no setting 'lbmethod'"),
        ("node9.port=1", "--set node9.port: no role or member 'node9'"),
        ("balancer.lbmethod=rr", "--set balancer.lbmethod: --lbmethod: expected byrequests|bytraffic|bybusyness"),
        ("node.max-inactive=soon", "--set node.max-inactive: --max-inactive: expected a whole number"),
    ],
)
def test_bad_settings_name_what_to_fix(setting: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan(load(UpConfig, {"port": "18560", "set": [setting]}))
    assert message in str(info.value)


def test_bad_set_syntax_names_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load(UpConfig, {"set": ["nodemax"]})
    assert str(info.value).startswith("--set: expected ROLE.KEY=VALUE")


def test_store_redis_is_a_six_node_cluster_and_its_seeds() -> None:
    from tests.references import reference

    reference("redis-server")
    reference("redis-cli")
    p = plan(load(UpConfig, {"port": "0", "store": "redis", "sticky": True}))
    stores = p.by_role("store")
    assert [m.name for m in stores] == [f"store-r{i}" for i in range(1, 7)] + ["redis-cluster"]
    servers = stores[:6]
    assert all(s.ready == "port" and "--cluster-enabled yes" in s.argv[-1] for s in servers)
    assert all(s.port + 10000 not in {t.port for t in servers} for s in servers)  # bus ports stay free
    assert "--cluster-replicas 1" in stores[6].argv[-1]
    seeds = ",".join(f"redis://127.0.0.1:{s.port}" for s in servers)
    for node in p.by_role("node"):
        assert f"--memcached-nodes={seeds}" in node.argv
        assert not any(a.startswith("--failover-nodes") for a in node.argv)  # Redis fails over by itself
    with pytest.raises(ConfigError, match="only a store's port"):
        plan(load(UpConfig, {"port": "0", "store": "redis", "set": ["store.memory-limit=16"]}))
