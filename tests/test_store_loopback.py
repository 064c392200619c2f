"""Loopback tests: serve_store in this process, reached through real sockets."""

from __future__ import annotations

import random
import resource
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from sesh.config import StoreConfig
from sesh.net.shutdown import Shutdown
from sesh.store.server import serve_store
from sesh.store.storage import Storage


@asynccontextmanager
async def running_store(**overrides: object) -> AsyncIterator[tuple[int, Storage, Shutdown]]:
    cfg = StoreConfig(port=0, **overrides)  # type: ignore[arg-type]
    storage = Storage(cfg.memory_limit * 1024 * 1024, max_item_size=cfg.max_item_size)
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_store, cfg, shutdown, storage=storage))
        yield port, storage, shutdown
        shutdown.request("test over")


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll what the server changes (storage counters have no event to wait on), for at most 5 s."""
    for _ in range(500):
        if condition():
            return
        await trio.sleep(0.01)
    raise AssertionError("the condition never held")


async def ask(stream: trio.SocketStream, payload: bytes, until: bytes) -> bytes:
    await stream.send_all(payload)
    data = b""
    with trio.fail_after(5):
        while not data.endswith(until):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def test_pipelined_commands_in_one_send_get_one_batch_of_replies() -> None:
    async with running_store() as (port, _, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        payload = b"".join(b"set k%d 0 0 2\r\nv%d\r\n" % (i, i % 10) for i in range(500))
        payload += b"".join(b"get k%d\r\n" % i for i in range(500))
        answer = await ask(stream, payload + b"mn\r\n", b"MN\r\n")
        assert answer.count(b"STORED\r\n") == 500
        assert answer.count(b"END\r\n") == 500
        assert b"VALUE k499 0 2\r\nv9\r\n" in answer
        await stream.aclose()


async def test_disconnect_mid_value_stores_nothing_and_others_are_served() -> None:
    async with running_store() as (port, storage, _):
        quitter = await trio.open_tcp_stream("127.0.0.1", port)
        await quitter.send_all(b"set half 0 0 100\r\n" + b"x" * 50)
        await quitter.aclose()
        other = await trio.open_tcp_stream("127.0.0.1", port)
        assert await ask(other, b"get half\r\n", b"END\r\n") == b"END\r\n"
        assert b"half" not in storage.items
        await other.aclose()


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def test_thousands_of_idle_connections_do_not_block_service() -> None:
    _raise_fd_limit(3300)  # both ends of 1500 connections live in this process
    async with running_store(conn_limit=4000) as (port, _, _):
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(1500)]
        active = await trio.open_tcp_stream("127.0.0.1", port)
        assert await ask(active, b"set a 0 0 1\r\nx\r\nget a\r\n", b"END\r\n") == (
            b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"
        )
        for stream in [*idle, active]:
            await stream.aclose()


async def test_connection_limit_answers_like_memcached() -> None:
    async with running_store(conn_limit=2) as (port, _, _):
        first = await trio.open_tcp_stream("127.0.0.1", port)
        second = await trio.open_tcp_stream("127.0.0.1", port)
        assert await ask(first, b"version\r\n", b"\r\n")
        assert await ask(second, b"version\r\n", b"\r\n")
        third = await trio.open_tcp_stream("127.0.0.1", port)
        assert await ask(third, b"", b"\r\n") == b"ERROR Too many open connections\r\n"
        for stream in (first, second, third):
            await stream.aclose()


async def test_binary_garbage_never_crashes_the_server() -> None:
    rng = random.Random(7)
    async with running_store() as (port, storage, _):
        keeper = await trio.open_tcp_stream("127.0.0.1", port)
        await ask(keeper, b"set keep 0 0 4\r\nsafe\r\n", b"STORED\r\n")
        for _ in range(30):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 5000)))
            try:
                await stream.send_all(junk)
                with trio.move_on_after(0.05):
                    await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await stream.aclose()
        assert await ask(keeper, b"get keep\r\n", b"END\r\n") == b"VALUE keep 0 4\r\nsafe\r\nEND\r\n"
        assert storage.items[b"keep"].value == b"safe"
        await keeper.aclose()


async def test_large_pipelined_output_is_sent_with_back_pressure() -> None:
    async with running_store() as (port, _, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        value = b"z" * 500_000
        await ask(stream, b"set big 0 0 %d\r\n%s\r\n" % (len(value), value), b"STORED\r\n")
        answer = await ask(stream, b"get big\r\n" * 20 + b"mn\r\n", b"MN\r\n")
        assert answer.count(b"VALUE big 0 500000\r\n") == 20
        await stream.aclose()


async def test_shutdown_closes_idle_connections() -> None:
    async with running_store() as (port, _, shutdown):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await ask(stream, b"version\r\n", b"\r\n")
        shutdown.request("test")
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""
        await stream.aclose()


async def test_long_get_lines_in_flight_count_against_the_memory_limit() -> None:
    """A get line may grow to 1 MiB before its newline; unfinished ones share the in-flight budget
    (half of -m) with unfinished values, so a crowd of them cannot hold more than that."""
    async with running_store(memory_limit=8) as (port, storage, _):
        line = b"get" + b" k" * 450_000  # 900 KB, no newline yet
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(6)]
        for stream in streams[:4]:
            await stream.send_all(line)
        await wait_until(lambda: storage.reserved >= 4 * len(line))
        # Four lines fit in 4 MiB; the fifth and sixth connections are closed.
        for stream in streams[4:]:
            with trio.fail_after(5):
                try:
                    await stream.send_all(line)
                    assert await stream.receive_some(100) == b""
                except trio.BrokenResourceError:
                    pass  # closed with our line unread: a reset
        assert storage.reserved <= 4 * 1024 * 1024
        answer = await ask(streams[0], b" hit\r\n", b"END\r\n")
        assert answer == b"END\r\n"
        for stream in streams:
            await stream.aclose()
        await wait_until(lambda: storage.reserved == 0)


async def test_value_refused_for_memory_in_flight_answers_like_memcached() -> None:
    async with running_store(memory_limit=8) as (port, storage, _):
        stalled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
        for index, stream in enumerate(stalled):
            await stream.send_all(b"set v%d 0 0 1000000\r\n" % index + b"x" * 1000)
        await wait_until(lambda: storage.reserved >= 4 * 1_000_000)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await ask(client, b"set old 0 0 1\r\no\r\n", b"STORED\r\n")
        await client.send_all(b"set old 0 0 1000000\r\n" + b"y" * 1000)
        value_rest = b"y" * (1_000_000 - 1000) + b"\r\n"
        answer = await ask(client, value_rest + b"get old\r\nmn\r\n", b"MN\r\n")
        # As memcached: refused, the rest of the value skipped, and a set drops the old value too.
        assert answer == b"SERVER_ERROR out of memory storing object\r\nEND\r\nMN\r\n"
        assert storage.counters.store_no_memory == 1
        assert storage.statistics().memory_reserved == storage.reserved >= 4 * 1_000_000
        await stalled[0].send_all(b"x" * (1_000_000 - 1000) + b"\r\n")
        assert await ask(stalled[0], b"", b"\r\n") == b"STORED\r\n"
        for stream in [*stalled, client]:
            await stream.aclose()
        await wait_until(lambda: storage.reserved == 0)


async def test_a_connection_moves_between_the_readiness_loop_and_its_task() -> None:
    """Idle connections are served by the readiness loop; a command still arriving, a multi-key get, a
    reply the client does not take at once and quit are handed back to the connection's task, and the
    next command finds the connection in the loop again."""
    async with running_store() as (port, storage, _):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        others = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        answer = await ask(stream, b"set a 0 0 1\r\n1\r\nget a\r\n", b"END\r\n")
        assert answer == b"STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\n"
        await stream.send_all(b"set b 0 0 10\r\n12345")
        await trio.sleep(0.05)
        assert await ask(stream, b"67890\r\n", b"\r\n") == b"STORED\r\n"
        assert await ask(stream, b"get a b missing\r\n", b"END\r\n") == (
            b"VALUE a 0 1\r\n1\r\nVALUE b 0 10\r\n1234567890\r\nEND\r\n"
        )
        value = b"v" * 300_000
        await ask(stream, b"set big 0 0 %d\r\n%s\r\n" % (len(value), value), b"STORED\r\n")
        await stream.send_all(b"get big\r\n" * 30)
        await trio.sleep(0.05)  # the replies fill the socket's buffers while nobody reads
        for other in others:
            assert await ask(other, b"get a\r\n", b"END\r\n") == b"VALUE a 0 1\r\n1\r\nEND\r\n"
        answer = await ask(stream, b"mn\r\n", b"MN\r\n")
        assert answer.count(b"VALUE big 0 300000\r\n") == 30
        stats = await ask(stream, b"stats\r\n", b"END\r\n")
        assert b"STAT curr_connections 4\r\n" in stats
        assert await ask(stream, b"quit\r\n", b"never") == b""
        assert storage.counters.get_hits == 1 + 2 + 30 + 3
        for other in others:
            await other.aclose()
        await stream.aclose()
