"""Concurrent updates of one non-sticky session through two nodes: with locking none is lost, without
locking every lost update is a counted conflict, never a silent overwrite."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.msm_helpers import STORE_KINDS, Browser, StoreProc, nodes_flag, status, store_proc
from tests.procs import SeshProcess

pytestmark = pytest.mark.parametrize("kind", STORE_KINDS)
__all__ = ["store_proc"]  # the fixture
CONCURRENT = 50


async def increment_concurrently(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str, locking: str
) -> tuple[list[int], int, list[dict[str, int]]]:
    """One session, CONCURRENT simultaneous hits alternating between two nodes; returns the hits each
    request saw, the hits a request sees afterwards, and the nodes' statistics."""
    stores = [store_proc(kind), store_proc(kind)]
    nodes = [
        sesh("node", "--mode", "msm", "--no-sticky", "--name", name, "--port", "0",
             "--memcached-nodes", nodes_flag(stores), "--locking-mode", locking, "--lock-expiration", "20")
        for name in ("node1", "node2")
    ]
    browser = Browser()
    assert (await browser.hit(nodes[0].port))["hits"] == 1
    seen: list[int] = []

    async def one(i: int) -> None:
        seen.append((await Browser(browser.cookie).hit(nodes[i % 2].port))["hits"])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(CONCURRENT):
                nursery.start_soon(one, i)
    after = (await browser.hit(nodes[1].port))["hits"]
    return seen, after, [await status(node.port) for node in nodes]


async def test_locking_all_loses_no_increment(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    seen, after, backends = await increment_concurrently(sesh, store_proc, kind, "all")
    assert sorted(seen) == list(range(2, CONCURRENT + 2))  # each request saw the one before it
    assert after == CONCURRENT + 2
    assert sum(b["conflicts"] for b in backends) == 0
    assert sum(b["lock_timeouts"] for b in backends) == 0
    assert sum(b["locks"] for b in backends) == CONCURRENT + 1  # the creating request had no lock to take
    assert sum(b["lock_waits"] for b in backends) > 0  # the requests really did overlap


async def test_without_locking_every_lost_increment_is_a_counted_conflict(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    seen, after, backends = await increment_concurrently(sesh, store_proc, kind, "none")
    conflicts = sum(b["conflicts"] for b in backends)
    assert conflicts > 0  # 50 simultaneous read-modify-writes cannot all be serial
    # Every increment either reached the store or was reported: none vanished silently.
    assert after == CONCURRENT + 2 - conflicts
    assert len(seen) == CONCURRENT
