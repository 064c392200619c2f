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
- ``redis://`` URLs mixed with memcached nodes, or given with ``--failover-nodes`` (Redis replicates
  and fails over by itself: its URLs are one store, not a ring of nodes);
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
from sesh.net.redis_url import RedisOptions, RedisURL, is_redis_url, parse_redis_url
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
    redis: RedisSettings | None = None  # a Redis server or cluster instead of memcached nodes


@dataclass(frozen=True, slots=True)
class RedisSettings:
    urls: tuple[RedisURL, ...]
    options: RedisOptions


def parse_redis(text: str, cfg: NodeConfig) -> RedisSettings | None:
    """The Redis store named by ``--memcached-nodes`` (one URL, or the seeds of one cluster); None when
    it names memcached nodes."""
    entries = [part.strip() for part in text.split(",") if part.strip()]
    redis = [e for e in entries if is_redis_url(e)]
    if not redis:
        return None
    try:
        urls = tuple(parse_redis_url(e) for e in redis)
    except ValueError as exc:
        raise ConfigError(f"--memcached-nodes: {exc}") from None
    if len({u.tls for u in urls}) > 1 or len({(u.username, u.password) for u in urls}) > 1:
        raise ConfigError("--memcached-nodes: the seeds of one Redis Cluster share one scheme and one "
                          "user:password")
    options = RedisOptions(
        operation_timeout=cfg.operation_timeout,
        failover_timeout=cfg.redis_failover_timeout,
        wait_replicas=cfg.redis_wait_replicas,
        wait_timeout=cfg.redis_wait_timeout,
        tls_ca_file=cfg.redis_tls_ca_file,
        tls_cert_file=cfg.redis_tls_cert_file,
        tls_key_file=cfg.redis_tls_key_file,
    )
    return RedisSettings(urls, options)


def parse_nodes(text: str) -> tuple[StoreNodeAddress, ...]:
    """``n1:host:port,n2:host:port`` (or ``host:port`` for a single node, whose id is then empty)."""
    try:
        return tuple(StoreNodeAddress(*entry) for entry in store_node_entries(text))
    except ValueError as exc:
        raise ConfigError(f"--memcached-nodes: {exc}") from None


def msm_settings(cfg: NodeConfig) -> MsmSettings:
    """The checked msm settings of a node; :class:`ConfigError` naming the flag otherwise."""
    redis = parse_redis(cfg.memcached_nodes, cfg)
    if redis is not None:
        nodes: tuple[StoreNodeAddress, ...] = (StoreNodeAddress("", redis.urls[0].host, redis.urls[0].port),)
    else:
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
        keys=KeyFormat(prefix, hash_tag=redis is not None),
        redis=redis,
    )
