"""The periodic expiry sweep every backend runs over the sessions it holds in memory (local, sticky
msm, cluster): one loop, the backend's own follow-up (forget store copies, tell peers) in a callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import trio

from sesh.core.manager import SessionManager
from sesh.core.session import Session
from sesh.log import Log


async def sweep_expired(
    manager: SessionManager,
    interval: float,
    clock: Callable[[], float],
    log: Log,
    on_expired: Callable[[list[Session]], None] | None = None,
) -> NoReturn:
    """Every ``interval`` seconds, expire the sessions idle too long at ``clock()``; runs until cancelled."""
    while True:
        await trio.sleep(interval)
        expired = manager.expire(clock())
        if expired:
            log.info("expired idle sessions", count=len(expired))
            if on_expired is not None:
                on_expired(expired)
