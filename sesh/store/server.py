"""The ``sesh store`` server: accept memcached clients, and serve each with a :class:`StoreConnection`.

Theory of operation. A connection reads whatever the socket holds (many pipelined commands per
receive), runs every complete command synchronously against the storage, and queues the replies;
they are written when the input is used up, or as soon as :data:`MAX_PENDING_OUTPUT` bytes are queued
— also in the middle of one command: a multi-key get is answered key by key, its values queued by
reference (not copied), so one ``get`` naming a 1 MB value 2,000 times holds a few hundred KiB of
reply, not 2 GB. While the client does not take its replies, the connection waits for it and reads
nothing more (back-pressure: memcached stops reading a connection whose output is backed up).

Who runs a connection. While a connection is idle (no command half received, no reply waiting to be
written), it is served by the store's :class:`sesh.net.readiness.ReadinessLoop`: one task that wakes
once for every connection that became readable since its last pass, and for each reads, answers
(:meth:`StoreConnection._answer`, synchronous) and writes without waiting. With 50 clients and one
command in flight each, that replaces a trio wake-up and an ``epoll_ctl`` per command (measured as
most of the cost of a get) with one per batch. The connection's own task stays parked meanwhile, and
takes over whenever something must wait: a reply the socket did not take at once, a command still
arriving (its wait is timed), a multi-key get (answered key by key, see above), quit, the end of the
connection; then it hands the connection back to the loop at its next idle wait.

The task reads and writes through the shared :class:`sesh.net.fdstream.FdStream`, which parks
only when the kernel has nothing (or no room): trio's stream methods add a scheduler checkpoint to
every successful call, which at memcached's rates costs more than the command itself. It uses the
stream's sync primitives (``receive_nowait``, ``send_nowait``, the timed waits) and paces
itself: it yields every :data:`~sesh.net.fdstream.MAX_RECEIVES_WITHOUT_YIELD` receives that did not
park (memcached yields after ``reqs_per_event`` commands) and after every write made in the middle of a
command, so a client reading a huge answer quickly does not starve the others.

Data in flight costs memory before it becomes an item: a value whose command line arrived first is
reserved against ``-m`` (as memcached allocates the item when the line is read); when the reservation
is refused the value is answered ``SERVER_ERROR out of memory storing object`` and skipped as it
arrives. A client that stops in the middle of a command, or stops reading its replies, is disconnected
after ``--stall-timeout`` seconds (the stream's timed waits: a receive while a command is half
received, every send), and whatever it held is given back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import trio

from sesh.config import StoreConfig
from sesh.log import get_logger
from sesh.net.fdstream import MAX_RECEIVES_WITHOUT_YIELD, FdStream, SendTimeout, WaitTimer
from sesh.net.readiness import ReadinessLoop
from sesh.net.server import ConnectionCounter, bound_port, open_listeners, serve_connections
from sesh.net.shutdown import Shutdown
from sesh.protocol.memcache import MAX_COMMAND_LINE, MemcacheParser, get_keys
from sesh.protocol.memcache_events import Close, Event, Get, NeedData, Quit
from sesh.store.commands import CommandHandler
from sesh.store.stats import ServerInfo
from sesh.store.storage import ITEM_OVERHEAD, Storage

log = get_logger("store")

# One receive takes up to this much: a burst of pipelined commands is parsed from one syscall.
READ_SIZE = 256 * 1024
# Replies are written once this much is queued, even in the middle of a command, so the reply bytes
# a connection holds stay below this plus one item (at most -I), whatever it asked for.
MAX_PENDING_OUTPUT = 256 * 1024
# Queued replies smaller than this are joined and written with one write(); larger ones go out with
# writev() so values are not copied.
JOIN_LIMIT = 64 * 1024
TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"
END = b"END\r\n"
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
        storage = Storage(cfg.memory_limit * MIB, now=int(clock()), max_item_size=cfg.max_item_size)
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
    timer = WaitTimer()  # times every connection's stalled waits
    readiness = ReadinessLoop()  # serves every idle connection's next commands
    serve = partial(
        serve_client, handler=handler, max_item_size=cfg.max_item_size, clock=clock, shutdown=shutdown,
        stall_timeout=cfg.stall_timeout, timer=timer, readiness=readiness,
    )
    async with trio.open_nursery() as helpers:
        await helpers.start(timer.run)
        await helpers.start(readiness.run)
        task_status.started(port)
        await serve_connections(listeners, serve, shutdown, counter, on_refused=_refuse)
        helpers.cancel_scope.cancel()


async def _refuse(stream: trio.SocketStream) -> None:
    await stream.send_all(TOO_MANY_CONNECTIONS)


async def serve_client(
    stream: trio.SocketStream,
    *,
    handler: CommandHandler,
    max_item_size: int,
    clock: Clock,
    shutdown: Shutdown,
    stall_timeout: float = 0.0,
    timer: WaitTimer | None = None,
    readiness: ReadinessLoop,
) -> None:
    """One client connection, until it quits, disconnects, stalls or misbehaves beyond repair, or the
    store stops (a command already read is answered; waiting for the next one ends at once)."""
    io = FdStream(stream, timer, receive_size=READ_SIZE)
    connection = StoreConnection(io, handler, max_item_size, clock, stall_timeout, readiness)
    with shutdown.cancel_on_request():
        await connection.serve()


class StoreConnection:
    """One client: its parser, the replies queued for it, and the memory it holds for data in flight."""

    def __init__(
        self,
        io: FdStream,
        handler: CommandHandler,
        max_item_size: int,
        clock: Clock,
        stall_timeout: float,
        readiness: ReadinessLoop,
    ) -> None:
        self.io = io
        self.handler = handler
        self.storage = handler.storage
        self.parser = MemcacheParser(max_item_size)
        self.clock = clock
        self.stall_timeout = stall_timeout
        # Every wait that must not last (a command half received, replies unread) is the stream's timed
        # wait, so an attacker trickling data costs us a timer entry per park, not a cancel scope.
        self._send_timeout = stall_timeout or math.inf
        self.out: list[bytes] = []
        self.out_size = 0
        # Bytes of the memory limit held for data in flight (a value or a long get line still arriving).
        self.reserved = 0
        # While idle, the connection is served by the readiness loop, which hands it back with these.
        self.readiness = readiness
        self._handed_over: Event | None = None
        self._at_eof = False

    async def serve(self) -> None:
        try:
            await self._read_loop()
        except SendTimeout:
            self._closing(f"not reading its replies for {self.stall_timeout:g}s")
        finally:
            self._release()

    def _closing(self, reason: str) -> None:
        if self.handler.info.verbosity:
            log.info("closing a client", reason=reason)

    def _release(self) -> None:
        if self.reserved:
            self.storage.release(self.reserved)
            self.reserved = 0

    async def _read_loop(self) -> None:
        io = self.io
        receive_nowait = io.receive_nowait
        stall_timeout = self.stall_timeout or math.inf
        parser = self.parser
        readiness = self.readiness
        # Whether the socket may hold unread input. After a reply it almost never does (a client waits
        # for the answer before it asks again), so we park at once instead of paying for a read that
        # fails with EAGAIN; a full read buffer means more is probably waiting.
        may_have_input = True
        batches = 0
        while True:
            try:
                if not may_have_input:
                    if parser.mid_command and stall_timeout != math.inf:
                        if not await io.wait_readable_for(stall_timeout):
                            self._closing(f"stalled in the middle of a command for {self.stall_timeout:g}s")
                            return
                    else:
                        # Idle: the loop answers this client's commands until it needs us again.
                        await readiness.serve_while(io.stream.socket.fileno(), self._serve_ready)
                        if self._at_eof:
                            return
                        handed_over, self._handed_over = self._handed_over, None
                        if not await self._answer_all(handed_over):
                            return
                        continue
                data = receive_nowait()
            except trio.BrokenResourceError:
                return
            if data is None:
                may_have_input = False
                batches = 0
                continue
            if not data:
                return
            may_have_input = len(data) == READ_SIZE
            if may_have_input:
                batches += 1
                if batches >= MAX_RECEIVES_WITHOUT_YIELD:
                    batches = 0
                    await trio.lowlevel.checkpoint()
            else:
                batches = 0
            parser.receive_data(data)
            # The parser keeps what it needs; holding the receive while parked would pin up to
            # READ_SIZE per idle connection.
            del data
            if not await self._answer_all(None):
                return

    def _serve_ready(self) -> bool:
        """The readiness loop's handler: the socket is readable. Read, answer and write what can be
        done without waiting; False hands the connection back to its task (a reply that did not fit
        in the send buffer, a command still arriving, a multi-key get, the end of the connection), with
        what it must go on with in ``_handed_over`` and ``out``."""
        data = self.io.receive_nowait()
        if data is None:
            return True
        if not data:
            self._at_eof = True
            return False
        self.parser.receive_data(data)
        del data
        event = self._answer(int(self.clock()))
        if event is not None or self.out_size >= JOIN_LIMIT:
            self._handed_over = event
            return False
        out = self.out
        if out:
            reply = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            sent = self.io.send_nowait(reply)
            if sent < len(reply):
                out.append(reply[sent:])
                self.out_size = len(reply) - sent
                return False
            self.out_size = 0
        return not self.parser.mid_command

    async def _answer_all(self, event: Event | None) -> bool:
        """Answer every complete command buffered, starting with ``event`` if one was handed over,
        and write the replies; False once the connection is to end (Close, Quit)."""
        while True:
            if self.out_size > MAX_PENDING_OUTPUT:
                await self._write(in_command=True)
            if event is None:
                event = self._answer(int(self.clock()))
                if event is None:
                    if self.out_size > MAX_PENDING_OUTPUT:
                        continue
                    break
            if isinstance(event, Get):
                await self._get(event, int(self.clock()))
                event = None
                continue
            if isinstance(event, Close):
                self._closing(event.reason)
            await self._write()
            return False
        await self._write()
        return True

    def _answer(self, now: int) -> Event | None:
        """Run the buffered commands that need no waiting, queueing their replies. Returns the first
        that does (a get of many keys or of a long line, Close, Quit), or None: the input is used up,
        or the queued replies passed MAX_PENDING_OUTPUT (then write, and call again).

        The hot path, kept in one function with locals: a single-key get or any other command is
        answered without creating a coroutine."""
        parser = self.parser
        next_event = parser.next_event
        handler = self.handler
        handle = handler.handle
        get_key = handler.get_key
        out = self.out
        pending = self.out_size
        event: Event = next_event()
        if self.reserved and type(event) is not NeedData:
            self._release()  # what was reserved for has arrived
        while True:
            kind = type(event)
            if kind is Get:
                assert isinstance(event, Get)
                keys = event.keys
                if len(keys) != 1 or event.more or event.key_too_long:
                    self.out_size = pending
                    return event
                pending += get_key(keys[0], event, now, out) + len(END)
                out.append(END)
            elif kind is NeedData:
                if parser.mid_command:
                    refused = self._hold_in_flight(now)
                    if refused is not None:
                        event = refused
                        continue
                self.out_size = pending
                return None
            elif kind is Close or kind is Quit:
                self.out_size = pending
                return event
            else:
                reply = handle(event, now)  # type: ignore[arg-type]
                if reply:
                    out.append(reply)
                    pending += len(reply)
            if pending > MAX_PENDING_OUTPUT:
                self.out_size = pending
                return None
            event = next_event()

    async def _get(self, command: Get, now: int) -> None:
        """A get, answered key by key: queued replies are written whenever they pass the bound."""
        if command.key_too_long:
            # Only an error is answered (the lookups still count), so nothing large is queued.
            reply = self.handler.get(command, now)
            self.out.append(reply)
            self.out_size += len(reply)
            return
        get_key = self.handler.get_key
        out = self.out
        for key in get_keys(command) if command.more else command.keys:
            size = get_key(key, command, now, out)
            if size:
                self.out_size += size
                if self.out_size > MAX_PENDING_OUTPUT:
                    await self._write(in_command=True)
                    now = int(self.clock())
        out.append(END)
        self.out_size += len(END)

    def _hold_in_flight(self, now: int) -> Event | None:
        """Count the part of a command that is still arriving against the memory limit; the event to
        answer instead when it does not fit (None: go on reading)."""
        parser = self.parser
        awaiting = parser.awaiting_value
        if awaiting is not None:
            if not self.reserved:
                key, need = awaiting
                cost = len(key) + need + ITEM_OVERHEAD
                if not self.storage.reserve(cost, now):
                    return parser.refuse_value()
                self.reserved = cost
            return None
        held = parser.buffered
        if held > MAX_COMMAND_LINE and held > self.reserved:
            # A long get line on its way: as memcached grows its read buffer for it, from the same memory.
            if not self.storage.reserve(held - self.reserved, now):
                return Close("out of memory for a long get line")
            self.reserved = held
        return None

    async def _write(self, *, in_command: bool = False) -> None:
        """Write every queued reply, parking only when the socket's send buffer is full. In the middle
        of a command, yield afterwards so the others are served while one answer streams."""
        out = self.out
        if not out:
            return
        if self.out_size < JOIN_LIMIT or len(out) == 1:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.out_size = 0
            await self.io.send_all(data, self._send_timeout)
        else:
            parts: list[bytes | memoryview] = list(out)
            out.clear()
            self.out_size = 0
            await self.io.send_parts(parts, self._send_timeout)
        if in_command:
            await trio.lowlevel.checkpoint()
