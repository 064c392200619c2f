"""HTTP hardening shared by node and balancer (issue 8 part 2), over real loopback sockets against real
``python sesh.py`` processes (with a small open-file limit where descriptors are the point) and
in-process servers: endless heads, slow heads, the connection cap, EMFILE, HTTP/1.0 framing.

Every load loop here is bounded in count and time; nothing asserts on speed.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial

import pytest
import trio

from sesh.net.http_server import HTTPExchange, HTTPServerCounters, serve_http_connection
from sesh.net.server import open_listeners, serve_connections
from sesh.net.shutdown import Shutdown
from tests.http_client import HTTPTestClient, get
from tests.procs import ROOT
from tests.test_balancer_proxy import start_backend, start_balancer
from tests.test_node_loopback import start_node

MiB = 1024 * 1024


class Process:
    """``[prlimit --nofile=N:N] python sesh.py ARGS``, its port and its stderr lines."""

    def __init__(self, *args: str, nofile: int | None = None) -> None:
        limit = ["prlimit", f"--nofile={nofile}:{nofile}"] if nofile else []
        self.proc = subprocess.Popen(
            [*limit, sys.executable, str(ROOT / "sesh.py"), *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        ready = threading.Event()
        self.port = 0

        def pump_stdout() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                match = re.search(r"listening on http://[^:]+:(\d+)/", line)
                if match and not self.port:
                    self.port = int(match.group(1))
                    ready.set()
            ready.set()

        def pump_stderr() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line.rstrip("\n"))

        self._pumps = [threading.Thread(target=pump, daemon=True) for pump in (pump_stdout, pump_stderr)]
        for pump in self._pumps:
            pump.start()
        if not ready.wait(20) or not self.port:
            self.stop()
            raise RuntimeError(f"sesh {' '.join(args)} did not start: {self.stderr}")

    def rss_mb(self) -> float:
        # The sesh process itself (prlimit execs it, so the pid is the same).
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pump in self._pumps:  # they end at EOF, once the process is gone
            pump.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def node_process() -> Iterator[Process]:
    proc = Process("node", "--port", "0")
    yield proc
    proc.stop()


def status_of(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(match.group(1)) if match else 0


async def endless_header(port: int, budget: int) -> bytes:
    """Send a request head whose one header never ends, up to ``budget`` bytes, reading as it goes;
    what the server answered (b"" if nothing)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    async with stream:
        async def send() -> None:
            try:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
                piece = b"a" * 65536
                for _ in range(budget // len(piece)):
                    await stream.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server answered and closed

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            with trio.move_on_after(20), contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(65536):
                    answer += chunk
                    if b"\r\n\r\n" in answer:
                        break
            nursery.cancel_scope.cancel()
    return answer


# -- item 3: endless header ----------------------------------------------------------------------------


async def test_endless_header_into_a_node_is_431_and_costs_no_memory(node_process: Process) -> None:
    before = node_process.rss_mb()
    answers: list[bytes] = []

    async def attack() -> None:
        answers.append(await endless_header(node_process.port, 16 * MiB))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(attack)
        reply = await get(node_process.port, "/")  # a normal client meanwhile
    assert reply.status == 200
    assert [status_of(a) for a in answers] == [431] * 4, [a[:60] for a in answers]
    # Before the limit counted received bytes, 4 x 16 MiB were buffered (RSS up by far more than this).
    assert node_process.rss_mb() - before < 24


async def test_endless_header_into_the_balancer_is_431(node_process: Process) -> None:
    balancer = Process("balancer", "--port", "0", "--member", f"http://127.0.0.1:{node_process.port}")
    try:
        before = balancer.rss_mb()
        answers = []
        async with trio.open_nursery() as nursery:

            async def attack() -> None:
                answers.append(await endless_header(balancer.port, 16 * MiB))

            for _ in range(4):
                nursery.start_soon(attack)
        assert [status_of(a) for a in answers] == [431] * 4
        assert balancer.rss_mb() - before < 24
        assert (await get(balancer.port, "/")).status == 200
    finally:
        balancer.stop()


async def test_member_with_an_endless_response_head_gets_502(nursery: trio.Nursery) -> None:
    listeners = await open_listeners("127.0.0.1", 0)
    member_port = listeners[0].socket.getsockname()[1]
    sent = [0]

    async def endless_member(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        piece = b"m" * 65536
        with trio.move_on_after(20):
            for _ in range(16 * MiB // len(piece)):  # bounded: 16 MiB, then silence
                await stream.send_all(piece)
                sent[0] += len(piece)

    nursery.start_soon(partial(serve_connections, listeners, endless_member, Shutdown()))
    port = await start_balancer(nursery, f"http://127.0.0.1:{member_port} timeout=30")
    reply = await get(port, "/")
    assert reply.status == 502, reply.body
    assert reply.body == b"502 Bad Gateway\n"  # the why (a head over the limit) is in the log only
    assert sent[0] < 4 * MiB  # the balancer stopped reading long before the member's 16 MiB


# -- item 4: slow heads, the connection cap, EMFILE -----------------------------------------------------


async def slow_client(port: int, answers: list[bytes], seconds: float) -> None:
    """A head sent one byte every 0.2 s for at most ``seconds``; what came back."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        answers.append(b"connect failed")
        return
    answer = b""
    async with stream:
        with trio.move_on_after(seconds):
            try:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                async with trio.open_nursery() as nursery:

                    async def drip() -> None:
                        try:
                            while True:
                                await stream.send_all(b"s")
                                await trio.sleep(0.2)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass  # the server answered and closed: the reader sees it

                    nursery.start_soon(drip)
                    with contextlib.suppress(trio.BrokenResourceError):  # a reset after the answer
                        while chunk := await stream.receive_some(4096):
                            answer += chunk
                    nursery.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
    answers.append(answer)


async def test_slowloris_against_a_node_with_a_cap_and_a_head_deadline() -> None:
    # 60 slow clients against a node allowed 64 descriptors: without a cap they would take them all.
    node = Process("node", "--port", "0", "--max-connections", "16", "--request-head-timeout", "1",
                   nofile=64)
    try:
        answers: list[bytes] = []
        async with trio.open_nursery() as nursery:
            for _ in range(60):
                nursery.start_soon(slow_client, node.port, answers, 8.0)
            await trio.sleep(0.5)
            served = None
            for _ in range(40):  # a normal client, retrying while it is refused
                try:
                    reply = await get(node.port, "/")
                except (OSError, trio.BrokenResourceError, AssertionError):
                    await trio.sleep(0.2)
                    continue
                if reply.status == 200:
                    served = reply
                    break
                assert reply.status == 503
                await trio.sleep(0.2)
        statuses = sorted(status_of(a) for a in answers)
        assert served is not None, (statuses, node.stderr[-5:])
        assert statuses.count(408) >= 8, statuses  # admitted, then timed out on the head deadline
        assert statuses.count(503) >= 20, statuses  # over the cap: answered and closed at once
        assert any("connection limit reached" in line for line in node.stderr), node.stderr
    finally:
        node.stop()


async def test_head_deadline_applies_to_each_keep_alive_request(nursery: trio.Nursery) -> None:
    node = await start_node(nursery, request_head_timeout=0.5)
    client = await HTTPTestClient.connect(node.port)
    assert (await client.request("GET", "/")).status == 200
    answer = b""
    await client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    with trio.move_on_after(6):
        for _ in range(60):  # a byte every 0.1 s: never idle for the read timeout
            await client.send_raw(b"s")
            with trio.move_on_after(0.1):
                answer += await client.stream.receive_some(4096)
            if answer:
                break
    await client.aclose()
    assert status_of(answer) == 408, answer
    node.shutdown.request()


async def test_emfile_is_logged_and_open_connections_keep_being_served() -> None:
    node = Process("node", "--port", "0", "--max-connections", "1000", nofile=40)
    try:
        keeper = await HTTPTestClient.connect(node.port)
        assert (await keeper.request("GET", "/")).status == 200
        idle: list[trio.SocketStream] = []
        for _ in range(60):  # more than the node has descriptors for
            idle.append(await trio.open_tcp_stream("127.0.0.1", node.port))
        await trio.sleep(0.5)
        assert (await keeper.request("GET", "/")).status == 200
        assert any("accept failed" in line and "EMFILE" in line for line in node.stderr), node.stderr
        for stream in idle:
            await stream.aclose()
        await keeper.aclose()
        with trio.fail_after(10):
            while True:  # accepting again once descriptors are free (the backlog drains first)
                try:
                    if (await get(node.port, "/")).status == 200:
                        break
                except (OSError, trio.BrokenResourceError):
                    await trio.sleep(0.2)
    finally:
        node.stop()


# -- item 11: HTTP/1.0 framing -------------------------------------------------------------------------


async def read_all(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            return out
        out, body = out + rest[:size], rest[size + 2 :]


def split_response(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.lower(), body


async def test_streamed_node_response_to_http10_is_close_delimited(nursery: trio.Nursery) -> None:
    node = await start_node(nursery, app="tests.apps.starlette_counter:app")
    head, body = split_response(await read_all(node.port, b"GET /stream HTTP/1.0\r\n\r\n"))
    assert head.startswith(b"http/1.1 200 ")
    assert b"transfer-encoding" not in head and b"content-length" not in head
    assert b"connection: close" in head
    raw_11 = await read_all(node.port, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head_11, body_11 = split_response(raw_11)
    assert b"transfer-encoding: chunked" in head_11
    assert body_11.endswith(b"\r\n0\r\n\r\n") and body and body in dechunk(body_11)
    node.shutdown.request()


async def stream_pieces(backend: object, exchange: HTTPExchange) -> None:
    await exchange.start_response(200, [(b"content-type", b"text/plain")])
    for i in range(3):
        await exchange.send_data(b"piece %d\n" % i)
    await exchange.end_response()


async def test_http10_framing_in_the_shared_server_and_through_the_balancer(nursery: trio.Nursery) -> None:
    backend = await start_backend(nursery, "a", stream_pieces)  # type: ignore[arg-type]
    balancer = await start_balancer(nursery, backend.url)
    for port in (backend.port, balancer):
        head, body = split_response(await read_all(port, b"GET / HTTP/1.0\r\n\r\n"))
        assert b"transfer-encoding" not in head and b"connection: close" in head, head
        assert body == b"piece 0\npiece 1\npiece 2\n"
        head, body = split_response(await read_all(port, b"HEAD / HTTP/1.0\r\n\r\n"))
        assert body == b"" and b"transfer-encoding" not in head
        head, body = split_response(
            await read_all(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        )
        # Chunked from the server itself; the balancer may have had it whole, and sends a length.
        assert (b"transfer-encoding: chunked" in head and body.endswith(b"0\r\n\r\n")) or (
            port == balancer and b"content-length: 24" in head
        )


async def test_keep_alive_http10_client_with_known_length_stays_open(nursery: trio.Nursery) -> None:
    listeners = await open_listeners("127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]

    async def handler(exchange: HTTPExchange) -> None:
        await exchange.respond(200, [], b"whole")

    async def connection(stream: trio.SocketStream) -> None:
        await serve_http_connection(stream, handler, Shutdown(), max_body=None, counters=HTTPServerCounters())

    nursery.start_soon(partial(serve_connections, listeners, connection, Shutdown()))
    client = await HTTPTestClient.connect(port)
    await client.send_raw(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    reply = await client.read_reply()
    assert reply.body == b"whole" and reply.header(b"connection") == b"keep-alive"
    await client.send_raw(b"GET / HTTP/1.0\r\n\r\n")
    reply = await client.read_reply()
    assert reply.header(b"connection") == b"close"
    await client.aclose()
