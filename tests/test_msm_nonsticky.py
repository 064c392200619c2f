"""``--mode msm --no-sticky`` end to end: real store processes (Debian's memcached and ``sesh store``),
real node processes, real sockets; store nodes are killed, paused and restarted."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from tests.msm_helpers import (
    STORE_KINDS,
    AppBrowser,
    Browser,
    StoreProc,
    nodes_flag,
    status,
    store_node,
    wait_status,
)
from tests.procs import SeshProcess

pytestmark = pytest.mark.parametrize("kind", STORE_KINDS)


def start_cluster(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str, *extra: str
) -> tuple[list[StoreProc], list[SeshProcess]]:
    stores = [store_proc(kind), store_proc(kind)]
    nodes = [
        sesh("node", "--mode", "msm", "--no-sticky", "--name", name, "--port", "0",
             "--memcached-nodes", nodes_flag(stores), "--operation-timeout", "0.5", *extra)
        for name in ("node1", "node2")
    ]
    return stores, nodes


async def test_alternating_requests_keep_the_session_and_count_by_one(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    _stores, nodes = start_cluster(sesh, store_proc, kind)
    browser = Browser()
    first = await browser.hit(nodes[0].port)
    assert first["hits"] == 1 and store_node(first["session_id"]) in ("n1", "n2")
    for i in range(2, 11):
        page = await browser.hit(nodes[i % 2].port)
        assert page["hits"] == i
        assert page["session_id"] == first["session_id"]
        assert page["node"] == f"node{i % 2 + 1}"
    for node in nodes:
        backend = await status(node.port)
        assert backend["mode"] == "msm" and backend["sticky"] is False
        assert backend["loads"] == (5 if node is nodes[0] else 4) and backend["conflicts"] == 0
        assert backend["sessions"]["active"] == 0  # non-sticky nodes keep nothing in memory
        assert [n["node_id"] for n in backend["store_nodes"]] == ["n1", "n2"]
    # Every request changed the session: ten writes, and (after the responses) ten backup copies.
    with trio.fail_after(5):
        while True:
            backends = [await status(node.port) for node in nodes]
            if sum(b["backups"] for b in backends) == 10:
                break
            await trio.sleep(0.05)
    assert sum(b["writes"] for b in backends) == 10
    assert sum(b["backup_failures"] + b["backup_queue_drops"] for b in backends) == 0


async def test_killed_store_node_loses_no_session(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores, nodes = start_cluster(sesh, store_proc, kind, "--no-session-backup-async")
    browser = Browser()
    for i in range(1, 5):
        assert (await browser.hit(nodes[i % 2].port))["hits"] == i
    primary = store_node(browser.cookie)
    other = "n2" if primary == "n1" else "n1"
    stores[int(primary[1]) - 1].kill()
    page = await browser.hit(nodes[0].port)
    assert page["hits"] == 5
    assert store_node(page["session_id"]) == other  # the id's store node part was rewritten
    for i in range(6, 10):
        assert (await browser.hit(nodes[i % 2].port))["hits"] == i
    failovers = [(await status(node.port))["store_failovers"] for node in nodes]
    assert sum(failovers) == 1


async def test_backup_is_rebuilt_after_its_node_returns(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores, nodes = start_cluster(sesh, store_proc, kind, "--no-session-backup-async")
    browser = Browser()
    assert (await browser.hit(nodes[0].port))["hits"] == 1
    first = int(store_node(browser.cookie)[1]) - 1
    stores[first].kill()
    assert (await browser.hit(nodes[1].port))["hits"] == 2  # moved to the other node; no backup possible
    assert (await status(nodes[1].port))["backup_failures"] >= 1
    stores[first].start()  # back, empty, on the same port
    await wait_status(nodes[1].port, lambda b: b["backups_rebuilt"] >= 1, timeout=10)
    stores[1 - first].kill()  # now lose the node that holds the session
    page = await browser.hit(nodes[0].port)
    assert page["hits"] == 3
    assert store_node(page["session_id"]) == f"n{first + 1}"


async def test_paused_store_node_fails_over_within_the_operation_timeout(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores, nodes = start_cluster(sesh, store_proc, kind, "--no-session-backup-async")
    browser = Browser()
    assert (await browser.hit(nodes[0].port))["hits"] == 1
    assert (await browser.hit(nodes[1].port))["hits"] == 2
    paused = stores[int(store_node(browser.cookie)[1]) - 1]
    paused.pause()
    try:
        started = trio.current_time()
        page = await browser.hit(nodes[0].port)
        # The load times out (0.5 s), the node is marked down, the session comes from its backup.
        assert trio.current_time() - started < 2.0
        assert page["hits"] == 3
        started = trio.current_time()
        assert (await browser.hit(nodes[0].port))["hits"] == 4
        assert trio.current_time() - started < 0.5  # marked down: no more waiting on it
        assert (await browser.hit(nodes[1].port))["hits"] == 5
    finally:
        paused.resume()
    backend = await status(nodes[0].port)
    assert sum(n["timeouts"] for n in backend["store_nodes"]) >= 1


async def test_unreadable_store_value_means_a_fresh_session(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    from sesh.net.memcache_client import NodeClient, StoreNodeAddress

    stores, nodes = start_cluster(sesh, store_proc, kind)
    browser = Browser()
    assert (await browser.hit(nodes[0].port))["hits"] == 1
    lost = browser.cookie
    store = stores[int(store_node(lost)[1]) - 1]
    client = NodeClient(StoreNodeAddress("x", "127.0.0.1", store.port))
    try:
        await client.store("set", lost.encode(), b"sesh\xa1\x01garbage from another program", 60)
    finally:
        await client.aclose()
    page = await browser.hit(nodes[1].port)
    assert page["hits"] == 1 and page["session_id"] != lost  # lost, so a fresh session
    assert (await status(nodes[1].port))["bad_blobs"] == 1
    assert (await browser.hit(nodes[0].port))["hits"] == 2  # and the node keeps serving


async def test_a_session_its_stores_cannot_serve_is_refused_not_replaced(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    """With both store nodes stalled the session cannot be read: the node answers 503 (the browser keeps
    its cookie) instead of handing out an empty session, which would lose it; once the stores answer
    again the same session goes on counting."""
    stores, nodes = start_cluster(sesh, store_proc, kind)
    browser = Browser()
    assert (await browser.hit(nodes[0].port))["hits"] == 1
    assert (await browser.hit(nodes[1].port))["hits"] == 2
    session_id = browser.cookie
    for store in stores:
        store.pause()
    try:
        await browser.refused(nodes[0].port)  # both reads time out (0.5 s each)
        await browser.refused(nodes[0].port)  # both nodes marked down: refused at once
        await browser.refused(nodes[1].port)
    finally:
        for store in stores:
            store.resume()
    page = await browser.hit_when_served(nodes[0].port)
    assert page["hits"] == 3 and page["session_id"] == session_id
    assert (await browser.hit_when_served(nodes[1].port))["hits"] == 4  # its own probe may come later
    backend = await status(nodes[0].port)
    assert backend["load_failures"] >= 2 and backend["load_misses"] == 0


async def test_a_version_only_the_backup_took_moves_the_session_before_the_answer(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    """The session's store node stalls between a request's read and its write: the primary write times
    out, the backup copy takes the version, and the answer (a success) moves the session to the backup's
    node (new id in the Set-Cookie), as a sticky node does. Under the old id the next request, once the
    stalled node answers again, would read its copy, which holds the new version only if the timed-out
    write still landed there (here it does, when the node resumes; a write lost on the way would not)."""
    stores = [store_proc(kind), store_proc(kind)]
    node = sesh("node", "--mode", "msm", "--no-sticky", "--name", "node1", "--port", "0",
                "--memcached-nodes", nodes_flag(stores), "--operation-timeout", "0.3",
                "--app", "tests.apps.starlette_counter:app")
    browser = AppBrowser(node.port)
    assert (await browser.get("/"))["count"] == 1
    first = browser.cookie
    stalled = stores[int(store_node(first)[1]) - 1]
    async with trio.open_nursery() as nursery:
        slow: dict[str, int] = {}

        async def slow_request() -> None:
            slow.update(await browser.get("/count-slowly?seconds=0.6"))

        nursery.start_soon(slow_request)
        await trio.sleep(0.2)  # read: done; write: at 0.6 s
        stalled.pause()
    stalled.resume()
    assert slow["count"] == 2
    assert browser.cookie != first and store_node(browser.cookie) != store_node(first)
    await trio.sleep(1.5)  # the stalled node is marked down for 1 s: past that it is read again
    assert (await browser.get("/"))["count"] == 3
    backend = await status(node.port)
    assert backend["store_failovers"] >= 1 and backend["write_failures"] >= 1
