"""``--mode local``: sessions live in this process only, as in a Tomcat without clustering."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import trio

from sesh.core.manager import ManagerStatistics, SessionManager, SessionTransaction
from sesh.core.session import Session
from sesh.net.shutdown import Shutdown
from sesh.node.backend import RequestInfo, SessionSlot
from sesh.node.clock import wall_time


@dataclass(frozen=True, slots=True)
class LocalStatistics:
    mode: str
    sessions: ManagerStatistics


class LocalBackend:
    mode = "local"

    def __init__(self, manager: SessionManager, *, expire_interval: float) -> None:
        self.manager = manager
        self.expire_interval = expire_interval

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await sweep_expired(self.manager, self.expire_interval, shutdown)

    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot:
        for requested in request.requested_ids:
            session = self.manager.find(requested, now)
            if session is not None:
                return SessionSlot(self, request, now, session)
        return SessionSlot(self, request, now)

    def create_session(self, now: float) -> Session:
        return self.manager.create(now)

    def begin(self, session: Session, now: float) -> SessionTransaction:
        return self.manager.begin(session, now)

    async def close_slot(self, slot: SessionSlot, now: float) -> None:
        if slot.closed:
            return
        slot.closed = True
        for tx in slot.transactions():
            if not tx.finished:
                tx.finish()

    def statistics(self) -> LocalStatistics:
        return LocalStatistics(mode=self.mode, sessions=self.manager.statistics())


async def sweep_expired(manager: SessionManager, interval: float, shutdown: Shutdown) -> None:
    """The periodic expiry sweep every backend runs over its in-memory sessions."""
    with shutdown.cancel_on_request():
        while True:
            await trio.sleep(interval)
            expired = manager.expire(wall_time())
            if expired:
                print(f"sesh node: expired {len(expired)} idle session(s)", file=sys.stderr, flush=True)
