"""``--mode local``: sessions live in this process only, as in a Tomcat without clustering."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from sesh.core.manager import ManagerStatistics, SessionManager, SessionTransaction
from sesh.core.session import Session
from sesh.log import get_logger
from sesh.net.shutdown import Shutdown
from sesh.node.backend import RequestInfo, SessionSlot
from sesh.node.clock import Clock, wall_time
from sesh.node.expiry import sweep_expired

log = get_logger("local")


@dataclass(frozen=True, slots=True)
class LocalStatistics:
    mode: str
    sessions: ManagerStatistics


class LocalBackend:
    mode = "local"

    def __init__(self, manager: SessionManager, *, expire_interval: float, clock: Clock = wall_time) -> None:
        self.manager = manager
        self.expire_interval = expire_interval
        self.clock = clock

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        with shutdown.cancel_on_request():
            await sweep_expired(self.manager, self.expire_interval, self.clock, log)

    async def open_slot(self, request: RequestInfo, now: float) -> SessionSlot[None]:
        for requested in request.requested_ids:
            session = self.manager.find(requested, now)
            if session is not None:
                return SessionSlot(self, request, now, session)
        return SessionSlot(self, request, now)

    def create_session(self, now: float) -> Session:
        return self.manager.create(now)

    def begin(self, session: Session, now: float) -> SessionTransaction:
        return self.manager.begin(session, now)

    async def close_slot(self, slot: SessionSlot[None], now: float) -> None:
        if slot.closed:
            return
        slot.closed = True
        for tx in slot.transactions():
            if not tx.finished:
                tx.close()  # local mode ships no delta: none is built

    def statistics(self) -> LocalStatistics:
        return LocalStatistics(mode=self.mode, sessions=self.manager.statistics())

