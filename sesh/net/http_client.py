"""HTTP/1.1 client connections to one upstream, kept alive in a bounded pool.

An :class:`UpstreamConnection` pairs a socket stream with a sans-IO :class:`ClientConnection` and counts
the bytes each way (the balancer's To/From columns). :class:`ConnectionPool` hands out an idle
connection when one is still alive, or opens a new one; connections come back with :meth:`release`
only when the exchange on them completed cleanly. Callers own timeouts: :meth:`acquire` takes the
connect timeout, :meth:`UpstreamConnection.next_event` the read timeout.
"""

from __future__ import annotations

import select
from collections import deque
from dataclasses import dataclass

import trio

from sesh.net.server import set_nodelay
from sesh.protocol.http import NEED_DATA, ClientConnection, Event

# One read from an upstream: the same size the server side reads, so a response streams through in
# pieces of at most this much (never a whole body).
RECEIVE_SIZE = 64 * 1024


class UpstreamConnection:
    __slots__ = ("codec", "reused", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.codec = ClientConnection()
        self.reused = False

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self, timeout: float) -> tuple[Event, int]:
        """The next response event and the number of bytes read to get it (each read is bounded by
        ``timeout``; trio.TooSlowError when the upstream stays silent that long)."""
        codec = self.codec
        received = 0
        while True:
            event = codec.next_event()
            if event is not NEED_DATA:
                return event, received  # type: ignore[return-value]
            with trio.fail_after(timeout):
                data = await self.stream.receive_some(RECEIVE_SIZE)
            received += len(data)
            codec.receive_data(data)

    def still_open(self) -> bool:
        """An idle keep-alive connection must have nothing to read: readable means the upstream closed
        it (or sent junk), so it must not carry another request (httpd's is_socket_connected check)."""
        try:
            readable, _, _ = select.select([self.stream.socket.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        self.stream.socket.close()


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    idle: int
    opened: int
    reused: int
    discarded: int


class ConnectionPool:
    """Idle keep-alive connections to ``host:port``, at most ``max_idle`` of them (the rest close, so
    a burst does not leave hundreds of sockets open to a member)."""

    def __init__(self, host: str, port: int, max_idle: int) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: deque[UpstreamConnection] = deque()
        self.opened = 0
        self.reused = 0
        self.discarded = 0

    async def acquire(self, connect_timeout: float) -> UpstreamConnection:
        """An idle live connection, or a new one (OSError if it cannot be opened, trio.TooSlowError
        if connecting takes longer than ``connect_timeout``)."""
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have timed out
            if conn.still_open():
                conn.reused = True
                self.reused += 1
                return conn
            self.discarded += 1
            conn.close()
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(self.host, self.port)
        set_nodelay(stream)
        self.opened += 1
        return UpstreamConnection(stream)

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
