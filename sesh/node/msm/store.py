"""What the msm backends need of a store node's client, and the clients a node's settings ask for:
one :class:`~sesh.net.memcache_client.NodeClient` per memcached-protocol node, or one
:class:`~sesh.net.redis_client.RedisStore` for a Redis server or cluster (``redis://`` URLs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

import trio

from sesh.net.fdstream import WaitTimer
from sesh.net.memcache_client import NodeClient, StoreError, StoreUnavailable, call_each, item_of, word_of
from sesh.node.msm.settings import MsmSettings
from sesh.protocol.memcache_client import Get, Request, Store, StoreCommand, Value


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
    """The Redis store's extra: its background work."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


def redis_store(client: StoreClient) -> RedisStoreClient | None:
    return client if isinstance(client, RedisStoreClient) else None


# What one store command ended with: its result, or the failure.
Failure: TypeAlias = StoreUnavailable | StoreError


@dataclass(frozen=True, slots=True)
class Write:
    client: StoreClient
    command: StoreCommand
    key: bytes
    value: bytes
    exptime: int
    cas_unique: int | None = None


async def get_each(reads: Sequence[tuple[StoreClient, bytes]]) -> list[Value | Failure | None]:
    """Each key read from its node: on memcached nodes in one round trip for all (sent together, from
    this task: :func:`~sesh.net.memcache_client.call_each`)."""
    nodes = [client for client, _ in reads if isinstance(client, NodeClient)]
    if len(nodes) == len(reads):
        outcomes = await call_each([(client, [Get((key,))]) for client, (_, key) in zip(nodes, reads, strict=True)])
        return [item_of(nodes[i], outcome, reads[i][1]) for i, outcome in enumerate(outcomes)]
    found: list[Value | Failure | None] = []
    for client, key in reads:  # one after the other (a Redis store is a single node)
        try:
            found.append(await client.get(key))
        except (StoreUnavailable, StoreError) as exc:
            found.append(exc)
    return found


async def store_each(writes: Sequence[Write]) -> list[str | Failure]:
    """Each write's status word (or failure), as :func:`get_each` reads."""
    nodes = [write.client for write in writes if isinstance(write.client, NodeClient)]
    if len(nodes) == len(writes):
        outcomes = await call_each([
            (client, [Store(w.command, w.key, w.value, w.exptime, 0, w.cas_unique)])
            for client, w in zip(nodes, writes, strict=True)
        ])
        return [word_of(nodes[i], outcome) for i, outcome in enumerate(outcomes)]
    words: list[str | Failure] = []
    for w in writes:
        try:
            words.append(await w.client.store(w.command, w.key, w.value, w.exptime, cas_unique=w.cas_unique))
        except (StoreUnavailable, StoreError) as exc:
            words.append(exc)
    return words


async def add_and_get_each(add: Write, reads: Sequence[tuple[StoreClient, bytes]]) -> tuple[str | Failure,
                                                                                         list[Value | Failure | None]]:
    """``add`` (a lock) and the reads, as :func:`get_each`: on memcached nodes the add goes out in the same
    send as the first read, to the same node (which runs them in that order)."""
    nodes = [client for client, _ in reads if isinstance(client, NodeClient)]
    first = nodes[0] if nodes else None
    if len(nodes) == len(reads) and add.client is first:
        assert first is not None
        lock = Store(add.command, add.key, add.value, add.exptime, 0, add.cas_unique)
        calls: list[tuple[NodeClient, Sequence[Request]]] = [
            (client, [Get((key,))]) for client, (_, key) in zip(nodes, reads, strict=True)
        ]
        calls[0] = (first, [lock, Get((reads[0][1],))])
        outcomes = await call_each(calls)
        head = outcomes[0]
        word = word_of(first, head[:1] if isinstance(head, list) else head)
        found = [item_of(first, head[1:] if isinstance(head, list) else head, reads[0][1])]
        found += [item_of(nodes[i], outcome, reads[i][1]) for i, outcome in enumerate(outcomes) if i]
        return word, found
    (word,) = await store_each([add])
    return word, await get_each(reads)


def make_clients(settings: MsmSettings, timer: WaitTimer | None = None) -> dict[str, StoreClient]:
    if settings.redis is not None:
        from sesh.net.redis_client import RedisStore  # coredis is loaded only when Redis is used

        store = RedisStore(settings.redis.urls, settings.redis.options, node_id=settings.nodes[0].node_id)
        return {store.node_id: store}
    return {
        node.node_id: NodeClient(node, operation_timeout=settings.operation_timeout, timer=timer)
        for node in settings.nodes
    }
