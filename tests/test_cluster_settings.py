"""The cluster flags: Tomcat's defaults, and the errors that name the flag to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sesh.config import ConfigError, NodeConfig, load
from sesh.node.cluster.settings import ClusterSettings, cluster_settings


def settings(**flags: object) -> ClusterSettings:
    """Through load(), as the command line: the cross-field rules run there."""
    return cluster_settings(load(NodeConfig, {"mode": "cluster", **flags}))


def test_defaults_are_tomcats_and_safe() -> None:
    s = settings()
    assert (s.mcast_address, s.mcast_port, s.frequency, s.drop_time) == ("228.0.0.4", 45564, 0.5, 3.0)
    assert (s.receiver_port, s.auto_bind, s.mcast_bind, s.receiver_address) == (4000, 100, "127.0.0.1", "127.0.0.1")
    assert s.send_ack and s.secret is None and not s.expire_sessions_on_shutdown
    assert not s.route_binder  # no --route: ids stay route-free
    assert settings(route="a").route_binder


def test_non_loopback_without_secret_needs_insecure_cluster(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--cluster-secret"):
        settings(mcast_bind="10.1.2.3")
    assert settings(mcast_bind="10.1.2.3", insecure_cluster=True)
    assert settings(receiver_address="10.1.2.3", cluster_secret="x").secret == b"x"
    secret = tmp_path / "secret"
    secret.write_text("from-file\nignored\n")
    assert settings(cluster_secret_file=str(secret)).secret == b"from-file"
    with pytest.raises(ConfigError, match="--cluster-secret-file"):
        settings(cluster_secret_file=str(tmp_path / "missing"))


def test_static_membership_needs_members_and_members_need_static() -> None:
    with pytest.raises(ConfigError, match="--membership static"):
        settings(membership="static")
    with pytest.raises(ConfigError, match="--member"):
        settings(members=("127.0.0.1:4001",))
    with pytest.raises(ConfigError, match="--member"):
        settings(membership="static", members=("nohost",))
    s = settings(membership="static", members=("127.0.0.1:4001", "h:4002"))
    assert s.static_members == (("127.0.0.1", 4001), ("h", 4002))
    with pytest.raises(ConfigError, match="--mcast-address"):
        settings(mcast_address="10.0.0.1")
