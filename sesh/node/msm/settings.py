"""msm's settings: what ``--mode msm`` reads from :class:`~sesh.config.NodeConfig`.

memcached-session-manager logs a warning for several misconfigurations and carries on with something
the operator did not ask for. sesh refuses them at startup with an error naming the flag (the
cross-field rules are in :mod:`sesh.config`, with every other role's, and run when the config is loaded):

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

from sesh.config import ConfigError, NodeConfig, store_node_entries
from sesh.net.memcache_client import StoreNodeAddress
from sesh.node.msm.keys import KeyFormat, key_prefix
from sesh.node.msm.locking import LockingPolicy


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
    try:
        return tuple(StoreNodeAddress(*entry) for entry in store_node_entries(text))
    except ValueError as exc:
        raise ConfigError(f"--memcached-nodes: {exc}") from None


def msm_settings(cfg: NodeConfig) -> MsmSettings:
    """The checked msm settings of a node; :class:`ConfigError` naming the flag otherwise."""
    nodes = parse_nodes(cfg.memcached_nodes)
    failover = frozenset(part.strip() for part in cfg.failover_nodes.split(",") if part.strip())
    try:
        locking = LockingPolicy.parse(cfg.locking_mode)
    except ValueError as exc:
        raise ConfigError(f"--locking-mode: {exc}") from None
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
