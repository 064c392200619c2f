"""``sesh node --mode msm``: sessions backed up to memcached-protocol store nodes, as
memcached-session-manager does (sticky or non-sticky, store and node failover, locking), plus CAS checks
so that concurrent updates are never silently lost.

Modules: ``settings`` (flags, checked), ``keys`` (msm's key layout, expiry, node order), ``locking``
(which requests lock), ``merge`` (rebasing a stale write), ``stats``,
``base`` (what both modes share), ``sticky`` and ``nonsticky`` (the two backends, on memcached nodes
or Redis alike) and ``store`` (the client interface: memcached nodes or Redis).
"""

from __future__ import annotations

from sesh.config import NodeConfig
from sesh.node.clock import Clock, wall_time
from sesh.node.msm.nonsticky import NonStickyBackend
from sesh.node.msm.settings import msm_settings
from sesh.node.msm.sticky import StickyBackend


def make_msm_backend(cfg: NodeConfig, clock: Clock = wall_time) -> StickyBackend | NonStickyBackend:
    """The msm backend for ``cfg``; :class:`~sesh.config.ConfigError` naming the flag if misconfigured."""
    settings = msm_settings(cfg)
    return StickyBackend(settings, clock) if settings.sticky else NonStickyBackend(settings, clock)
