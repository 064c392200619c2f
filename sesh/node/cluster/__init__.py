"""``sesh node --mode cluster``: sessions replicated to every member, as Tomcat's SimpleTcpCluster with
DeltaManager, ordered by a coordinator so that no acknowledged update is lost.

Modules: ``settings`` (flags, checked), ``membership`` (heartbeats, failure detection: a pure state
machine), ``messages`` (frame payloads), ``backend`` (requests, replication, state transfer). The wire
format is ``sesh.protocol.cluster``; sockets live in ``sesh.net.cluster_transport`` and
``sesh.net.multicast``.
"""

from __future__ import annotations

from sesh.config import NodeConfig
from sesh.node.clock import Clock, wall_time
from sesh.node.cluster.backend import ClusterBackend
from sesh.node.cluster.settings import cluster_settings


def make_cluster_backend(cfg: NodeConfig, clock: Clock = wall_time) -> ClusterBackend:
    """The cluster backend for ``cfg``; :class:`~sesh.config.ConfigError` naming the flag if misconfigured."""
    return ClusterBackend(cluster_settings(cfg), clock)
