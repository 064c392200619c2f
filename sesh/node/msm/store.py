"""What the msm backends need of a store node's client, and the clients a node's settings ask for:
one :class:`~sesh.net.memcache_client.NodeClient` per memcached-protocol node, or one
:class:`~sesh.net.redis_client.RedisStore` for a Redis server or cluster (``redis://`` URLs)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import trio

from sesh.net.memcache_client import NodeClient
from sesh.node.msm.settings import MsmSettings
from sesh.protocol.memcache_client import StoreCommand, Value


class StoreClient(Protocol):
    node_id: str

    def available(self) -> bool: ...

    def note_timeout(self, deadline: float) -> None: ...

    async def get(self, key: bytes) -> Value | None: ...

    async def store(
        self, command: StoreCommand, key: bytes, value: bytes, exptime: int, *, cas_unique: int | None = None
    ) -> str: ...

    async def delete(self, key: bytes) -> bool: ...

    async def aclose(self) -> None: ...

    def statistics(self) -> Any: ...


@runtime_checkable
class RedisStoreClient(StoreClient, Protocol):
    """The Redis store's extras: its background work, and the keys whose calls failed."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def take_failure(self, key: bytes) -> bool: ...


def redis_store(client: StoreClient) -> RedisStoreClient | None:
    return client if isinstance(client, RedisStoreClient) else None


def make_clients(settings: MsmSettings) -> dict[str, StoreClient]:
    if settings.redis is not None:
        from sesh.net.redis_client import RedisStore  # coredis is loaded only when Redis is used

        store = RedisStore(settings.redis.urls, settings.redis.options, node_id=settings.nodes[0].node_id)
        return {store.node_id: store}
    return {
        node.node_id: NodeClient(node, operation_timeout=settings.operation_timeout) for node in settings.nodes
    }
