"""msm nodes against planted store values and hostile requests: real Debian memcached, real sesh node
processes, real sockets. memcached has no authentication, so anything on the network can write a
session key; whatever it writes must cost at most that one session, never another user's request."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
import trio

from sesh.core.ids import SessionId
from sesh.core.serializer import SESSION_MAGIC, encode_session
from sesh.core.session import Session
from sesh.net.memcache_client import NodeClient, StoreNodeAddress
from tests.http_client import get
from tests.msm_helpers import Browser, StoreProc, nodes_flag, status, wait_status
from tests.procs import SeshProcess

pytestmark = pytest.mark.interop  # every test here runs Debian's memcached as the store


def planted_blob(session_id: SessionId, **fields: Any) -> bytes:
    """A session blob as sesh writes it, with ``fields`` overwritten the way an attacker would: the
    envelope is rebuilt with cbor2 directly, past every check of the serializer."""
    now = time.time()
    good = Session(session_id, now, now, now, 1800, attributes={"hits": 5, "last_node": "node1"}, version=5)
    body = cbor2.loads(encode_session(good)[len(SESSION_MAGIC) :])
    body.update(fields)
    return SESSION_MAGIC + cbor2.dumps(body)


async def plant(store: StoreProc, key: str, blob: bytes) -> None:
    client = NodeClient(StoreNodeAddress("n1", "127.0.0.1", store.port))
    try:
        assert await client.store("set", key.encode(), blob, 0) == "STORED"
    finally:
        await client.aclose()


def msm_node(sesh: Callable[..., SeshProcess], stores: list[StoreProc], *extra: str) -> SeshProcess:
    return sesh("node", "--mode", "msm", "--no-sticky", "--name", "node1", "--port", "0",
                "--memcached-nodes", nodes_flag(stores), "--operation-timeout", "0.5",
                "--no-session-backup-async", *extra)


@pytest.mark.parametrize(
    "fields",
    [
        # The issue: this became "cas KEY 0 1000000000000000019884624838656 ..." and memcached read the
        # value as commands, so the replies on that store connection no longer matched their requests.
        {"max_inactive": int(1e30)},
        # The hits: str() of it raises, so every page of the session failed.
        {"attributes": {"hits": 10**6000}},
        {"this_accessed": float("inf")},
        {"this_accessed": time.time() + 50 * 365 * 24 * 3600},  # in range, but no node's clock wrote it
        {"version": 2**70},
    ],
    ids=["max_inactive", "hits", "inf_time", "future_time", "version"],
)
async def test_a_planted_out_of_range_session_is_corrupt_and_other_users_are_not_affected(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc], fields: dict[str, Any]
) -> None:
    store = store_proc("memcached")
    node = msm_node(sesh, [store])
    other = Browser()
    assert (await other.hit(node.port))["hits"] == 1
    assert (await other.hit(node.port))["hits"] == 2

    planted = SessionId(secrets.token_hex(16).upper(), "n1", "")
    await plant(store, str(planted), planted_blob(planted, **fields))
    victim = Browser(str(planted))
    page = await victim.hit(node.port)  # asserts a 200 and takes the new cookie
    # The other user's session goes on counting by one: the store connection was never out of step.
    assert [(await other.hit(node.port))["hits"] for _ in range(3)] == [3, 4, 5]
    assert page["hits"] == 1 and page["session_id"] != str(planted)  # a fresh session
    assert (await victim.hit(node.port))["hits"] == 2
    backend = await status(node.port)
    assert backend["bad_blobs"] == 1
    assert backend["write_failures"] == 0 and backend["store_nodes"][0]["failures"] == 0
    await wait_logged(node, str(planted), "treating the session as lost")


async def wait_logged(proc: SeshProcess, *words: str) -> None:
    """Wait (bounded) for a stderr line of ``proc`` holding every one of ``words``."""
    with trio.fail_after(5):
        while True:
            if any(all(w in line for w in words) for line in list(proc.stderr_lines)):
                return
            await trio.sleep(0.02)  # the lines arrive from a pipe-reading thread


async def test_a_sticky_node_taking_over_a_planted_session_starts_a_fresh_one(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc]
) -> None:
    """A sticky node loads a session from the store when the balancer moved it here from another node."""
    store = store_proc("memcached")
    node = sesh("node", "--mode", "msm", "--sticky", "--route", "a", "--port", "0",
                "--memcached-nodes", nodes_flag([store]), "--operation-timeout", "0.5")
    other = Browser()
    assert [(await other.hit(node.port))["hits"] for _ in range(2)] == [1, 2]
    planted = SessionId(secrets.token_hex(16).upper(), "", "b")  # written by the node of route b
    await plant(store, str(planted), planted_blob(planted, max_inactive=int(1e30)))
    page = await Browser(str(planted)).hit(node.port)
    assert [(await other.hit(node.port))["hits"] for _ in range(2)] == [3, 4]
    assert page["hits"] == 1 and page["session_id"].endswith(".a")
    backend = await wait_status(node.port, lambda b: b["bad_blobs"] == 1)
    assert backend["node_failovers"] == 0


async def test_a_planted_value_never_makes_the_demo_page_fail(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc]
) -> None:
    """In range for the serializer but not a count: the demo starts counting again instead of failing."""
    store = store_proc("memcached")
    node = msm_node(sesh, [store])
    for hits in (2**1024 - 1, -5, True, "many", 2**53):
        planted = SessionId(secrets.token_hex(16).upper(), "n1", "")
        await plant(store, str(planted), planted_blob(planted, attributes={"hits": hits}))
        for accept in ("application/json", "text/html"):
            reply = await get(node.port, "/", [("accept", accept), ("cookie", f"JSESSIONID={planted}")])
            assert reply.status == 200, (hits, reply.body[:200])
        assert (await Browser(str(planted)).hit(node.port))["hits"] == 3
    assert (await status(node.port))["bad_blobs"] == 0


def store_gets(store: StoreProc) -> int:
    """memcached's ``cmd_get``: keys asked for by get/gets since it started."""
    with socket.create_connection(("127.0.0.1", store.port), timeout=5) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            data += sock.recv(65536)
    for line in data.split(b"\r\n"):
        if line.startswith(b"STAT cmd_get "):
            return int(line.split()[2])
    raise AssertionError("memcached reported no cmd_get")


async def test_a_request_with_1300_session_cookies_costs_a_handful_of_store_reads(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc]
) -> None:
    stores = [store_proc("memcached"), store_proc("memcached")]
    node = msm_node(sesh, stores)
    ids = [str(SessionId(secrets.token_hex(16).upper(), f"n{i % 2 + 1}", "")) for i in range(1300)]
    # Well-formed and unknown, spread over Cookie headers within the node's header limits.
    headers = [("accept", "application/json")] + [
        ("cookie", "; ".join(f"JSESSIONID={i}" for i in ids[start : start + 150]))
        for start in range(0, len(ids), 150)
    ]
    # What one unknown id costs (its node, its backup on the other one): the yardstick for the cap.
    before_one = sum(store_gets(store) for store in stores)
    one = await get(node.port, "/", [("accept", "application/json"), ("cookie", f"JSESSIONID={ids[0]}")])
    assert one.status == 200 and json.loads(one.body)["hits"] == 1
    per_candidate = sum(store_gets(store) for store in stores) - before_one
    assert per_candidate >= 1
    before = [store_gets(store) for store in stores]
    reply = await get(node.port, "/", headers)
    assert reply.status == 200 and json.loads(reply.body)["hits"] == 1  # none was found: a new session
    reads = sum(store_gets(store) for store in stores) - sum(before)
    assert 1 <= reads <= 4 * per_candidate, (reads, per_candidate)  # 2,600 before the cap
    doc = json.loads((await get(node.port, "/sesh/status")).body)
    assert doc["rejected_session_ids"] == 1300 - 4
    assert doc["backend"]["load_misses"] == 1 + 4
