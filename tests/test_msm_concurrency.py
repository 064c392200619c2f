"""Concurrent updates of one non-sticky session through two nodes: with locking none is lost; without
locking a write that lost the race is re-run on the winner's session (the demo page is re-runnable) or,
with re-runs off, answered 503 — never answered 200 and then dropped."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio

from tests.http_client import get
from tests.msm_helpers import STORE_KINDS, Browser, StoreProc, nodes_flag, store_proc
from tests.procs import SeshProcess

pytestmark = pytest.mark.parametrize("kind", STORE_KINDS)
__all__ = ["store_proc"]  # the fixture
CONCURRENT = 50


async def increment_concurrently(
    sesh: Callable[..., SeshProcess],
    store_proc: Callable[[str], StoreProc],
    kind: str,
    locking: str,
    *extra: str,
) -> tuple[list[int], int, list[dict[str, Any]], int]:
    """One session, CONCURRENT simultaneous hits alternating between two nodes; returns the hits each
    200 answer carried, the hits a request sees afterwards, the nodes' statistics (backend and
    acknowledge counters merged) and the number of 503 answers."""
    stores = [store_proc(kind), store_proc(kind)]
    nodes = [
        sesh("node", "--mode", "msm", "--no-sticky", "--name", name, "--port", "0",
             "--memcached-nodes", nodes_flag(stores), "--locking-mode", locking, "--lock-expiration", "20",
             *extra)
        for name in ("node1", "node2")
    ]
    browser = Browser()
    assert (await browser.hit(nodes[0].port))["hits"] == 1
    seen: list[int] = []
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        headers = [("accept", "application/json"), ("cookie", f"JSESSIONID={browser.cookie}")]
        reply = await get(nodes[i % 2].port, "/", headers)
        if reply.status == 503:
            assert reply.header(b"retry-after") == b"1"
            refused += 1
            return
        assert reply.status == 200, reply.body
        seen.append(json.loads(reply.body)["hits"])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(CONCURRENT):
                nursery.start_soon(one, i)
    after = (await browser.hit(nodes[1].port))["hits"]
    stats = []
    for node in nodes:
        reply = await get(node.port, "/sesh/status")
        data = json.loads(reply.body)
        stats.append(data["backend"] | data["acknowledge"])
    return seen, after, stats, refused


async def test_locking_all_loses_no_increment(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    seen, after, backends, refused = await increment_concurrently(sesh, store_proc, kind, "all")
    assert refused == 0
    assert sorted(seen) == list(range(2, CONCURRENT + 2))  # each request saw the one before it
    assert after == CONCURRENT + 2
    assert sum(b["conflicts"] for b in backends) == 0
    assert sum(b["lock_timeouts"] for b in backends) == 0
    # The creating request had no lock to take; requests on one node wait for each other in the node
    # (serialized), so each node has at most one request at the store lock at a time.
    assert sum(b["locks"] for b in backends) == CONCURRENT + 1
    assert sum(b["serialized"] for b in backends) > 0  # the requests really did overlap
    # Under the lock both copies are written in parallel and nobody races them: no backup is mirrored.
    assert sum(b["backups_mirrored"] for b in backends) == 0


async def test_without_locking_a_lost_race_is_rerun_never_acknowledged_and_dropped(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    seen, after, backends, refused = await increment_concurrently(sesh, store_proc, kind, "none")
    assert refused == 0
    # Every answer was a distinct count, and the session holds every one of them.
    assert sorted(seen) == list(range(2, CONCURRENT + 2))
    assert after == CONCURRENT + 2
    # The two nodes did race (50 simultaneous read-modify-writes cannot all be serial across nodes):
    # the losers were counted and run again on the winner's session.
    assert sum(b["conflicts"] for b in backends) > 0
    assert sum(b["reruns"] for b in backends) == sum(b["conflicts"] for b in backends)


async def test_without_reruns_a_lost_race_is_answered_503(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    seen, after, backends, refused = await increment_concurrently(sesh, store_proc, kind, "none",
                                                                  "--session-reruns", "0")
    assert refused > 0 and refused + len(seen) == CONCURRENT
    assert sum(b["unavailable"] for b in backends) == refused
    assert len(set(seen)) == len(seen)  # no count was answered twice
    assert after == len(seen) + 2  # the refused requests changed nothing; every 200 is in the session
