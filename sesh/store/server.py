"""The ``sesh store`` server loop: accept memcached clients, parse, apply, reply.

The hot path is one task per connection that reads whatever the socket holds (many pipelined
commands per receive), runs every complete command synchronously against the storage, and writes all
their replies with one send. It reads and writes the connection's file descriptor directly and only
parks in ``trio.lowlevel.wait_readable``/``wait_writable`` when the kernel has nothing (or no room):
trio's stream methods add a scheduler checkpoint to every successful call, which at memcached's rates
costs more than the command itself. Fairness is kept by yielding every
:data:`MAX_BATCHES_WITHOUT_YIELD` receives, as memcached yields after ``reqs_per_event`` commands.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import partial

import trio

from sesh.config import StoreConfig
from sesh.net.server import ConnectionCounter, bound_port, open_listeners, serve_connections
from sesh.net.shutdown import Shutdown
from sesh.protocol.memcache import MemcacheParser
from sesh.protocol.memcache_events import Close, NeedData, Quit
from sesh.store.commands import CommandHandler
from sesh.store.stats import ServerInfo
from sesh.store.storage import Storage

# One receive takes up to this much: a burst of pipelined commands is parsed from one syscall.
READ_SIZE = 256 * 1024
# Replies are sent once this much is queued even if more commands are waiting, so a client that
# pipelines many large gets without reading cannot make us buffer without bound (back-pressure:
# the send waits until the client reads).
MAX_PENDING_OUTPUT = 4 * 1024 * 1024
# A connection that always has more input yields to the others after this many receives.
MAX_BATCHES_WITHOUT_YIELD = 16
TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"
MIB = 1024 * 1024

Clock = Callable[[], float]


async def serve_store(
    cfg: StoreConfig,
    shutdown: Shutdown,
    *,
    storage: Storage | None = None,
    clock: Clock = time.time,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve memcached's protocol on ``cfg.listen:cfg.port`` until shutdown; reports the bound port."""
    if storage is None:
        storage = Storage(cfg.memory_limit * MIB, now=int(clock()))
    listeners = await open_listeners(cfg.listen, cfg.port)
    port = bound_port(listeners)
    counter = ConnectionCounter(cfg.conn_limit)
    info = ServerInfo(
        port=port,
        listen=cfg.listen,
        max_connections=cfg.conn_limit,
        item_size_max=cfg.max_item_size,
        started=storage.started or int(clock()),
        connections=counter,
        verbosity=cfg.verbose,
    )
    handler = CommandHandler(storage, info)
    serve = partial(
        serve_client, handler=handler, max_item_size=cfg.max_item_size, clock=clock, shutdown=shutdown
    )
    task_status.started(port)
    await serve_connections(listeners, serve, shutdown, counter, on_refused=_refuse)


async def _refuse(stream: trio.SocketStream) -> None:
    await stream.send_all(TOO_MANY_CONNECTIONS)


async def serve_client(
    stream: trio.SocketStream,
    *,
    handler: CommandHandler,
    max_item_size: int,
    clock: Clock,
    shutdown: Shutdown,
) -> None:
    """One client connection, until it quits, disconnects or misbehaves beyond repair, or the store
    stops (a command already read is answered; waiting for the next one ends at once)."""
    with shutdown.cancel_on_request():
        await _serve(stream, handler, max_item_size, clock)


async def _serve(stream: trio.SocketStream, handler: CommandHandler, max_item_size: int, clock: Clock) -> None:
    fd = stream.socket.fileno()
    parser = MemcacheParser(max_item_size)
    handle = handler.handle
    next_event = parser.next_event
    batches = 0
    # Whether the socket may hold unread input. After a reply it almost never does (a client waits
    # for the answer before it asks again), so we park at once instead of paying for a read that
    # fails with EAGAIN; a full read buffer means more is probably waiting.
    may_have_input = True
    while True:
        if not may_have_input:
            await trio.lowlevel.wait_readable(fd)
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            may_have_input = False
            batches = 0
            continue
        except ConnectionError:
            return
        if not data:
            return
        may_have_input = len(data) == READ_SIZE
        if may_have_input:
            batches += 1
            if batches >= MAX_BATCHES_WITHOUT_YIELD:
                batches = 0
                await trio.lowlevel.checkpoint()
        else:
            batches = 0
        parser.receive_data(data)
        now = int(clock())
        replies: list[bytes] = []
        pending = 0
        while True:
            event = next_event()
            if isinstance(event, NeedData):
                break
            if isinstance(event, (Close, Quit)):
                if isinstance(event, Close) and handler.info.verbosity:
                    print(f"sesh store: closing a client: {event.reason}", file=sys.stderr, flush=True)
                await _write(fd, b"".join(replies))
                return
            reply = handle(event, now)
            if reply:
                replies.append(reply)
                pending += len(reply)
                if pending > MAX_PENDING_OUTPUT:
                    await _write(fd, b"".join(replies))
                    replies.clear()
                    pending = 0
                    now = int(clock())
        if replies:
            await _write(fd, replies[0] if len(replies) == 1 else b"".join(replies))


async def _write(fd: int, data: bytes) -> None:
    """Write all of ``data``, parking only when the socket's send buffer is full."""
    view = memoryview(data)
    while view:
        try:
            sent = os.write(fd, view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        view = view[sent:]
