"""A small keep-alive HTTP/1.1 client over the sans-IO codec, for ``sesh drill`` and ``sesh top``.

One :class:`Connection` per simulated browser (or per polled target): requests are sequential, the
connection is reopened after any failure, and the caller owns the timeout (``trio.fail_after``).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from sesh.protocol.http import (
    NEED_DATA,
    ClientConnection,
    Data,
    EndOfMessage,
    RemoteProtocolError,
    Response,
    encode_request_head,
)

# The demo page's JSON and every status document are a few KiB; a manager page of many members a few
# hundred. Anything larger is not what these tools read.
MAX_BODY = 4 * 1024 * 1024


class HTTPFailure(Exception):
    """A request got no complete answer; ``kind`` says how (refused, closed, reset, protocol)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    keep_alive: bool

    def headers_named(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/path`` -> (host, port, path); ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected an http://host:port/ URL, got {url!r}")
    return parts.hostname, parts.port or 80, parts.path or "/"


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._stream: trio.SocketStream | None = None
        self._codec = ClientConnection()

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> Reply:
        if self._stream is None:
            try:
                self._stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                raise HTTPFailure("connect", reason(exc)) from None
            self._codec = ClientConnection()
        stream = self._stream
        head = [(b"host", f"{self.host}:{self.port}".encode())]
        head += [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]
        if body or method == "POST":
            head.append((b"content-length", str(len(body)).encode()))
        try:
            await stream.send_all(encode_request_head(method.encode(), target.encode(), head) + body)
            reply = await self._read(stream, method == "HEAD")
        except HTTPFailure:
            await self.close()
            raise
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self.close()
            raise HTTPFailure("reset", reason(exc)) from None
        except BaseException:
            await self.close()
            raise
        if not reply.keep_alive:
            await self.close()
        return reply

    async def _read(self, stream: trio.SocketStream, head_only: bool) -> Reply:
        codec = self._codec
        codec.expect_response(to_head=head_only)
        response: Response | None = None
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                event = codec.next_event()
            except RemoteProtocolError as exc:  # an answer we cannot parse
                raise HTTPFailure("protocol", str(exc)) from None
            if event is NEED_DATA:
                data = await stream.receive_some(65536)
                try:
                    codec.receive_data(data)
                except RemoteProtocolError as exc:
                    raise HTTPFailure("protocol", str(exc)) from None
                if not data and response is None:
                    raise HTTPFailure("closed", "connection closed before an answer")
                continue
            if isinstance(event, Response):
                if event.status >= 200:
                    response = event
            elif isinstance(event, Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise HTTPFailure("protocol", f"answer larger than {MAX_BODY} bytes")
                parts.append(event.data)
            elif isinstance(event, EndOfMessage):
                if response is not None:
                    return Reply(response.status, tuple(response.headers), b"".join(parts), response.keep_alive)
            else:
                raise HTTPFailure("closed", "connection closed mid-answer")


def reason(exc: BaseException) -> str:
    # trio.open_tcp_stream wraps the per-address errors in one OSError; the cause says what happened.
    for _ in range(4):
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif isinstance(exc, OSError) and not isinstance(exc, ConnectionRefusedError) and exc.__cause__:
            exc = exc.__cause__
    if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        return "refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


async def get(url: str, timeout: float, headers: list[tuple[str, str]] | None = None) -> Reply:  # noqa: ASYNC109 a one-shot GET's whole deadline, applied inside with fail_after for every caller
    """One GET on a fresh connection (``sesh top``'s polls)."""
    host, port, path = split_url(url)
    conn = Connection(host, port)
    try:
        with trio.fail_after(timeout):
            return await conn.request("GET", path, headers or [])
    finally:
        await conn.close()
