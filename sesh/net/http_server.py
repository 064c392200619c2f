"""The HTTP/1.1 server loop shared by the node and the balancer.

One task per connection drives a sans-IO :class:`ServerConnection`; each request becomes an
:class:`HTTPExchange` handed to the role's handler, which reads the body in pieces and writes the
response (whole, or streamed with chunked encoding when it gives no length). After the handler, the
loop decides whether the connection can carry another request: the response must be complete and the
request body consumed (a small unread remainder is drained; a large one closes the connection).

A peer's bad input is answered here with the status its :class:`RemoteProtocolError` carries, then the
connection closes; the server goes on serving everyone else.

The socket is read and written through :class:`FdStream` (no scheduler round trip when the kernel has
the bytes or the room). Waits are timed only when they park, all by the stream's one mechanism (its
:class:`WaitTimer`): the keep-alive wait, a request's reads (408 after the request timeout or the head's
total deadline) and every send (the send timeout). Shutdown ends an idle connection by cancelling one
scope kept for the connection's life. :class:`HTTPServerConnection` holds one connection's state.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from types import MappingProxyType

import trio

from sesh.net.fdstream import FdStream, WaitTimer
from sesh.net.shutdown import Shutdown
from sesh.protocol.http import (
    CONTINUE_RESPONSE,
    LAST_CHUNK,
    NEED_DATA,
    ConnectionClosed,
    Data,
    EndOfMessage,
    RemoteProtocolError,
    Request,
    ServerConnection,
    encode_chunk,
    encode_response_head,
    error_response,
    response_framing,
    status_line,
)

# An unread request body up to this size is read and thrown away so the connection can be reused.
DRAIN_LIMIT = 256 * 1024
# The answer to a connection over the server's cap (written once, without waiting, before the close).
BUSY = error_response(503, "too many connections, try again later")


@dataclass(frozen=True, slots=True)
class HTTPTimeouts:
    keep_alive: float = 60.0  # idle between requests (Tomcat's keepAliveTimeout is 60 s by default)
    request: float = 30.0  # between reads while a request is arriving
    # The whole head, from its first byte: a client sending a byte a second is never idle for
    # `request`, so only a total deadline stops it (httpd's mod_reqtimeout: header=20-40).
    request_head: float = 20.0
    # A client that takes none of the response for this long is cut off (httpd's Timeout is 60 s), so
    # it cannot hold the connection, or what feeds the response (a balancer member), forever.
    send: float = 60.0


class _DateHeader:
    """The Date header, formatted once a second rather than per response."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_date = _DateHeader()


@dataclass(frozen=True, slots=True)
class HTTPServerStatistics:
    requests: int
    bad_requests: int
    responses_by_class: Mapping[int, int]  # 2 -> the number of 2xx answers, ...


@dataclass(slots=True)
class HTTPServerCounters:
    """Counted by the connections of one server; read through :meth:`statistics`."""

    requests: int = 0
    bad_requests: int = 0
    responses_by_class: dict[int, int] | None = None

    def statistics(self) -> HTTPServerStatistics:
        return HTTPServerStatistics(
            self.requests, self.bad_requests, MappingProxyType(dict(sorted((self.responses_by_class or {}).items())))
        )

    def count_response(self, status: int) -> None:
        if self.responses_by_class is None:
            self.responses_by_class = {}
        key = status // 100
        self.responses_by_class[key] = self.responses_by_class.get(key, 0) + 1


class HTTPExchange:
    """One request and its response on one connection."""

    __slots__ = (
        "_chunked", "_conn", "_continue_sent", "_head", "_stream", "_timeouts", "bytes_sent", "client",
        "keep_alive", "request", "request_complete", "response_complete", "response_started", "status",
    )

    def __init__(
        self,
        stream: FdStream,
        conn: ServerConnection,
        request: Request,
        client: tuple[str, int],
        timeouts: HTTPTimeouts,
    ) -> None:
        self.request = request
        self.client = client
        self._stream = stream
        self._conn = conn
        self._timeouts = timeouts
        self.request_complete = False
        self.response_started = False
        self.response_complete = False
        self.status = 0
        self.keep_alive = request.keep_alive
        self._chunked = False
        self._head = request.method == b"HEAD"  # no body goes out (the framing decides, at the head)
        self._continue_sent = False
        self.bytes_sent = 0

    # -- request body --
    async def receive_data(self) -> bytes:
        """The next piece of the request body; ``b""`` once it is complete."""
        while not self.request_complete:
            event = self._conn.next_event()
            if isinstance(event, Data):
                return event.data
            if isinstance(event, EndOfMessage):
                self.request_complete = True
                break
            if event is NEED_DATA:
                if self.request.expects_continue and not self._continue_sent and not self.response_started:
                    self._continue_sent = True
                    await self._stream.send_all(CONTINUE_RESPONSE, self._timeouts.send)
                data = await self._stream.receive_some(self._timeouts.request)
                if data is None:
                    raise trio.TooSlowError
                self._conn.receive_data(data)
                continue
            raise RemoteProtocolError("unexpected event in request body")
        return b""

    def take_bodyless_end(self) -> bool:
        """Take the end of a request without a body, which the codec queued with its head; True when
        that completed the request (the usual GET then needs no coroutine of receive_data)."""
        request = self.request
        if request.content_length or request.chunked or self._conn.in_message:
            return False
        if not isinstance(self._conn.next_event(), EndOfMessage):
            raise RemoteProtocolError("unexpected event in request body")
        self.request_complete = True
        return True

    async def read_body(self) -> bytes:
        """The whole request body (the connection's max_body bounds it)."""
        parts = []
        while piece := await self.receive_data():
            parts.append(piece)
        return b"".join(parts)

    # -- response --
    def _prepare_head(self, status: int, headers: list[tuple[bytes, bytes]], length: int | None = None) -> bytes:
        """The head to send; ``length`` adds a Content-Length header (after the caller's). Framing and
        Connection are the codec's decision (:func:`response_framing`); a Connection header among
        ``headers`` only says whether the handler wants the connection closed."""
        if self.response_started:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        out = []
        has_date = has_length = False
        for header in headers:
            lower = header[0].lower()
            if lower == b"connection":
                if header[1].lower() == b"close":
                    self.keep_alive = False
                continue
            if lower == b"date":
                has_date = True
            elif lower == b"content-length":
                has_length = True
            out.append(header)
        request = self.request
        framing = response_framing(
            request.method,
            request.http_version,
            status,
            length_known=length is not None or has_length,
            keep_alive=self.keep_alive,
        )
        if length is not None and framing.send_length:
            out.append((b"content-length", b"%d" % length))
        if not has_date:
            out.append((b"date", _date.value()))
        if framing.chunked:
            out.append((b"transfer-encoding", b"chunked"))
        if framing.connection is not None:
            out.append((b"connection", framing.connection))
        self._chunked = framing.chunked
        self._head = not framing.body
        self.keep_alive = framing.keep_alive
        return encode_response_head(status, out)

    async def start_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the head; the body follows with :meth:`send_data` and ends with :meth:`end_response`.
        Without a content-length header the body is sent chunked (to an HTTP/1.0 client: as it
        comes, and the connection closes after it)."""
        head = self._prepare_head(status, headers)
        await self._send(head)

    async def send_data(self, data: bytes) -> None:
        if not data or self._head:
            return
        await self._send(encode_chunk(data) if self._chunked else data)

    async def end_response(self) -> None:
        if self.response_complete:
            return
        self.response_complete = True
        if self._chunked and not self._head:
            await self._send(LAST_CHUNK)

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        """A whole response in one send."""
        head = self._prepare_head(status, headers, len(body))
        self.response_complete = True
        data = head if self._head else head + body
        self.bytes_sent += len(data)
        await self._stream.send_all(data, self._timeouts.send)

    def respond_encoded(self, status: int, header_lines: bytes, body: bytes, *, has_date: bool) -> Awaitable[None]:
        """:meth:`respond` for headers already encoded (``name: value\r\n`` each) that hold no
        Connection, Content-Length or Transfer-Encoding header; ``has_date`` says whether a Date is
        among them. The same bytes as respond(), built in one pass; await the result (a plain function
        handing back the stream's coroutine: one coroutine less on the proxy's hot path)."""
        head = self._encoded_head(status, header_lines, has_date, True, len(body))
        self.response_complete = True
        data = head if self._head else head + body
        self.bytes_sent += len(data)
        return self._stream.send_all(data, self._timeouts.send)

    def start_response_encoded(
        self, status: int, header_lines: bytes, *, has_date: bool, length_known: bool
    ) -> Awaitable[None]:
        """:meth:`start_response` for headers encoded as :meth:`respond_encoded` takes them, except
        that they may hold a Content-Length (``length_known`` says whether they do). Await the result."""
        head = self._encoded_head(status, header_lines, has_date, length_known, None)
        self.bytes_sent += len(head)
        return self._stream.send_all(head, self._timeouts.send)

    def _encoded_head(
        self, status: int, header_lines: bytes, has_date: bool, length_known: bool, length: int | None
    ) -> bytes:
        """:meth:`_prepare_head` for encoded header lines; ``length`` (when given) goes in as the
        Content-Length if the framing sends one."""
        if self.response_started:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        request = self.request
        framing = response_framing(
            request.method, request.http_version, status, length_known=length_known, keep_alive=self.keep_alive
        )
        self.keep_alive = framing.keep_alive
        self._chunked = framing.chunked
        self._head = not framing.body
        parts = [status_line(status), header_lines]
        if length is not None and framing.send_length:
            parts.append(b"content-length: %d\r\n" % length)
        if not has_date:
            parts.append(b"date: %s\r\n" % _date.value())
        parts.append(framing.lines)
        parts.append(b"\r\n")
        return b"".join(parts)

    async def send_interim(self, status: int, header_lines: bytes) -> bool:
        """A 1xx interim response (103 Early Hints, a relayed 100 Continue) before the final one, its
        headers encoded (``name: value\r\n`` each); True if it was sent. RFC 9110 section 15.2: never
        to an HTTP/1.0 client, and 101 is not for this (switching protocols ends the exchange). A 100
        Continue goes at most once per request (this exchange sends one itself before reading an
        expected body)."""
        if self.response_started or self.request.http_version == "1.0" or not 100 <= status < 200 or status == 101:
            return False
        if status == 100:
            if self._continue_sent:
                return False
            self._continue_sent = True
        await self._send(status_line(status) + header_lines + b"\r\n")
        return True

    def switch_protocols(self) -> FdStream:
        """Take the connection over for another protocol (a balancer's tunnel after a 101): the caller
        writes the 101 itself; the exchange counts as answered and complete, and the serving loop reads
        no more requests from the connection and closes it once the handler returns."""
        self.response_started = self.response_complete = self.request_complete = True
        self.keep_alive = False
        self.status = 101
        return self._stream

    async def _send(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        await self._stream.send_all(data, self._timeouts.send)


HTTPHandler = Callable[[HTTPExchange], Awaitable[None]]


async def serve_http_connection(
    stream: trio.SocketStream,
    handler: HTTPHandler,
    shutdown: Shutdown,
    *,
    max_body: int | None,
    counters: HTTPServerCounters,
    timeouts: HTTPTimeouts = HTTPTimeouts(),
    timer: WaitTimer | None = None,
) -> None:
    """Serve one connection. ``timer`` (running, from the server's nursery) times every wait on the
    socket; without one (a caller serving a single connection, tests) the connection runs its own."""
    if timer is not None and timer.running:
        await HTTPServerConnection(stream, handler, shutdown, max_body, counters, timeouts, timer).run()
        return
    own = WaitTimer()
    async with trio.open_nursery() as nursery:
        await nursery.start(own.run)
        await HTTPServerConnection(stream, handler, shutdown, max_body, counters, timeouts, own).run()
        nursery.cancel_scope.cancel()


class HTTPServerConnection:
    """One client connection (hypercorn's TCPServer shape): the stream, the codec, the timeouts and the
    counters, and one small method per phase: wait for a request (idle, then its head), run the
    handler, finish the request body, answer an error and close with a linger."""

    __slots__ = (
        "_answered", "_head_deadline", "_idle", "_idle_guard", "client", "conn", "counters", "handler",
        "io", "shutdown", "timeouts",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        handler: HTTPHandler,
        shutdown: Shutdown,
        max_body: int | None,
        counters: HTTPServerCounters,
        timeouts: HTTPTimeouts,
        timer: WaitTimer,
    ) -> None:
        self.conn = ServerConnection(max_body)
        self.io = FdStream(stream, timer)
        self.handler = handler
        self.shutdown = shutdown
        self.counters = counters
        self.timeouts = timeouts
        try:
            peer = stream.socket.getpeername()
            self.client = (str(peer[0]), int(peer[1]))
        except OSError:
            self.client = ("", 0)
        # Idle between requests, shutdown simply closes the connection: it cancels this scope, entered
        # once for the connection's life (cheaper than one per wait), watched only while idle.
        self._idle_guard = trio.CancelScope()
        self._idle = True
        # Just after a response the client is still reading it, so the socket is empty: park at once
        # rather than pay for a read that fails (a fresh connection usually has its request waiting).
        self._answered = False
        # When the head now arriving must be complete; set when it first needs a second read (a head
        # that arrives in one read, the common case, costs no clock reading).
        self._head_deadline = 0.0

    async def run(self) -> None:
        with self._idle_guard:
            while not self.shutdown.requested or not self._idle:
                try:
                    request = await self._next_request()
                except RemoteProtocolError as exc:
                    self._count_error(exc)
                    await self._answer_error(exc)
                    return
                if request is None or not await self._run_exchange(request):
                    return
                self._idle = True
                self._answered = True

    async def _next_request(self) -> Request | None:
        """The next request's head; None when the connection ends (the client closed it, or it stayed
        idle past the keep-alive timeout, or shutdown came while it was idle)."""
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                if self._idle and not conn.in_message:
                    # Between requests (inlined: a coroutine level per request is measurable here).
                    guard = self._idle_guard
                    idle_data = await self.io.receive_some(
                        self.timeouts.keep_alive, park_first=self._answered, guard=guard, shutdown=self.shutdown
                    )
                    if idle_data is None or guard.cancel_called:
                        return None  # expired or shut down while idle (even if a request just arrived)
                    self._idle = False  # the first bytes of a request: its head deadline runs from here
                    self._head_deadline = 0.0
                    data = idle_data
                else:
                    data = await self._receive_head()
                self._answered = False
                conn.receive_data(data)
                continue
            if isinstance(event, ConnectionClosed):
                return None
            if not isinstance(event, Request):
                raise RemoteProtocolError("request body without a request")
            self._idle = False
            self._head_deadline = 0.0
            return event

    async def _receive_head(self) -> bytes:
        """More of a head that is arriving (after its first read, or pipelined behind the last one),
        within the request timeout and the head's total deadline (408 after either)."""
        now = trio.current_time()
        if not self._head_deadline:
            self._head_deadline = now + self.timeouts.request_head
            self._idle = False
        data = await self.io.receive_some(min(self.timeouts.request, self._head_deadline - now))
        if data is None:
            raise RemoteProtocolError("request head timed out", 408)
        return data

    async def _run_exchange(self, request: Request) -> bool:
        """Run the handler on one request; True if the connection can carry another."""
        counters = self.counters
        counters.requests += 1
        exchange = HTTPExchange(self.io, self.conn, request, self.client, self.timeouts)
        try:
            await self.handler(exchange)
            if not exchange.response_started:
                await exchange.respond(500, [(b"content-type", b"text/plain")], b"no response\n")
            if not exchange.response_complete:
                return False  # the handler gave up half-way: the client must see the connection end
            counters.count_response(exchange.status)
            if not (exchange.request_complete or exchange.take_bodyless_end() or await _finish_request_body(exchange)):
                return False
        except RemoteProtocolError as exc:
            self._count_error(exc)
            if not exchange.response_started:
                await self._answer_error(exc)
            return False
        except trio.TooSlowError:
            if not exchange.response_started:
                await self._answer_error(RemoteProtocolError("request timed out", 408))
            return False
        return exchange.keep_alive and not self.conn.upgraded

    def _count_error(self, exc: RemoteProtocolError) -> None:
        self.counters.bad_requests += 1
        self.counters.count_response(exc.status)

    async def _answer_error(self, exc: RemoteProtocolError) -> None:
        await _answer_error(self.io, exc)


async def _finish_request_body(exchange: HTTPExchange) -> bool:
    """Consume what the handler left of the request body; False if the connection must close."""
    drained = 0
    while not exchange.request_complete:
        piece = await exchange.receive_data()
        drained += len(piece)
        if drained > DRAIN_LIMIT:
            return False
    return True


# After an error answer, what the client is still sending is read and dropped for this long (and up to
# this much) before the close, as httpd's lingering close does: closing with unread bytes makes the
# kernel send a reset, which can destroy the answer before the client reads it.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


async def _answer_error(stream: FdStream, exc: RemoteProtocolError) -> None:
    with trio.move_on_after(5):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_all(error_response(exc.status, str(exc)))
            stream.stream.socket.shutdown(socket.SHUT_WR)
            deadline = trio.current_time() + LINGER_SECONDS
            dropped = 0
            while dropped < LINGER_BYTES:
                data = await stream.receive_some(deadline - trio.current_time())
                if not data:  # the client closed, or the time is up
                    break
                dropped += len(data)
