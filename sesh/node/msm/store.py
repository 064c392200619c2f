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
    client: NodeClient
    command: StoreCommand
    key: bytes
    value: bytes
    exptime: int
    cas_unique: int | None = None


# The pipelined calls below are memcached's: a Redis store is one node, so nothing is read or written
# on two of its nodes at once, and a lock is taken before the read (NonStickyBackend._lock_and_read).


async def get_each(reads: Sequence[tuple[NodeClient, bytes]]) -> list[Value | Failure | None]:
    """Each key read from its node, in one round trip for all (sent together, from this task:
    :func:`~sesh.net.memcache_client.call_each`)."""
    outcomes = await call_each([(client, [Get((key,))]) for client, key in reads])
    return [item_of(client, outcome, key) for (client, key), outcome in zip(reads, outcomes, strict=True)]


async def store_each(writes: Sequence[Write]) -> list[str | Failure]:
    """Each write's status word (or failure), as :func:`get_each` reads."""
    outcomes = await call_each([(w.client, [Store(w.command, w.key, w.value, w.exptime, 0, w.cas_unique)])
                                for w in writes])
    return [word_of(w.client, outcome) for w, outcome in zip(writes, outcomes, strict=True)]


async def add_and_get_each(add: Write, reads: Sequence[tuple[NodeClient, bytes]]) -> tuple[str | Failure,
                                                                                         list[Value | Failure | None]]:
    """``add`` (a lock) and the reads, as :func:`get_each`; the add goes out in the same send as the first
    read, to the same node (``add.client``, which runs them in that order)."""
    first, first_key = reads[0]
    assert add.client is first
    lock = Store(add.command, add.key, add.value, add.exptime, 0, add.cas_unique)
    calls: list[tuple[NodeClient, Sequence[Request]]] = [(first, [lock, Get((first_key,))])]
    calls += [(client, [Get((key,))]) for client, key in reads[1:]]
    outcomes = await call_each(calls)
    head = outcomes[0]
    word = word_of(first, head[:1] if isinstance(head, list) else head)
    found = [item_of(first, head[1:] if isinstance(head, list) else head, first_key)]
    found += [item_of(client, outcome, key) for (client, key), outcome in zip(reads[1:], outcomes[1:], strict=True)]
    return word, found


def make_clients(settings: MsmSettings, timer: WaitTimer | None = None) -> dict[str, StoreClient]:
    if settings.redis is not None:
        from sesh.net.redis_client import RedisStore  # coredis is loaded only when Redis is used

        store = RedisStore(settings.redis.urls, settings.redis.options, node_id=settings.nodes[0].node_id)
        return {store.node_id: store}
    return {
        node.node_id: NodeClient(node, operation_timeout=settings.operation_timeout, timer=timer)
        for node in settings.nodes
    }
