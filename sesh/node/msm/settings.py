"""msm's settings, checked: what ``--mode msm`` reads from :class:`~sesh.config.NodeConfig`.

memcached-session-manager logs a warning for several misconfigurations and carries on with something
the operator did not ask for. sesh refuses them at startup with an error naming the flag:

- ``--memcached-nodes`` empty, malformed, or with duplicate ids; ids left out with more than one node;
- ``--failover-nodes`` naming an unknown node, naming every node (nothing would be used in normal
  operation), given with a single node (there is nothing to fail over to), or given with ``--no-sticky``
  (msm ignores it there: non-sticky sessions go to their node and a backup copy to the next one);
- ``--locking-mode`` other than ``none`` with ``--sticky`` (msm ignores it: a sticky session is only ever
  used by one node, and concurrent requests on that node share the one in-memory copy);
- ``--no-sticky`` with ``--route``: the route goes into every session id and a balancer with
  ``stickysession`` pins the session on this node, so "non-sticky" would silently be sticky (and a
  failover would rewrite the route the balancer pins on). A non-sticky node has no route; balance it
  without ``stickysession``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sesh.config import ConfigError, NodeConfig
from sesh.net.memcache_client import StoreNodeAddress
from sesh.node.msm.keys import KeyFormat, key_prefix
from sesh.node.msm.locking import LockingPolicy

_NODE_ID = re.compile(r"[A-Za-z0-9_~]+")


@dataclass(frozen=True, slots=True)
class MsmSettings:
    name: str
    route: str
    max_inactive: int
    expire_interval: float
    nodes: tuple[StoreNodeAddress, ...]
    failover_nodes: frozenset[str]
    sticky: bool
    locking: LockingPolicy
    ignore_pattern: re.Pattern[str] | None
    attribute_filter: re.Pattern[str] | None
    backup_async: bool
    backup_timeout: float
    operation_timeout: float
    lock_expiration: float
    keys: KeyFormat


def parse_nodes(text: str) -> tuple[StoreNodeAddress, ...]:
    """``n1:host:port,n2:host:port`` (or ``host:port`` for a single node, whose id is then empty)."""
    entries = [part.strip() for part in text.split(",") if part.strip()]
    if not entries:
        raise ConfigError("--memcached-nodes: msm mode needs at least one store node, e.g. n1:127.0.0.1:11211")
    nodes: list[StoreNodeAddress] = []
    for entry in entries:
        parts = entry.split(":")
        if len(parts) == 2:
            if len(entries) > 1:
                raise ConfigError(f"--memcached-nodes: {entry!r} has no node id; ids are required with several nodes")
            node_id, host, port_text = "", parts[0], parts[1]
        elif len(parts) == 3:
            node_id, host, port_text = parts
            if not _NODE_ID.fullmatch(node_id):
                raise ConfigError(
                    f"--memcached-nodes: node id {node_id!r} may contain only letters, digits, '_' and '~'"
                )
        else:
            raise ConfigError(f"--memcached-nodes: expected id:host:port, got {entry!r}")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"--memcached-nodes: expected id:host:port with a port 1-65535, got {entry!r}")
        if any(n.node_id == node_id for n in nodes):
            raise ConfigError(f"--memcached-nodes: node id {node_id!r} appears twice")
        nodes.append(StoreNodeAddress(node_id, host, int(port_text)))
    return tuple(nodes)


def msm_settings(cfg: NodeConfig) -> MsmSettings:
    """The checked msm settings of a node; :class:`ConfigError` naming the flag otherwise."""
    nodes = parse_nodes(cfg.memcached_nodes)
    ids = [n.node_id for n in nodes]
    failover = frozenset(part.strip() for part in cfg.failover_nodes.split(",") if part.strip())
    if failover:
        if not cfg.sticky:
            raise ConfigError("--failover-nodes: only used with --sticky (non-sticky sessions are backed up "
                              "to the next node instead); drop it")
        if len(nodes) == 1:
            raise ConfigError("--failover-nodes: with a single store node there is nothing to fail over to")
        unknown = sorted(failover - set(ids))
        if unknown:
            raise ConfigError(f"--failover-nodes: unknown node id {unknown[0]!r} (known: {', '.join(ids)})")
        if failover >= set(ids):
            raise ConfigError("--failover-nodes: every node is a failover node, so none would hold sessions "
                              "normally; leave at least one out")
    try:
        locking = LockingPolicy.parse(cfg.locking_mode)
    except ValueError as exc:
        raise ConfigError(f"--locking-mode: {exc}") from None
    if cfg.sticky and locking.mode != "none":
        raise ConfigError("--locking-mode: only used with --no-sticky (a sticky session is used by one node "
                          "only); drop it or add --no-sticky")
    if not cfg.sticky and cfg.route:
        raise ConfigError("--route: a --no-sticky node must not have a route: the balancer would pin sessions "
                          "on it through the id; drop --route and balance without stickysession")
    try:
        prefix = key_prefix(cfg.storage_key_prefix)
    except ValueError as exc:
        raise ConfigError(f"--storage-key-prefix: {exc}") from None
    return MsmSettings(
        name=cfg.name,
        route=cfg.route,
        max_inactive=cfg.max_inactive,
        expire_interval=cfg.expire_interval,
        nodes=nodes,
        failover_nodes=failover,
        sticky=cfg.sticky,
        locking=locking,
        ignore_pattern=re.compile(cfg.request_uri_ignore_pattern) if cfg.request_uri_ignore_pattern else None,
        attribute_filter=re.compile(cfg.session_attribute_filter) if cfg.session_attribute_filter else None,
        backup_async=cfg.session_backup_async,
        backup_timeout=cfg.session_backup_timeout,
        operation_timeout=cfg.operation_timeout,
        lock_expiration=cfg.lock_expiration,
        keys=KeyFormat(prefix),
    )
