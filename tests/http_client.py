"""A small real HTTP/1.1 client for tests: one trio TCP connection, keep-alive, parsed with the codec."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from sesh.protocol.http import (
    NEED_DATA,
    ClientConnection,
    Data,
    EndOfMessage,
    InformationalResponse,
    Response,
    encode_request_head,
)


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    interim: list[InformationalResponse] = field(default_factory=list)  # 1xx heads before the response

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def headers_named(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


class HTTPTestClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = ClientConnection()

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> HTTPTestClient:
        return cls(await trio.open_tcp_stream(host, port))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Reply:
        all_headers = [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in headers or []]
        if body or method in ("POST", "PUT"):
            all_headers.append((b"content-length", str(len(body)).encode()))
        await self.send_raw(encode_request_head(method.encode(), target.encode(), all_headers) + body)
        return await self.read_reply(head=method == "HEAD")

    async def read_reply(self, head: bool = False) -> Reply:
        self.conn.expect_response(to_head=head)
        response: Response | None = None
        interim: list[InformationalResponse] = []
        parts: list[bytes] = []
        with trio.fail_after(10):
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                    continue
                if isinstance(event, Response):
                    response = event
                elif isinstance(event, InformationalResponse):
                    interim.append(event)
                elif isinstance(event, Data):
                    parts.append(event.data)
                elif isinstance(event, EndOfMessage) and response is not None:
                    break
                elif not isinstance(event, EndOfMessage):
                    raise AssertionError(f"connection ended before a full response: {event}")
        return Reply(response.status, list(response.headers), b"".join(parts), response.keep_alive, interim)

    async def read_until_closed(self) -> bytes:
        data = []
        with trio.fail_after(10):
            while chunk := await self.stream.receive_some(65536):
                data.append(chunk)
        return b"".join(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def get(port: int, target: str = "/", headers: list[tuple[str, str]] | None = None) -> Reply:
    client = await HTTPTestClient.connect(port)
    try:
        return await client.request("GET", target, headers)
    finally:
        await client.aclose()
