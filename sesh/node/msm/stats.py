"""msm's counters, defined once (:class:`MsmCounts`; the backend bumps their mutable twin
:data:`MsmCounters`), and the frozen statistics ``/sesh/status`` shows."""

from __future__ import annotations

from dataclasses import dataclass

from sesh.core.manager import ManagerStatistics
from sesh.net.memcache_client import NodeClientStatistics
from sesh.node.tally import Tally, tally_of


@dataclass(frozen=True, slots=True)
class MsmCounts:
    loads: int = 0  # sessions read from a store node
    load_misses: int = 0  # requested sessions the store did not have (expired, invalidated, lost)
    load_failures: int = 0  # requested sessions that could not be read (answered 503, not replaced)
    writes: int = 0  # session copies written to their store node
    write_failures: int = 0
    backups: int = 0  # sticky: same as writes; non-sticky: bak: copies on the next node
    backup_failures: int = 0
    backup_queue_drops: int = 0  # async writes refused because the queue was full
    superseded_writes: int = 0  # copies not written because a newer one replaced them in the queue
    backups_rebuilt: int = 0  # bak: copies rewritten after their node came back (msm's issue #267)
    backups_mirrored: int = 0  # bak: copies that lost a race, copied again from the primary before the answer
    restored_from_backup: int = 0  # sessions found only in their backup and stored again
    store_failovers: int = 0  # sessions moved to another store node (id suffix rewritten)
    node_failovers: int = 0  # sessions taken over from another app node (route rewritten)
    locks: int = 0
    lock_waits: int = 0  # locks that were held by another request at first
    lock_timeouts: int = 0  # locks not obtained within --lock-expiration (the request went on, CAS-checked)
    rebased_writes: int = 0  # stale writes retried on top of the newer stored session
    conflicts: int = 0  # stale writes that could not be rebased: reported, not written
    bad_blobs: int = 0  # store values that were not readable sessions (treated as lost)
    rejected_ids: int = 0  # malformed session ids from clients


MsmCounters = tally_of(MsmCounts)


@dataclass(frozen=True, slots=True, kw_only=True)
class MsmStatistics(MsmCounts):
    mode: str
    sticky: bool
    locking_mode: str
    backup_async: bool
    sessions: ManagerStatistics
    backup_queue: int
    store_nodes: tuple[NodeClientStatistics, ...]


def msm_statistics(
    counters: Tally[MsmCounts],
    *,
    sticky: bool,
    locking_mode: str,
    backup_async: bool,
    sessions: ManagerStatistics,
    backup_queue: int,
    store_nodes: tuple[NodeClientStatistics, ...],
) -> MsmStatistics:
    return MsmStatistics(
        mode="msm",
        sticky=sticky,
        locking_mode=locking_mode,
        backup_async=backup_async,
        sessions=sessions,
        backup_queue=backup_queue,
        store_nodes=store_nodes,
        **counters.values(),
    )
