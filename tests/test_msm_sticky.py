"""``--mode msm --sticky`` end to end: node failover (a node process is killed) and store failover,
against Debian's memcached and ``sesh store``."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.http_client import get
from tests.msm_helpers import (
    STORE_KINDS,
    Browser,
    StoreProc,
    nodes_flag,
    status,
    store_node,
    wait_status,
)
from tests.procs import SeshProcess

pytestmark = pytest.mark.parametrize("kind", STORE_KINDS)


def sticky_node(sesh: Callable[..., SeshProcess], stores: list[StoreProc], route: str, *extra: str) -> SeshProcess:
    return sesh("node", "--mode", "msm", "--name", f"node-{route}", "--route", route, "--port", "0",
                "--memcached-nodes", nodes_flag(stores), "--operation-timeout", "0.5", *extra)


async def test_killed_node_session_is_taken_over_from_the_store(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores = [store_proc(kind), store_proc(kind)]
    node_a, node_b = sticky_node(sesh, stores, "a"), sticky_node(sesh, stores, "b")
    browser = Browser()
    for i in range(1, 4):
        page = await browser.hit(node_a.port)
        assert page["hits"] == i and page["session_id"].endswith(".a")
    # Written before each answer (the default): nothing to wait for before the kill.
    assert (await status(node_a.port))["writes"] == 3
    old_id = browser.cookie
    node_a.kill()
    page = await browser.hit(node_b.port)  # what the balancer does when member a is gone
    assert page["hits"] == 4
    assert page["session_id"] == old_id.replace(".a", ".b")  # same base and store node, new route
    assert (await browser.hit(node_b.port))["hits"] == 5
    backend = await wait_status(node_b.port, lambda b: b["writes"] == 2)
    assert backend["node_failovers"] == 1 and backend["loads"] == 1 and backend["sessions"]["active"] == 1


async def test_store_node_failover_rewrites_the_id_and_writes_from_memory(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores = [store_proc(kind), store_proc(kind)]
    node_a = sticky_node(sesh, stores, "a")
    browser = Browser()
    assert (await browser.hit(node_a.port))["hits"] == 1
    first = store_node(browser.cookie)
    stores[int(first[1]) - 1].kill()
    # The write before this answer fails: the session moves to the other store node at once, and the
    # answer (a success: the update is stored there) carries the new id.
    page = await browser.hit(node_a.port)
    assert page["hits"] == 2
    moved_to = store_node(page["session_id"])
    assert moved_to != first and page["session_id"].endswith(".a")
    assert (await browser.hit(node_a.port))["hits"] == 3
    backend = await status(node_a.port)
    assert backend["store_failovers"] == 1 and backend["backup_failures"] >= 1
    # The session was written to its new store node from memory: another node can take it from there.
    node_b = sticky_node(sesh, stores, "b")
    assert (await browser.hit(node_b.port))["hits"] == 4


async def test_failover_nodes_are_used_last(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores = [store_proc(kind), store_proc(kind)]
    node_a = sticky_node(sesh, stores, "a", "--failover-nodes", "n1")
    for _ in range(4):
        assert store_node((await Browser().hit(node_a.port))["session_id"]) == "n2"


async def test_graceful_stop_flushes_async_backups(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores = [store_proc(kind)]
    node_a = sticky_node(sesh, stores, "a", "--session-backup-async")  # the opt-in: writes after the answer
    browser = Browser()
    for i in range(1, 4):
        assert (await browser.hit(node_a.port))["hits"] == i
    assert node_a.terminate() == 0  # SIGTERM right after the responses: queued writes still land
    assert "stopped" in node_a.output()
    assert (await browser.hit(sticky_node(sesh, stores, "b").port))["hits"] == 4


TRIALS = 3


async def test_acknowledged_hits_survive_a_sigkill_right_after_the_responses(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    """Defaults only: five quick requests on node a, SIGKILL at once (no waiting for any write), and node b
    must continue at 6 — every answered hit was in the store before its answer left."""
    stores = [store_proc(kind), store_proc(kind)]

    def default_node(route: str) -> SeshProcess:  # not sticky_node: no shorter timeouts either
        return sesh("node", "--mode", "msm", "--name", f"node-{route}", "--route", route, "--port", "0",
                    "--memcached-nodes", nodes_flag(stores))

    for trial in range(TRIALS):
        node_a, node_b = default_node("a"), default_node("b")
        browser = Browser()
        for i in range(1, 6):
            assert (await browser.hit(node_a.port))["hits"] == i
        node_a.kill()
        page = await browser.hit(node_b.port)
        assert page["hits"] == 6, f"trial {trial}: node b continued at {page['hits']}"
        node_b.kill()


async def test_a_backup_no_store_node_takes_is_answered_503(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores = [store_proc(kind), store_proc(kind)]
    node_a = sticky_node(sesh, stores, "a")
    browser = Browser()
    assert (await browser.hit(node_a.port))["hits"] == 1
    for store in stores:
        store.kill()
    reply = await get(node_a.port, "/", [("accept", "application/json"), ("cookie", f"JSESSIONID={browser.cookie}")])
    assert reply.status == 503 and reply.header(b"retry-after") == b"1"
    data = json.loads((await get(node_a.port, "/sesh/status")).body)
    assert data["acknowledge"]["unavailable"] == 1 and data["acknowledge"]["reruns"] == 0
    assert data["backend"]["backup_failures"] >= 2  # its store node, then the one it failed over to


async def test_a_session_taken_over_while_its_store_stalls_is_refused_not_replaced(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    """Node b is asked for node a's session while the session's store node does not answer: b has no copy
    and cannot read one, so it answers 503 and keeps the cookie (msm starts an empty session, and the
    old one is gone once the browser takes the new cookie); with the store back, b takes it over."""
    stores = [store_proc(kind), store_proc(kind)]
    node_a, node_b = sticky_node(sesh, stores, "a"), sticky_node(sesh, stores, "b")
    browser = Browser()
    for i in range(1, 3):
        assert (await browser.hit(node_a.port))["hits"] == i
    old_id = browser.cookie
    store = stores[int(store_node(old_id)[1]) - 1]
    store.pause()
    try:
        await browser.refused(node_b.port)
    finally:
        store.resume()
    page = await browser.hit_when_served(node_b.port)
    assert page["hits"] == 3 and page["session_id"] == old_id.replace(".a", ".b")
    assert (await status(node_b.port))["load_failures"] >= 1
