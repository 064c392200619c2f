"""HTTP/1.1 over httptools (llhttp), sans-IO: bytes in, events out; events in, bytes out.

Theory of operation. llhttp is a callback parser; each connection object here is the callback
"protocol" and turns the callbacks into frozen events queued in order (``Request``/``Response``, then
``Data`` pieces, then ``EndOfMessage``). The caller feeds bytes with :meth:`receive_data` only when
:meth:`next_event` says :data:`NEED_DATA`, so the queue never holds more than one read's worth of events
(back-pressure stays with the socket). Pipelined requests simply queue one after the other.

Limits are enforced inside the callbacks, because llhttp itself has none: a request line or header
block that grows past its limit raises :class:`RemoteProtocolError` carrying the status to answer
(414, 431, 413, 400), whoever fed the bytes. A header that never ends never reaches a callback
(httptools buffers its pieces until the next one starts), so the head is also bounded on the bytes
received: a feed that starts and ends inside one head lies wholly in it, and those bytes are counted
against :data:`MAX_HEAD_BYTES` (and, when no header completed meanwhile, against the one-field limit);
the peer is answered once over the limit, whether the head ever ends or not. Both sides use it: a
member's endless response head is the same 502 as any other bad response.

The request line is checked as httpd checks it (one space between its three parts, no ``#fragment``),
as are the Host rules of RFC 9112 §3.2 (exactly one, required in HTTP/1.1; an absolute-form target's
authority replaces it). llhttp skips repeated spaces, so the server side finds each request line in
the bytes itself: it feeds the parser one message at a time when a read holds more than one (the
head alone, then a body of known length), so every message starts a feed.

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
# The bytes of one head as received (request or status line, header lines, blank line): what the
# limits above allow, plus room for the separators they do not count.
MAX_HEAD_BYTES: Final = MAX_TARGET_BYTES + MAX_HEADER_BYTES + 4 * MAX_HEADER_COUNT + 1024
# A header line's bytes beyond what on_header counts (": " and CRLF).
_FIELD_SEPARATORS: Final = 4


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
_FRAMING_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding", b"host"})


class _Connection:
    """What request and response parsing share: header collection, limits, event queue."""

    def __init__(self, max_body: int | None) -> None:
        self.max_body = max_body
        self._events: deque[Event] = deque()
        self._closed = False
        self._reset_message()

    def _reset_message(self) -> None:
        # Bytes of a message that has not ended have arrived (its head may still be arriving); read
        # by the serving loop, written only here.
        self.in_message = False
        self._in_head = False  # from the message's first byte to the end of its head
        # Bytes of feeds that started and ended inside the current head, and of those since the last
        # header or target piece completed; zeroed when a counted head ends (only counting sets them).
        self._head_fed = 0
        self._field_fed = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body_bytes = 0
        self._content_length: int | None = None
        self._chunked = False
        self._hosts = 0
        self._host = b""

    # -- llhttp callbacks (names fixed by httptools) --
    def on_message_begin(self) -> None:
        self._reset_message()
        self.in_message = True

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
        if lower == b"host":
            self._hosts += 1
            self._host = value
        elif lower == b"content-length":
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
        self.in_message = False
        self._events.append(END_OF_MESSAGE)

    # -- shared driving code --
    def _feed(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, data: bytes) -> None:
        if self._in_head:  # a head that began in an earlier feed goes on: count what it receives
            self._feed_counted(parser, data)
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            raise _callback_error(exc) from None
        except httptools.HttpParserError as exc:
            raise RemoteProtocolError(f"malformed HTTP: {_parser_message(exc)}") from None

    def _feed_counted(
        self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, data: bytes
    ) -> None:
        """:meth:`_feed` for a feed that starts inside a head. If that head is still not complete
        after it, all its bytes are head bytes (a lower bound on the head's size, so no head within
        the limits is refused); if nothing completed during it either, they all belong to the one
        header (or target, or reason) still arriving."""
        headers = self._headers  # a new list once another message begins
        progress = self._progress()
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            raise _callback_error(exc) from None
        except httptools.HttpParserError as exc:
            raise RemoteProtocolError(f"malformed HTTP: {_parser_message(exc)}") from None
        if not (self._in_head and self._headers is headers):
            self._head_fed = self._field_fed = 0
            return
        self._head_fed += len(data)
        if self._progress() == progress:
            self._field_fed += len(data)
            if self._field_fed > MAX_HEADER_LINE_BYTES + _FIELD_SEPARATORS:
                raise RemoteProtocolError("header field too large", 431)
        else:
            self._field_fed = 0
        if self._head_fed > MAX_HEAD_BYTES:
            raise RemoteProtocolError("header fields too large", 431)

    def _progress(self) -> int:
        """Grows whenever a piece of a head completes (a header; the server adds target pieces)."""
        return len(self._headers)

    def next_event(self) -> Event | _NeedData:
        if self._events:
            return self._events.popleft()
        if self._closed:
            return CONNECTION_CLOSED
        return NEED_DATA


def _callback_error(exc: httptools.HttpParserCallbackError) -> RemoteProtocolError:
    cause = exc.__context__
    if isinstance(cause, RemoteProtocolError):
        return cause
    return RemoteProtocolError(f"malformed HTTP: {cause or exc}")


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
        self._url = b""
        self._url_bytes = 0
        # The start of a request line whose end has not arrived yet (None: not looking for one).
        self._line: bytes | None = None
        self._tail = b""  # the last bytes fed inside a head, to find a head end split between feeds
        self._good_host = b"\0"  # the last Host value found good (never equal to a value at first)
        self.upgraded = False

    def _progress(self) -> int:
        return len(self._headers) + self._url_bytes

    def on_message_begin(self) -> None:
        # _Connection.on_message_begin written out (a call per message less on the hot path).
        self.in_message = True
        self._in_head = True
        self._headers = []
        self._header_bytes = 0
        self._body_bytes = 0
        self._content_length = None
        self._chunked = False
        self._hosts = 0
        self._url = b""
        self._url_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > MAX_TARGET_BYTES:
            raise RemoteProtocolError("request target too long", 414)
        self._url += url

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        if self.max_body is not None and (self._content_length or 0) > self.max_body:
            raise RemoteProtocolError(f"body larger than {self.max_body} bytes", 413)
        url = self._url
        headers = self._headers
        version = parser.get_http_version()
        method = parser.get_method()
        if self._hosts != 1 or url[:1] != b"/" or b"#" in url:
            url, headers = self._check_target_and_host(method, url, version, headers)
        elif self._host != self._good_host:  # a client sends the same Host every time: check it once
            self._check_target_and_host(method, url, version, headers)
            self._good_host = self._host
        self._events.append(
            Request(
                method=method,
                target=url,
                headers=tuple(headers),
                http_version=version,
                keep_alive=parser.should_keep_alive() and not parser.should_upgrade(),
                content_length=self._content_length,
                chunked=self._chunked,
            )
        )

    def _check_target_and_host(
        self, method: bytes, url: bytes, version: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """httpd's checks (RFC 9112 §3.2) for what the hot path did not rule out; returns the target
        and the headers, an absolute-form target made origin-form and its authority put in Host."""
        if b"#" in url:
            raise RemoteProtocolError("a fragment (#) in the request target")
        if self._hosts > 1:
            raise RemoteProtocolError("more than one Host header")
        if self._hosts == 0 and version != "1.0":
            raise RemoteProtocolError("HTTP/1.1 request without a Host header")
        host = self._host.rstrip(b" \t")  # llhttp keeps trailing whitespace in a value
        if self._hosts and (not host or _bad_host(host)):
            raise RemoteProtocolError("bad Host header")
        if url[:1] == b"/":
            return url, headers
        if url == b"*":
            if method != b"OPTIONS":
                raise RemoteProtocolError("* is a target only for OPTIONS")
            return url, headers
        if method == b"CONNECT":
            return url, headers  # authority-form; the connection closes after the answer (upgrade)
        scheme, sep, rest = url.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise RemoteProtocolError("the request target must be a path or an http URL")
        end = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
        authority = rest[:end]
        if not authority or b"@" in authority or _bad_host(authority):
            raise RemoteProtocolError("bad authority in the request target")
        # The target's authority wins over Host (RFC 9112 §3.2.2): whoever reads Host sees it, and
        # the target is what an origin-form request for the same resource would say.
        path = rest[end:]
        target = path if path[:1] == b"/" else b"/" + path
        return target, [(name, authority if name == b"host" else value) for name, value in headers]

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            if self.in_message:
                raise RemoteProtocolError("connection closed in the middle of a request")
            self._closed = True
            return
        if self.upgraded:
            return  # bytes after an upgrade belong to another protocol, which sesh does not speak
        try:
            if not self.in_message:
                # The common case: one whole head, nothing after it (a body comes in later feeds),
                # and a request line with its two spaces.
                end = data.find(b"\r\n\r\n")
                if 0 < end == len(data) - 4 and data.count(b" ", 0, data.find(b"\r\n")) == 2:
                    self._feed(self._parser, data)
                    return
            while data:
                size = self._message_part(data)
                if size >= len(data):
                    self._feed(self._parser, data)
                    if self._in_head:
                        self._tail = (self._tail + data)[-3:] if len(data) < 3 else data[-3:]
                    return
                self._feed(self._parser, data[:size])
                data = data[size:]
        except httptools.HttpParserUpgrade:
            # llhttp stops at an Upgrade/CONNECT request; it was answered as plain HTTP and the
            # connection closes after it (keep_alive is False on that request).
            self.upgraded = True

    def _message_part(self, data: bytes) -> int:
        """How many leading bytes of ``data`` to feed at once: up to the end of the current head, or of
        a body, so that the message after it starts a feed of its own and its request line is found
        at the start (llhttp does not say where in a feed a message began). All of ``data`` when no
        end is in it."""
        if not self.in_message:
            start = 0
            if data[0] in _CRLF:  # llhttp skips empty lines before a request; so does the line check
                start = len(data) - len(data.lstrip(b"\r\n"))
                if start == len(data):
                    return start
            self._check_request_line(data, start)
            end = data.find(b"\r\n\r\n", start)
            return len(data) if end < 0 else end + 4
        if self._in_head:
            if self._line is not None:
                self._check_request_line(data, 0)
            joined = self._tail + data[:3]
            end = joined.find(b"\r\n\r\n")
            if end >= 0:
                return end + 4 - len(self._tail)
            end = data.find(b"\r\n\r\n")
            return len(data) if end < 0 else end + 4
        if self._chunked:
            # Cut after what may be the last chunk: a cut inside chunk data is harmless (the parser
            # goes on with the next feed), and one at the end lets the next message start a feed.
            # (A body with trailers is fed whole: a request pipelined behind it goes unchecked.)
            end = data.find(b"0\r\n\r\n")
            return len(data) if end < 0 else end + 5
        if self._content_length is not None:
            return self._content_length - self._body_bytes
        return len(data)

    def _check_request_line(self, data: bytes, start: int) -> None:
        """Exactly one space between method, target and version, as httpd requires (llhttp allows
        runs of them). ``data[start:]`` starts a request line, or continues ``self._line``."""
        if self._line is not None:
            data = self._line + data[: MAX_TARGET_BYTES + 64]
            start = 0
        end = data.find(b"\r\n", start)
        if end < 0:
            # Not complete yet; what is kept is bounded (past it, the target limit answers 414).
            self._line = data[start : start + MAX_TARGET_BYTES + 64]
            return
        self._line = None
        if data.count(b" ", start, end) != 2:
            raise RemoteProtocolError("malformed request line (one space between its parts)")


_CRLF: Final = b"\r\n"
# Bytes that cannot be in a Host value or an authority: what RFC 3986's reg-name, IP literal and port
# leave out (space, controls, / ? # @ \\ " < > ^ ` { | }, and the non-ASCII half).
_HOST_BYTES: Final = bytes(
    c for c in range(256) if chr(c).isascii() and (chr(c).isalnum() or chr(c) in "-._~!$&'()*+,;=:[]%")
)


def _bad_host(value: bytes) -> bool:
    return bool(value.translate(None, _HOST_BYTES))


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
        self.in_message = True
        self._in_head = True
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
        self._in_head = False
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
        self.in_message = False
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
            if data and not (self._pending_heads and self._pending_heads[0] and not self.in_message):
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
        if self._pending_heads and self._pending_heads[0] and not self.in_message:
            self._receive_head_only(data)
            return
        try:
            self._feed(self._parser, data)
        except httptools.HttpParserUpgrade as exc:
            self.trailing_data = data[_upgrade_offset(exc, data) :]

    def _receive_eof(self) -> None:
        if self.in_message and self._until_close:
            self.on_message_complete()
        elif self.in_message or self._head_buffer:
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
        if self.in_message:
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


@dataclass(frozen=True, slots=True)
class Framing:
    """How one response's body is delimited (RFC 9112 §6.3), decided by :func:`response_framing`."""

    body: bool  # body bytes follow the head (not for HEAD, 1xx, 204, 304)
    send_length: bool  # a Content-Length the sender knows goes in the head (not for 1xx, 204, 304)
    chunked: bool  # the body goes with chunked transfer coding
    keep_alive: bool  # the connection may carry another request after this response
    connection: bytes | None  # the Connection header to send, if any
    lines: bytes  # the Transfer-Encoding and Connection header lines, encoded


def _framing(body: bool, send_length: bool, chunked: bool, keep_alive: bool, version_10: bool) -> Framing:
    connection = None if keep_alive and not version_10 else b"keep-alive" if keep_alive else b"close"
    lines = (b"transfer-encoding: chunked\r\n" if chunked else b"") + (
        b"connection: %s\r\n" % connection if connection else b""
    )
    return Framing(body, send_length, chunked, keep_alive, connection, lines)


# Every decision there is, built once: (kind, keep_alive, version_10) -> Framing; kind 0 no body,
# 1 HEAD (no body, the length a GET would have), 2 known length, 3 chunked, 4 until close.
_FRAMINGS: Final = {
    (kind, keep_alive, version_10): _framing(
        kind >= 2, kind in (1, 2), kind == 3, keep_alive and kind != 4, version_10
    )
    for kind in range(5)
    for keep_alive in (False, True)
    for version_10 in (False, True)
}


def response_framing(
    method: bytes, http_version: str, status: int, *, length_known: bool, keep_alive: bool
) -> Framing:
    """The one framing decision for a response, from the request it answers, as h11 makes it: no body
    for HEAD, 1xx, 204 and 304; a known length is sent as Content-Length; otherwise chunked for an
    HTTP/1.1 client and, for an HTTP/1.0 one (which cannot read chunks), the body ends when the
    connection closes. ``keep_alive``: the request allows another one after it."""
    version_10 = http_version == "1.0"
    if status < 200 or status == 204 or status == 304:
        kind = 0
    elif method == b"HEAD":
        kind = 1
    elif length_known:
        kind = 2
    else:
        kind = 4 if version_10 or http_version == "0.9" else 3
    return _FRAMINGS[kind, keep_alive, version_10]


# Methods whose request carries a Content-Length even when the body is empty (RFC 9110 §8.6).
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})


def request_framing(method: bytes, length: int | None) -> bytes:
    """The framing header line of a request sent upstream with a body of ``length`` bytes (``None``:
    it streams with no known length, so chunked; sesh sends requests as HTTP/1.1)."""
    if length is None:
        return b"transfer-encoding: chunked\r\n"
    if length or method in _BODY_METHODS:
        return b"content-length: %d\r\n" % length
    return b""


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
