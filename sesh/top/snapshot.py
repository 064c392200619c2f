"""What ``sesh top`` shows, as frozen dataclasses: one :class:`Snapshot` per poll, rendered purely.

A target that could not be read is still in the snapshot, with ``up=False`` and the reason in ``error``,
so an unreachable member shows as down instead of vanishing or stopping the dashboard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BalancerMemberView:
    url: str
    route: str
    status: str  # httpd's words: "Init Ok", "Init Drn Ok", "Init Err"
    flags: str
    usable: bool
    elected: int
    busy: int
    load: int  # lbstatus
    bytes_to: int
    bytes_from: int


@dataclass(frozen=True, slots=True)
class BalancerView:
    name: str
    url: str
    up: bool
    error: str
    state: str  # from sesh up ("running", "killed"...), or "" when not supervised
    lbmethod: str
    sticky: str
    members: tuple[BalancerMemberView, ...]


@dataclass(frozen=True, slots=True)
class StoreNodeView:
    """An msm store node as a node sees it, or (cluster mode) a peer it replicates to."""

    node_id: str
    address: str
    available: bool
    failures: int


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    url: str
    up: bool
    error: str
    state: str
    mode: str
    sticky: bool | None
    sessions: int
    requests: int
    rps: float | None  # None on the first poll (a rate needs two)
    p99: float | None  # only when the node reports it
    backup_failures: int
    conflicts: int
    store_nodes: tuple[StoreNodeView, ...]


@dataclass(frozen=True, slots=True)
class StoreView:
    name: str
    address: str
    up: bool
    error: str
    state: str
    items: int
    bytes: int
    hit_rate: float | None  # get_hits / (get_hits + get_misses); None before the first get
    evictions: int
    connections: int
    ops: int  # every command counted by stats (get, set, touch, flush, meta...)
    ops_per_s: float | None
    role: str = ""  # Redis: master, or replica with its link state (from INFO); "" for memcached stores


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member of the watched ``sesh up`` (what s/k/r act on)."""

    name: str
    role: str
    pid: int
    url: str
    state: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    time: float  # Unix time of the poll
    source: str  # "sesh up (SOCKET)" or "targets"
    up_error: str  # why the sesh up could not be read, when it could not
    manager_token: str
    balancers: tuple[BalancerView, ...]
    nodes: tuple[NodeView, ...]
    stores: tuple[StoreView, ...]
    members: tuple[MemberView, ...]

    def as_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc.pop("manager_token")  # a snapshot is for reading; the token is sesh up's to hand out
        return doc
