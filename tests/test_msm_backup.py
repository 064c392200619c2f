"""The non-sticky backup copy, before the answer: the msm backend in-process against real store
processes (Debian's memcached and ``sesh store``), with the store touched directly between a request's
open and close to stage the races that concurrent requests on other nodes cause."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import trio

from sesh.config import NodeConfig
from sesh.core.serializer import decode_session, encode_session
from sesh.net.memcache_client import NodeClient, StoreNodeAddress, call_each
from sesh.node.backend import RequestInfo, SessionConflict
from sesh.node.clock import wall_time
from sesh.node.msm import store as msm_store
from sesh.node.msm.nonsticky import NonStickyBackend
from sesh.node.msm.settings import msm_settings
from sesh.protocol.memcache_client import Request
from tests.msm_helpers import STORE_KINDS, StoreProc, nodes_flag, store_node

pytestmark = pytest.mark.parametrize("kind", STORE_KINDS)


class Setup:
    def __init__(self, stores: list[StoreProc], locking: str) -> None:
        cfg = NodeConfig(mode="msm", sticky=False, memcached_nodes=nodes_flag(stores), locking_mode=locking)
        self.backend = NonStickyBackend(msm_settings(cfg))
        self.direct = {f"n{i + 1}": NodeClient(StoreNodeAddress(f"n{i + 1}", "127.0.0.1", s.port))
                       for i, s in enumerate(stores)}

    async def new_session(self) -> str:
        slot = await self.backend.open_slot(RequestInfo("GET", "/", ()), wall_time())
        tx = slot.transaction(create=True)
        assert tx is not None
        tx.set("hits", 1)
        await self.backend.close_slot(slot, wall_time())
        return tx.id

    def nodes(self, session_id: str) -> tuple[NodeClient, NodeClient]:
        primary = store_node(session_id)
        return self.direct[primary], self.direct["n2" if primary == "n1" else "n1"]

    async def copies(self, session_id: str) -> tuple[bytes | None, bytes | None]:
        primary, backup = self.nodes(session_id)
        item = await primary.get(session_id.encode())
        copy = await backup.get(b"bak:" + session_id.encode())
        return (item.value if item else None), (copy.value if copy else None)

    async def aclose(self) -> None:
        for client in [*self.backend.clients.values(), *self.direct.values()]:
            await client.aclose()


@pytest.fixture
async def setup(store_proc: Callable[[str], StoreProc], kind: str) -> AsyncIterator[Callable[[str], Setup]]:
    made: list[Setup] = []

    def make(locking: str) -> Setup:
        made.append(Setup([store_proc(kind), store_proc(kind)], locking))
        return made[-1]

    yield make
    for one in made:
        await one.aclose()


async def increment(s: Setup, session_id: str, meddle: Callable[[], object] | None = None) -> None:
    slot = await s.backend.open_slot(RequestInfo("GET", "/", (session_id,)), wall_time())
    tx = slot.transaction(create=False)
    assert tx is not None
    tx.set("hits", tx.get("hits") + 1)
    if meddle is not None:
        await meddle()  # type: ignore[misc]
    await s.backend.close_slot(slot, wall_time())


@pytest.mark.parametrize("locking", ["none", "all"])
async def test_a_new_session_is_answered_with_both_copies_stored(setup: Callable[[str], Setup], locking: str) -> None:
    s = setup(locking)
    sid = await s.new_session()
    await increment(s, sid)
    primary, backup = await s.copies(sid)
    assert primary is not None and backup == primary
    assert s.backend.counters.backups == 2 and s.backend.counters.backups_mirrored == 0


@pytest.mark.parametrize("locking", ["none", "all"])
async def test_both_copies_are_written_in_one_round_trip(
    setup: Callable[[str], Setup], locking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close sends both writes in one exchange (each node's request sent before any reply is read:
    tests/test_memcache_client_loopback.py shows that of call_each), with or without the session lock:
    the answer waits for one round trip, not two. The open reads both copies the same way, the lock's
    add in the same send as the session's read."""
    s = setup(locking)
    sid = await s.new_session()
    exchanges: list[dict[str, list[str]]] = []

    async def traced(calls: Sequence[tuple[NodeClient, Sequence[Request]]]) -> list[Any]:
        exchanges.append({client.node_id: [type(r).__name__ for r in requests] for client, requests in calls})
        return await call_each(calls)

    monkeypatch.setattr(msm_store, "call_each", traced)
    await increment(s, sid)
    primary, backup = s.nodes(sid)
    session_read = ["Store", "Get"] if locking == "all" else ["Get"]  # the lock's add goes first
    assert exchanges[:2] == [
        {primary.node_id: session_read, backup.node_id: ["Get"]},
        {primary.node_id: ["Store"], backup.node_id: ["Store"]},
    ], exchanges
    copies = await s.copies(sid)
    assert copies[0] is not None and copies[1] == copies[0]


async def test_a_held_lock_is_waited_for_and_the_session_read_again_once_taken(setup: Callable[[str], Setup]) -> None:
    """The lock's add goes out with the session's read; when another request holds the lock, what was
    read then is dropped: the request waits for the lock and reads the session again, so it is based on
    the holder's write."""
    s = setup("all")
    sid = await s.new_session()
    primary, backup = s.nodes(sid)
    lock_key = b"lock:" + sid.encode()
    assert await primary.store("add", lock_key, b"held by another request", 10) == "STORED"

    async def holder_writes_then_unlocks() -> None:
        await trio.sleep(0.05)
        item = await primary.get(sid.encode())
        assert item is not None
        session = decode_session(item.value)
        session.attributes["hits"] = 41
        session.version += 1
        blob = encode_session(session)
        assert await primary.store("cas", sid.encode(), blob, 60, cas_unique=item.cas_unique) == "STORED"
        assert await backup.store("set", b"bak:" + sid.encode(), blob, 60) == "STORED"
        assert await primary.delete(lock_key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder_writes_then_unlocks)
        await increment(s, sid)
    copies = await s.copies(sid)
    assert copies[0] is not None and copies[1] == copies[0]
    assert decode_session(copies[0]).attributes["hits"] == 42
    assert await primary.get(lock_key) is None  # released
    counters = s.backend.counters
    assert counters.locks == 1 and counters.lock_waits == 1 and counters.lock_timeouts == 0
    assert counters.rebased_writes == 0 and counters.conflicts == 0


@pytest.mark.parametrize("locking", ["none", "all"])
async def test_a_backup_written_by_someone_else_meanwhile_is_mirrored_before_the_answer(
    setup: Callable[[str], Setup], locking: str
) -> None:
    """Another request stored the backup after this one read it (a stale copy, say a slow writer's):
    this request's ``cas`` on the backup fails, and the primary's copy replaces it before close returns."""
    s = setup(locking)
    sid = await s.new_session()
    stale_primary, _ = await s.copies(sid)
    assert stale_primary is not None
    _, backup_node = s.nodes(sid)

    async def stale_backup() -> None:
        await backup_node.store("set", b"bak:" + sid.encode(), stale_primary, 60)

    await increment(s, sid, stale_backup)
    primary, backup = await s.copies(sid)
    assert primary is not None and primary != stale_primary
    assert backup == primary
    assert s.backend.counters.backups_mirrored == 1


@pytest.mark.parametrize(("locking", "mid_write"), [("none", False), ("none", True), ("all", True)])
async def test_a_lost_race_leaves_the_winners_copy_in_the_backup(
    setup: Callable[[str], Setup], locking: str, mid_write: bool
) -> None:
    """Another node's request stored a newer version after this one read it: the close raises
    SessionConflict (re-run allowed: nothing of it was applied), and the backup ends with the winner's
    copy. This request writes both copies in parallel, so when the winner is staged mid-write (primary
    stored, backup not yet) this request's backup lands, and must be put back before the close ends."""
    s = setup(locking)
    sid = await s.new_session()
    await increment(s, sid)
    primary_node, backup_node = s.nodes(sid)

    async def another_node_wins() -> None:
        item = await primary_node.get(sid.encode())
        assert item is not None
        session = decode_session(item.value)
        session.attributes["hits"] = 99
        session.version += 1
        winner.append(encode_session(session))
        await primary_node.store("set", sid.encode(), winner[0], 60)
        if not mid_write:  # the winner's backup, too
            await backup_node.store("set", b"bak:" + sid.encode(), winner[0], 60)

    winner: list[bytes] = []
    with pytest.raises(SessionConflict) as raised:
        await increment(s, sid, another_node_wins)
    assert raised.value.rerun
    primary, backup = await s.copies(sid)
    assert primary == winner[0] and backup == primary
    assert s.backend.counters.conflicts == 1
    assert s.backend.counters.backups_mirrored == (1 if mid_write else 0)


async def test_with_the_backup_node_down_the_session_lives_on_the_primary(
    store_proc: Callable[[str], StoreProc], kind: str
) -> None:
    stores = [store_proc(kind), store_proc(kind)]
    s = Setup(stores, "none")
    try:
        sid = await s.new_session()
        backup_index = 1 if store_node(sid) == "n1" else 0
        stores[backup_index].kill()
        await increment(s, sid)  # answered: the one store node left holds it
        primary, _ = s.nodes(sid)
        item = await primary.get(sid.encode())
        assert item is not None
        assert s.backend.counters.backup_failures == 1 and s.backend.counters.writes == 2
    finally:
        await s.aclose()
