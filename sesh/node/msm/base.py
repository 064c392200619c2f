"""What the sticky and non-sticky msm backends share: store node clients, the node ring, counters, the
async write queue, blob encoding and decoding, and the background work :meth:`MsmBackendBase.run` owns."""

from __future__ import annotations

import trio

from sesh.config import ConfigError
from sesh.core.ids import SessionId
from sesh.core.manager import SessionManager, SessionTransaction
from sesh.core.serializer import SerializationError, UnencodableValue, decode_session, encode_session
from sesh.core.session import Session
from sesh.log import get_logger
from sesh.net.fdstream import WaitTimer
from sesh.net.memcache_client import NodeClient
from sesh.net.redis_url import RedisSetupError
from sesh.net.shutdown import Shutdown
from sesh.node.backend import RequestInfo
from sesh.node.clock import Clock, wall_time
from sesh.node.msm.keys import NodeRing
from sesh.node.msm.locking import ReadOnlyPaths
from sesh.node.msm.settings import MsmSettings
from sesh.node.msm.stats import MsmCounters, MsmStatistics, msm_statistics
from sesh.node.msm.store import make_clients, redis_store
from sesh.node.writer import WriteQueue

log = get_logger("msm")


class MsmBackendBase:
    mode = "msm"

    def __init__(self, settings: MsmSettings, clock: Clock = wall_time) -> None:
        self.settings = settings
        self.clock = clock
        self.keys = settings.keys
        self.timer = WaitTimer()  # times the memcached clients' waits for their nodes (run() runs it)
        self.clients = make_clients(settings, self.timer)
        # The memcached nodes' clients, for the calls pipelined across nodes (none with Redis).
        self.node_clients = {k: c for k, c in self.clients.items() if isinstance(c, NodeClient)}
        self.ring = NodeRing([node.node_id for node in settings.nodes], settings.failover_nodes)
        self.manager = SessionManager(route=settings.route, max_inactive=settings.max_inactive)
        self.counters = MsmCounters()
        self.queue = WriteQueue(flush_timeout=max(1.0, 3 * settings.operation_timeout), log=log)
        self.read_only = ReadOnlyPaths()
        self.open_slots = 0

    # --- shared helpers -----------------------------------------------------------------------------

    def available(self, node: str) -> bool:
        return self.clients[node].available()

    def ignored(self, request: RequestInfo) -> bool:
        pattern = self.settings.ignore_pattern
        return pattern is not None and pattern.fullmatch(request.path) is not None

    def parse_id(self, text: str) -> SessionId | None:
        try:
            return SessionId.parse(text)
        except ValueError:
            self.counters.rejected_ids += 1
            return None

    def encode(self, session: Session) -> bytes | None:
        """The blob to store (attributes filtered by --session-attribute-filter); None if unencodable."""
        pattern = self.settings.attribute_filter
        stored = session
        if pattern is not None:
            stored = session.copy()
            stored.attributes = {k: v for k, v in session.attributes.items() if pattern.fullmatch(k)}
        try:
            return encode_session(stored)
        except UnencodableValue as exc:
            self.counters.write_failures += 1
            log.warning("session not stored: a value cannot be encoded", session=session.id, error=exc)
            return None

    def decode(self, blob: bytes, session_id: SessionId, key: bytes, now: float) -> Session | None:
        """The live session in ``blob``; None (counted and logged when the blob is bad) otherwise."""
        try:
            session = decode_session(blob)
        except SerializationError as exc:
            self.counters.bad_blobs += 1
            log.warning("store value is not a readable session: treating the session as lost",
                        session=session_id, key=key.decode(), error=exc)
            return None
        problem = session.clock_problem(now)
        if problem is not None:
            self.counters.bad_blobs += 1
            log.warning("store value is not a session a node wrote: treating the session as lost",
                        session=session_id, key=key.decode(), error=problem)
            return None
        if session.id.base != session_id.base:
            self.counters.bad_blobs += 1
            log.warning("store value holds another session: treating the session as lost",
                        session=session_id, key=key.decode(), holds=session.id)
            return None
        if not session.valid or session.is_expired(now):
            return None
        return session

    def create_session(self, now: float) -> Session:
        session = self.manager.create(now)
        node = self.ring.for_new_session(self.available)
        if node != session.id.store_node:
            self.manager.change_id(session, store_node=node)
        return session

    def begin(self, session: Session, now: float) -> SessionTransaction:
        return self.manager.begin(session, now)

    # --- background work ----------------------------------------------------------------------------

    async def run(self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The write queue and the mode's periodic work; drains the queue and closes connections at the end."""
        try:
            async with trio.open_nursery() as stores:
                await stores.start(self.timer.run)
                for client in self.clients.values():
                    redis = redis_store(client)
                    if redis is not None:  # its connection pools and slot map, around the rest
                        try:
                            await stores.start(redis.run)
                        except* RedisSetupError as group:
                            raise ConfigError(str(group.exceptions[0])) from None
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.queue.run, shutdown, lambda: self.open_slots == 0)
                    nursery.start_soon(self.periodic, shutdown)
                    task_status.started()
                stores.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for client in self.clients.values():
                    await client.aclose()

    async def periodic(self, shutdown: Shutdown) -> None:
        """The mode's periodic work (expiry sweep, backup rebuild) until shutdown."""

    def statistics(self) -> MsmStatistics:
        return msm_statistics(
            self.counters,
            sticky=self.settings.sticky,
            locking_mode=str(self.settings.locking),
            backup_async=self.settings.backup_async,
            sessions=self.manager.statistics(),
            backup_queue=len(self.queue),
            store_nodes=tuple(client.statistics() for client in self.clients.values()),
        )
