"""HTTP/1.1 over httptools (llhttp), sans-IO: bytes in, events out; events in, bytes out.

Theory of operation. llhttp is a callback parser; each connection object here is the callback
"protocol" and turns the callbacks into frozen events queued in order (``Request``/``Response``, then
``Data`` pieces, then ``EndOfMessage``). The caller feeds bytes with :meth:`receive_data` only when
:meth:`next_event` says :data:`NEED_DATA`, so the queue never holds more than one read's worth of events
(back-pressure stays with the socket). Pipelined requests simply queue one after the other.

Limits are enforced inside the callbacks, because llhttp itself has none: a request line or header
block that grows past its limit raises :class:`RemoteProtocolError` carrying the status to answer
(414, 431, 413, 400), whoever fed the bytes.

Two llhttp gaps are closed here: it cannot be told that a response answers a HEAD request (so such
responses are parsed head-only by hand), and httptools does not expose ``llhttp_finish`` (so a response
body delimited by the connection closing is ended on EOF here).

Interim (1xx) response heads are :class:`InformationalResponse` events, never ``Response``: they have
no body and no ``EndOfMessage``, and the final response to the same request follows. After a ``101
Switching Protocols`` the connection no longer speaks HTTP: :attr:`ClientConnection.switched` is set
and the bytes that followed the 101 head are in :attr:`ClientConnection.trailing_data`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import httptools

Headers = tuple[tuple[bytes, bytes], ...]

# httpd's defaults: LimitRequestLine 8190, LimitRequestFieldSize 8190, LimitRequestFields 100.
MAX_TARGET_BYTES: Final = 8190
MAX_HEADER_BYTES: Final = 64 * 1024  # the whole header block; one header is also capped at 8190
MAX_HEADER_LINE_BYTES: Final = 8190
MAX_HEADER_COUNT: Final = 100


class RemoteProtocolError(Exception):
    """The peer sent something that is not acceptable HTTP; ``status`` is what to answer it."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    target: bytes
    headers: Headers  # names lower-cased, values as sent
    http_version: str
    keep_alive: bool
    content_length: int | None
    chunked: bool

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)

    @property
    def expects_continue(self) -> bool:
        value = self.header(b"expect")
        return value is not None and value.lower() == b"100-continue"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: bytes
    headers: Headers
    http_version: str
    keep_alive: bool
    content_length: int | None
    chunked: bool

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)


@dataclass(frozen=True, slots=True)
class InformationalResponse:
    """A 1xx interim head (100 Continue, 103 Early Hints, 101 Switching Protocols)."""

    status: int
    reason: bytes
    headers: Headers

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    pass


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection between messages."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
END_OF_MESSAGE: Final = EndOfMessage()
CONNECTION_CLOSED: Final = ConnectionClosed()

Event = Request | Response | InformationalResponse | Data | EndOfMessage | ConnectionClosed


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The last value of header ``name`` (lower-case), or None."""
    found = None
    for key, value in headers:
        if key == name:
            found = value
    return found


# The headers on_header must look at (the rest are only collected).
_FRAMING_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding"})


class _Connection:
    """What request and response parsing share: header collection, limits, event queue."""

    def __init__(self, max_body: int | None) -> None:
        self.max_body = max_body
        self._events: deque[Event] = deque()
        self._closed = False
        self._reset_message()

    def _reset_message(self) -> None:
        self._in_message = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body_bytes = 0
        self._content_length: int | None = None
        self._chunked = False

    # -- llhttp callbacks (names fixed by httptools) --
    def on_message_begin(self) -> None:
        self._reset_message()
        self._in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        headers = self._headers
        self._header_bytes += size + 4
        if size > MAX_HEADER_LINE_BYTES or self._header_bytes > MAX_HEADER_BYTES or len(headers) >= MAX_HEADER_COUNT:
            if size > MAX_HEADER_LINE_BYTES:
                raise RemoteProtocolError("header field too large", 431)
            raise RemoteProtocolError("header fields too large", 431)
        lower = name.lower()
        if lower not in _FRAMING_HEADERS:
            headers.append((lower, value))
            return
        if lower == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise RemoteProtocolError("bad Content-Length") from None
            if self._content_length is not None and self._content_length != length:
                raise RemoteProtocolError("conflicting Content-Length headers")
            self._content_length = length
        elif value.lower().rstrip().endswith(b"chunked"):  # transfer-encoding
            self._chunked = True
        headers.append((lower, value))

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self.max_body is not None and self._body_bytes > self.max_body:
            raise RemoteProtocolError(f"body larger than {self.max_body} bytes", 413)
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._in_message = False
        self._events.append(END_OF_MESSAGE)

    # -- shared driving code --
    def _feed(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, data: bytes) -> None:
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RemoteProtocolError):
                raise cause from None
            raise RemoteProtocolError(f"malformed HTTP: {cause or exc}") from None
        except httptools.HttpParserError as exc:
            raise RemoteProtocolError(f"malformed HTTP: {_parser_message(exc)}") from None

    def next_event(self) -> Event | _NeedData:
        if self._events:
            return self._events.popleft()
        if self._closed:
            return CONNECTION_CLOSED
        return NEED_DATA


def _parser_message(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.removeprefix("HPE_").replace("_", " ").lower() if text.startswith("HPE_") else text


class ServerConnection(_Connection):
    """The server side of one connection: requests in.

    ``max_body`` bounds each request body (413 above it); ``None`` means unbounded (a proxy that streams).
    """

    def __init__(self, max_body: int | None = 1024 * 1024) -> None:
        super().__init__(max_body)
        self._parser = httptools.HttpRequestParser(self)
        self._url_bytes = 0
        self.upgraded = False

    def on_message_begin(self) -> None:
        # _Connection.on_message_begin written out (a call per message less on the hot path).
        self._in_message = True
        self._headers = []
        self._header_bytes = 0
        self._body_bytes = 0
        self._content_length = None
        self._chunked = False
        self._url = b""
        self._url_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_TARGET_BYTES:
            raise RemoteProtocolError("request target too long", 414)
        self._url += url

    def on_headers_complete(self) -> None:
        parser = self._parser
        if self.max_body is not None and (self._content_length or 0) > self.max_body:
            raise RemoteProtocolError(f"body larger than {self.max_body} bytes", 413)
        self._events.append(
            Request(
                method=parser.get_method(),
                target=self._url,
                headers=tuple(self._headers),
                http_version=parser.get_http_version(),
                keep_alive=parser.should_keep_alive() and not parser.should_upgrade(),
                content_length=self._content_length,
                chunked=self._chunked,
            )
        )

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            if self._in_message:
                raise RemoteProtocolError("connection closed in the middle of a request")
            self._closed = True
            return
        if self.upgraded:
            return  # bytes after an upgrade belong to another protocol, which sesh does not speak
        try:
            self._feed(self._parser, data)
        except httptools.HttpParserUpgrade:
            # llhttp stops at an Upgrade/CONNECT request; it was answered as plain HTTP and the
            # connection closes after it (keep_alive is False on that request).
            self.upgraded = True


class ClientConnection(_Connection):
    """The client side of one connection: responses in. Call :meth:`expect_response` before each
    request so a response to HEAD is known to have no body."""

    def __init__(self, max_body: int | None = None) -> None:
        super().__init__(max_body)
        self._parser = httptools.HttpResponseParser(self)
        self._pending_heads: deque[bool] = deque()
        self._head_only = False
        self._head_buffer = b""
        self._until_close = False
        self._reason = b""
        self._final = True  # the last response head was a final (non-1xx) one
        self.switched = False  # a 101 arrived: the rest of the connection is another protocol's
        self.trailing_data = b""  # after a 101: the bytes that followed its head

    def expect_response(self, *, to_head: bool = False) -> None:
        self._pending_heads.append(to_head)

    def on_message_begin(self) -> None:
        # _Connection.on_message_begin written out (a call per message less on the hot path).
        self._in_message = True
        self._headers = []
        self._header_bytes = 0
        self._body_bytes = 0
        self._content_length = None
        self._chunked = False
        self._until_close = False
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        # llhttp may hand the reason phrase over in pieces (one per read): join them, within a bound.
        self._reason += status
        if len(self._reason) > MAX_HEADER_LINE_BYTES:
            raise RemoteProtocolError("response reason phrase too long", 502)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            self._interim(status)
            return
        self._final = True
        no_body = self._head_only or status in (204, 304)
        self._until_close = not no_body and self._content_length is None and not self._chunked
        self._events.append(
            Response(
                status=status,
                reason=self._reason,
                headers=tuple(self._headers),
                http_version=parser.get_http_version(),
                keep_alive=parser.should_keep_alive() and not self._until_close,
                content_length=self._content_length,
                chunked=self._chunked,
            )
        )

    def _interim(self, status: int) -> None:
        self._final = False
        if status == 101:
            # RFC 9110 sections 7.8 and 15.2.2: a 101 names the protocol switched to in Upgrade, and
            # lists "upgrade" in Connection. Without them the bytes that follow are nobody's to read.
            headers = tuple(self._headers)
            connection = b",".join(v for k, v in headers if k == b"connection").lower()
            if header_value(headers, b"upgrade") is None or b"upgrade" not in connection:
                raise RemoteProtocolError("101 Switching Protocols without Upgrade and Connection: upgrade", 502)
            self.switched = True
        self._events.append(InformationalResponse(status, self._reason, tuple(self._headers)))

    def on_message_complete(self) -> None:
        self._in_message = False
        if not self._final:
            # An interim head ends here without an EndOfMessage: the final response is still to come
            # (or, after a 101, the other protocol).
            if self.switched and self._pending_heads:
                self._pending_heads.popleft()
            return
        self._events.append(END_OF_MESSAGE)
        if self._pending_heads:
            self._pending_heads.popleft()

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means the server closed the connection.

        Anything malformed raises :class:`RemoteProtocolError` with status 502: it is the server's fault.
        Not to be called once :attr:`switched` is set.
        """
        if self.switched:
            raise RuntimeError("the connection switched protocols: its bytes are not HTTP")
        try:
            if data and not (self._pending_heads and self._pending_heads[0] and not self._in_message):
                self._feed(self._parser, data)  # the common case of _receive, one call less
            else:
                self._receive(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp pauses after a 101's head; the offset says where the other protocol's bytes begin.
            self.trailing_data = data[_upgrade_offset(exc, data) :]
        except RemoteProtocolError as exc:
            if exc.status == 502:
                raise
            raise RemoteProtocolError(f"bad response from upstream: {exc}", 502) from None

    def _receive(self, data: bytes) -> None:
        if not data:
            self._receive_eof()
            return
        if self._pending_heads and self._pending_heads[0] and not self._in_message:
            self._receive_head_only(data)
            return
        try:
            self._feed(self._parser, data)
        except httptools.HttpParserUpgrade as exc:
            self.trailing_data = data[_upgrade_offset(exc, data) :]

    def _receive_eof(self) -> None:
        if self._in_message and self._until_close:
            self.on_message_complete()
        elif self._in_message or self._head_buffer:
            raise RemoteProtocolError("connection closed in the middle of a response", 502)
        self._closed = True

    def _receive_head_only(self, data: bytes) -> None:
        # llhttp cannot be told a response answers HEAD, so find the end of the head ourselves, parse
        # just the head with a fresh parser, and end the message there.
        self._head_buffer += data
        end = self._head_buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head_buffer) > MAX_HEADER_BYTES:
                raise RemoteProtocolError("response header too large", 502)
            return
        head, rest = self._head_buffer[: end + 4], self._head_buffer[end + 4 :]
        self._head_buffer = b""
        self._head_only = True
        parser = httptools.HttpResponseParser(self)
        self._parser = parser
        try:
            self._feed(parser, head)
        except httptools.HttpParserUpgrade:
            self.trailing_data = rest  # a 101: what follows its head is the other protocol's
            return
        finally:
            self._head_only = False
        self._parser = httptools.HttpResponseParser(self)
        if self._in_message:
            self.on_message_complete()
        # (after an interim 1xx the final response to the HEAD is still to come, in ``rest`` or later)
        if rest:
            self._receive(rest)


def _upgrade_offset(exc: httptools.HttpParserUpgrade, data: bytes) -> int:
    offset = exc.args[0] if exc.args else None
    return offset if isinstance(offset, int) and 0 <= offset <= len(data) else len(data)


# -- writing ---------------------------------------------------------------------------------------


_REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}
# The status lines sent most, built once (the rest are formatted per response).
_STATUS_LINES: Final = {status: b"HTTP/1.1 %d %s\r\n" % (status, reason) for status, reason in _REASONS.items()}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\r\n``, as :func:`encode_response_head` writes it."""
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def encode_response_head(status: int, headers: list[tuple[bytes, bytes]], reason: bytes | None = None) -> bytes:
    if reason is None:
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    else:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return b"".join([line, *[b"%s: %s\r\n" % (name, value) for name, value in headers], b"\r\n"])


def encode_request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    line = b"%s %s HTTP/1.1\r\n" % (method, target)
    return b"".join([line, *[b"%s: %s\r\n" % (name, value) for name, value in headers], b"\r\n"])


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE_RESPONSE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(status: int, message: str, *, close: bool = True) -> bytes:
    """A small plain-text error response, for answering bad input."""
    body = f"{status} {reason_phrase(status).decode()}: {message}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return encode_response_head(status, headers) + body
