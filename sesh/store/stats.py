"""The ``stats`` family of answers, with memcached 1.6.18's field names in memcached's order.

Fields that describe memcached internals sesh does not have (slab rebalancing, the LRU maintainer,
extstore...) are reported with the value an idle memcached shows, so tools that parse the whole list
keep working; everything sesh does track is its own live number.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from sesh.net.server import ConnectionCounter
from sesh.protocol.memcache import item_size
from sesh.store.slabs import chunk_size, chunks_per_page, slab_class
from sesh.store.storage import Storage

# What `version` answers: the memcached release whose behaviour sesh reproduces, so version-sniffing
# clients (libmemcached, pymemcache users) enable the 1.6 features such as the meta commands. Operators
# tell sesh apart by `stats`' libevent field ("trio").
MEMCACHED_VERSION = "1.6.18"


@dataclass
class ServerInfo:
    """What the stats answers need to know about the running server (mutable: verbosity changes)."""

    port: int
    listen: str
    max_connections: int
    item_size_max: int
    started: int
    connections: ConnectionCounter
    version: str = MEMCACHED_VERSION
    verbosity: int = 0


Pairs = list[tuple[str, object]]


def general(storage: Storage, info: ServerInfo, now: int) -> Pairs:
    s = storage.statistics()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conns = info.connections.statistics()
    return [
        ("pid", os.getpid()),
        ("uptime", now - info.started),
        ("time", now),
        ("version", info.version),
        ("libevent", "trio"),
        ("pointer_size", 64),
        ("rusage_user", f"{usage.ru_utime:.6f}"),
        ("rusage_system", f"{usage.ru_stime:.6f}"),
        ("max_connections", info.max_connections),
        ("curr_connections", conns.current_connections),
        ("total_connections", conns.total_connections),
        ("rejected_connections", conns.refused_connections),
        ("connection_structures", conns.current_connections + 1),
        ("response_obj_oom", 0),
        ("response_obj_count", 1),
        ("response_obj_bytes", 16384),
        ("read_buf_count", 8),
        ("read_buf_bytes", 131072),
        ("read_buf_bytes_free", 0),
        ("read_buf_oom", 0),
        ("reserved_fds", 20),
        ("cmd_get", s.cmd_get),
        ("cmd_set", s.cmd_set),
        ("cmd_flush", s.cmd_flush),
        ("cmd_touch", s.cmd_touch),
        ("cmd_meta", s.cmd_meta),
        ("get_hits", s.get_hits),
        ("get_misses", s.get_misses),
        ("get_expired", s.get_expired),
        ("get_flushed", s.get_flushed),
        ("delete_misses", s.delete_misses),
        ("delete_hits", s.delete_hits),
        ("incr_misses", s.incr_misses),
        ("incr_hits", s.incr_hits),
        ("decr_misses", s.decr_misses),
        ("decr_hits", s.decr_hits),
        ("cas_misses", s.cas_misses),
        ("cas_hits", s.cas_hits),
        ("cas_badval", s.cas_badval),
        ("touch_hits", s.touch_hits),
        ("touch_misses", s.touch_misses),
        ("store_too_large", s.store_too_large),
        ("store_no_memory", s.store_no_memory),
        ("auth_cmds", 0),
        ("auth_errors", 0),
        ("bytes_read", 0),
        ("bytes_written", 0),
        ("limit_maxbytes", s.limit_maxbytes),
        ("accepting_conns", 1),
        ("listen_disabled_num", 0),
        ("time_in_listen_disabled_us", 0),
        ("threads", 1),
        ("conn_yields", 0),
        ("hash_power_level", 16),
        ("hash_bytes", 524288),
        ("hash_is_expanding", 0),
        ("slab_reassign_rescues", 0),
        ("slab_reassign_chunk_rescues", 0),
        ("slab_reassign_evictions_nomem", 0),
        ("slab_reassign_inline_reclaim", 0),
        ("slab_reassign_busy_items", 0),
        ("slab_reassign_busy_deletes", 0),
        ("slab_reassign_running", 0),
        ("slabs_moved", 0),
        ("lru_crawler_running", 0),
        ("lru_crawler_starts", 0),
        ("lru_maintainer_juggles", 0),
        ("malloc_fails", 0),
        ("log_worker_dropped", 0),
        ("log_worker_written", 0),
        ("log_watcher_skipped", 0),
        ("log_watcher_sent", 0),
        ("log_watchers", 0),
        ("unexpected_napi_ids", 0),
        ("round_robin_fallback", 0),
        ("bytes", s.bytes),
        ("curr_items", s.curr_items),
        ("total_items", s.total_items),
        ("slab_global_page_pool", 0),
        ("expired_unfetched", s.expired_unfetched),
        ("evicted_unfetched", s.evicted_unfetched),
        ("evicted_active", s.evicted_active),
        ("evictions", s.evictions),
        ("reclaimed", s.reclaimed),
        ("crawler_reclaimed", 0),
        ("crawler_items_checked", 0),
        ("lrutail_reflocked", 0),
        ("moves_to_cold", 0),
        ("moves_to_warm", 0),
        ("moves_within_lru", 0),
        ("direct_reclaims", 0),
        ("lru_bumps_dropped", 0),
    ]


def settings(storage: Storage, info: ServerInfo) -> Pairs:
    return [
        ("maxbytes", storage.memory_limit),
        ("maxconns", info.max_connections),
        ("tcpport", info.port),
        ("udpport", 0),
        ("inter", info.listen),
        ("verbosity", info.verbosity),
        ("oldest", storage.oldest_live),
        ("evictions", "on"),
        ("domain_socket", "NULL"),
        ("umask", 700),
        ("shutdown_command", "no"),
        ("growth_factor", "1.25"),
        ("chunk_size", 48),
        ("num_threads", 1),
        ("num_threads_per_udp", 1),
        ("stat_key_prefix", ":"),
        ("detail_enabled", "no"),
        ("reqs_per_event", 20),
        ("cas_enabled", "yes"),
        ("tcp_backlog", 1024),
        ("binding_protocol", "ascii"),
        ("auth_enabled_sasl", "no"),
        ("auth_enabled_ascii", "no"),
        ("item_size_max", info.item_size_max),
        ("maxconns_fast", "yes"),
        ("hashpower_init", 0),
        ("slab_reassign", "no"),
        ("slab_automove", 0),
        ("slab_automove_ratio", "0.80"),
        ("slab_automove_window", 30),
        ("slab_chunk_max", 524288),
        ("lru_crawler", "no"),
        ("lru_crawler_sleep", 100),
        ("lru_crawler_tocrawl", 0),
        ("tail_repair_time", 0),
        ("flush_enabled", "yes"),
        ("dump_enabled", "no"),
        ("hash_algorithm", "python"),
        ("lru_maintainer_thread", "no"),
        ("lru_segmented", "no"),
        ("hot_lru_pct", 20),
        ("warm_lru_pct", 40),
        ("hot_max_factor", "0.20"),
        ("warm_max_factor", "2.00"),
        ("temp_lru", "no"),
        ("temporary_ttl", 61),
        ("idle_timeout", 0),
        ("watcher_logbuf_size", 262144),
        ("worker_logbuf_size", 65536),
        ("read_buf_mem_limit", 0),
        ("track_sizes", "no"),
        ("inline_ascii_response", "no"),
    ]


def _classes(storage: Storage, now: int) -> dict[int, tuple[int, int, int]]:
    """Per slab class: (items, bytes as memcached counts them, oldest access time)."""
    classes: dict[int, tuple[int, int, int]] = {}
    for key, item in storage.items.items():
        size = item_size(len(key), item.flags, len(item.value))
        cls = slab_class(size)
        count, total, oldest = classes.get(cls, (0, 0, now))
        classes[cls] = (count + 1, total + size, min(oldest, item.time))
    return classes


def items(storage: Storage, now: int) -> Pairs:
    pairs: Pairs = []
    for cls, (count, total, oldest) in sorted(_classes(storage, now).items()):
        age = max(0, now - oldest)
        for name, value in (
            ("number", count), ("number_hot", 0), ("number_warm", 0), ("number_cold", count),
            ("age_hot", 0), ("age_warm", 0), ("age", age), ("mem_requested", total),
            ("evicted", 0), ("evicted_nonzero", 0), ("evicted_time", 0), ("outofmemory", 0),
            ("tailrepairs", 0), ("reclaimed", 0), ("expired_unfetched", 0), ("evicted_unfetched", 0),
            ("evicted_active", 0), ("crawler_reclaimed", 0), ("crawler_items_checked", 0),
            ("lrutail_reflocked", 0), ("moves_to_cold", 0), ("moves_to_warm", 0),
            ("moves_within_lru", 0), ("direct_reclaims", 0), ("hits_to_hot", 0), ("hits_to_warm", 0),
            ("hits_to_cold", 0), ("hits_to_temp", 0),
        ):
            pairs.append((f"items:{cls}:{name}", value))
    return pairs


def slabs(storage: Storage, now: int) -> Pairs:
    pairs: Pairs = []
    pages_total = 0
    classes = _classes(storage, now)
    for cls, (count, _, _) in sorted(classes.items()):
        per_page = chunks_per_page(cls)
        pages = max(1, -(-count // per_page))
        pages_total += pages
        for name, value in (
            ("chunk_size", chunk_size(cls)), ("chunks_per_page", per_page), ("total_pages", pages),
            ("total_chunks", pages * per_page), ("used_chunks", count),
            ("free_chunks", pages * per_page - count), ("free_chunks_end", 0),
        ):
            pairs.append((f"{cls}:{name}", value))
    pairs.append(("active_slabs", len(classes)))
    pairs.append(("total_malloced", pages_total * 1024 * 1024))
    return pairs
