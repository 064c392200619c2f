"""HTTP/1.1 client connections to one upstream, kept alive in a bounded pool.

An :class:`UpstreamConnection` pairs a socket stream with a sans-IO :class:`ClientConnection` and counts
the bytes each way (the balancer's To/From columns). :class:`ConnectionPool` hands out an idle
connection when one is still alive, or opens a new one; connections come back with :meth:`release`
only when the exchange on them completed cleanly. Callers own timeouts: :meth:`acquire` takes the
connect timeout, :meth:`UpstreamConnection.next_event` the read timeout.
"""

from __future__ import annotations

import math
import select
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass

import trio

from sesh.net.fdstream import FdStream, WaitTimer
from sesh.net.server import set_nodelay
from sesh.protocol.http import NEED_DATA, ClientConnection, Event


class UpstreamConnection:
    """One connection to an upstream. Reads are at most :data:`sesh.net.fdstream.RECEIVE_SIZE`, the
    same as the server side's, so a response streams through in pieces (never a whole body)."""

    __slots__ = ("_io", "_poll", "_sent", "codec", "reused", "stream")

    def __init__(self, stream: trio.SocketStream, timer: WaitTimer | None = None) -> None:
        self.stream = stream
        self._io = FdStream(stream, timer)  # the timer (running) times every wait that has a timeout
        # For still_open: a poll object set up once is about half the cost of a select() per check.
        self._poll = select.poll()
        self._poll.register(stream.socket.fileno(), select.POLLIN)
        self.codec = ClientConnection()
        self.reused = False
        self._sent = False  # a request just left: its answer cannot be there yet

    def send_all(self, data: bytes, timeout: float = math.inf) -> Awaitable[None]:
        """Send a request (or a piece of its body); await the result. An upstream that takes none of
        it for ``timeout`` seconds breaks the connection (trio.BrokenResourceError). (A plain function
        handing back the stream's coroutine: one coroutine less per request.)"""
        self._sent = True
        return self._io.send_all(data, timeout)

    def receive_some(self, timeout: float) -> Awaitable[bytes | None]:
        """One read for a caller that drives :attr:`codec` itself (the proxy's hot path): bytes,
        ``b""`` on EOF, None after ``timeout`` seconds parked. Await the result."""
        park_first = self._sent
        self._sent = False
        return self._io.receive_some(timeout, park_first=park_first)

    async def next_event(self, timeout: float) -> tuple[Event, int]:  # noqa: ASYNC109 it bounds each wait for the upstream, not the call (only the stream can)
        """The next response event and the number of bytes read to get it (each wait for the upstream
        is bounded by ``timeout``; trio.TooSlowError when it stays silent that long)."""
        codec = self.codec
        received = 0
        while True:
            event = codec.next_event()
            if event is not NEED_DATA:
                return event, received  # type: ignore[return-value]
            data = await self._io.receive_some(timeout, park_first=self._sent)
            self._sent = False
            if data is None:
                raise trio.TooSlowError
            received += len(data)
            codec.receive_data(data)

    def still_open(self) -> bool:
        """An idle keep-alive connection must have nothing to read: readable means the upstream closed
        it (or sent junk), so it must not carry another request (httpd's is_socket_connected check)."""
        if self.stream.socket.fileno() < 0:
            return False
        try:
            return not self._poll.poll(0)  # POLLIN, or POLLHUP/POLLERR which poll always reports
        except OSError:
            return False

    def close(self) -> None:
        self._io.close()


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    idle: int
    opened: int
    reused: int
    discarded: int


class ConnectionPool:
    """Idle keep-alive connections to ``host:port``, at most ``max_idle`` of them (the rest close, so
    a burst does not leave hundreds of sockets open to a member)."""

    def __init__(self, host: str, port: int, max_idle: int, timer: WaitTimer | None = None) -> None:
        self.host = host
        self.timer = timer
        self.port = port
        self.max_idle = max_idle
        self._idle: deque[UpstreamConnection] = deque()
        self.opened = 0
        self.reused = 0
        self.discarded = 0

    def acquire_idle(self) -> UpstreamConnection | None:
        """An idle live connection, or None if there is none (without awaiting anything)."""
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have timed out
            if conn.still_open():
                conn.reused = True
                self.reused += 1
                return conn
            self.discarded += 1
            conn.close()
        return None

    async def acquire(self, connect_timeout: float) -> UpstreamConnection:
        """An idle live connection, or a new one (OSError if it cannot be opened, trio.TooSlowError
        if connecting takes longer than ``connect_timeout``)."""
        conn = self.acquire_idle()
        if conn is not None:
            return conn
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(self.host, self.port)
        set_nodelay(stream)
        self.opened += 1
        return UpstreamConnection(stream, self.timer)

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose last exchange completed and may be reused."""
        # Anything already parsed past the response (an unsolicited second response) makes the
        # connection's state unknowable: close it rather than pool it.
        if len(self._idle) < self.max_idle and conn.codec.next_event() is NEED_DATA:
            self._idle.append(conn)
        else:
            self.discarded += 1
            conn.close()

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(len(self._idle), self.opened, self.reused, self.discarded)
