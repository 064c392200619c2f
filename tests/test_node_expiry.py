"""The node's expiry sweep on an injected clock: trio's MockClock moves session time, so the test
sleeps through a session's interval without waiting for it."""

from __future__ import annotations

import trio
import trio.testing

from sesh.core.manager import SessionManager
from sesh.net.shutdown import Shutdown
from sesh.node.backend import RequestInfo
from sesh.node.clock import TrioWallClock
from sesh.node.local import LocalBackend

T0 = 1_700_000_000.0


async def test_the_sweep_expires_idle_sessions_on_the_node_clock(autojump_clock: trio.testing.MockClock) -> None:
    clock = TrioWallClock(start=T0)
    assert clock() == T0
    backend = LocalBackend(SessionManager(max_inactive=60), expire_interval=5, clock=clock)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run, shutdown)
        slot = await backend.open_slot(RequestInfo("GET", "/", ()), clock())
        tx = slot.transaction()
        assert tx is not None
        tx.set("n", 1)
        await backend.close_slot(slot, clock())
        await trio.sleep(58)  # idle, but within its interval: every sweep so far kept it
        assert backend.statistics().sessions.active == 1
        await trio.sleep(10)  # past 60 s, and a sweep has run since
        stats = backend.statistics().sessions
        assert (stats.active, stats.expired) == (0, 1)
        assert T0 + 68 <= clock() < T0 + 69
        shutdown.request()
