"""The cluster flags of :class:`~sesh.config.NodeConfig`, turned into what the backend uses (the
cross-field rules are in :mod:`sesh.config`, run when the config is loaded)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from sesh.config import ConfigError, NodeConfig


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    name: str
    route: str
    max_inactive: int
    expire_interval: float
    membership: str  # multicast | static
    static_members: tuple[tuple[str, int], ...]
    mcast_address: str
    mcast_port: int
    mcast_bind: str
    mcast_ttl: int
    frequency: float  # seconds
    drop_time: float  # seconds
    domain: str
    receiver_address: str
    receiver_port: int
    auto_bind: int
    send_ack: bool
    ack_timeout: float
    replication_filter: re.Pattern[str] | None
    route_binder: bool
    state_transfer_timeout: float
    expire_sessions_on_shutdown: bool
    secret: bytes | None


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--member: expected host:port of a peer's receiver, got {text!r}")
    return host, int(port)


def cluster_settings(cfg: NodeConfig) -> ClusterSettings:
    """The checked settings; :class:`ConfigError` naming the flag when one is wrong."""
    secret_text = cfg.cluster_secret
    if cfg.cluster_secret_file:
        try:
            lines = Path(cfg.cluster_secret_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"--cluster-secret-file: cannot read {cfg.cluster_secret_file}: {exc}") from None
        secret_text = lines[0].strip() if lines else ""
        if not secret_text:
            raise ConfigError(f"--cluster-secret-file: {cfg.cluster_secret_file} is empty")
    receiver = cfg.mcast_bind if cfg.receiver_address == "auto" else cfg.receiver_address
    static = tuple(_host_port(m) for m in cfg.members)
    try:
        if not ipaddress.ip_address(cfg.mcast_address).is_multicast:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--mcast-address: expected a multicast group address, got {cfg.mcast_address!r}") from None
    return ClusterSettings(
        name=cfg.name,
        route=cfg.route,
        max_inactive=cfg.max_inactive,
        expire_interval=cfg.expire_interval,
        membership=cfg.membership,
        static_members=static,
        mcast_address=cfg.mcast_address,
        mcast_port=cfg.mcast_port,
        mcast_bind=cfg.mcast_bind,
        mcast_ttl=cfg.mcast_ttl,
        frequency=cfg.frequency / 1000,
        drop_time=cfg.drop_time / 1000,
        domain=cfg.domain,
        receiver_address=receiver,
        receiver_port=cfg.receiver_port,
        auto_bind=cfg.auto_bind,
        send_ack=cfg.send_options == "ack",
        ack_timeout=cfg.ack_timeout,
        replication_filter=re.compile(cfg.replication_filter) if cfg.replication_filter else None,
        route_binder=cfg.route_binder and bool(cfg.route),
        state_transfer_timeout=cfg.state_transfer_timeout,
        expire_sessions_on_shutdown=cfg.expire_sessions_on_shutdown,
        secret=secret_text.encode() if secret_text else None,
    )
