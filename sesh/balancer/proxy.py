"""Forwarding one client exchange to members: choose, connect, stream both ways, fail over.

Theory of operation. :meth:`Proxy.handle` runs httpd's proxy_handler loop: choose a member
(:meth:`Balancer.choose`), forward the request over a pooled connection, and when the member refuses or
resets the connection before it answered, put it in error for ``retry`` seconds and choose again, up to
``maxattempts`` times. Only requests that can be sent again fail over: no body, or a small body read
whole before the first attempt. A large or chunked body streams to the member as it arrives, so once a
byte of it has left the client it is gone and a failure answers 502.

Each attempt is three steps, one method each: :meth:`Proxy._send` (the head, and a whole body with it;
a streamed body goes on in a task beside the other two), :meth:`Proxy._final_head` (interim 1xx
relayed on the way) and :meth:`Proxy._respond`. An :class:`_Attempt` carries what they share: the
member connection while it is held, and the bytes counted for the scoreboard.

The response streams back the same way: the head, then each piece as it arrives from the member, with
the member's Content-Length when it gave one, chunked otherwise. A small response that arrived in one
read is sent in one write. A member that sends garbage gets 502, one that stays silent longer than its
``timeout`` gets 504; once the response has started, a failure can only end the client's connection.
What went wrong (member URL, OS error) goes to the log; the client gets only the status and its
reason, as httpd's error pages say no more than "Bad Gateway".

Interim 1xx responses (100 Continue, 103 Early Hints) are relayed to HTTP/1.1 clients and dropped for
HTTP/1.0 ones. A 101 Switching Protocols is accepted only when the client asked for that protocol and
``--upgrade`` allows it (websocket by default): the exchange then becomes a tunnel that copies bytes
both ways until both sides have closed, either breaks, or nothing moved for the member's ``timeout``.
Any other 101 is a 502.

Sends are bounded too: a member that takes none of a request for its ``timeout``, or a client that
takes none of a response for ``--send-timeout`` (httpd's Timeout), ends the exchange, and the member
connection is closed, never pooled. A response that arrived whole frees its member connection before
it is written to the client, so a client that stops reading holds only its own connection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import trio

from sesh.balancer import rewrite
from sesh.balancer.balancer import Balancer, Choice
from sesh.balancer.members import Member
from sesh.config import BalancerConfig
from sesh.log import get_logger
from sesh.net.fdstream import WaitTimer
from sesh.net.http_client import ConnectionPool, UpstreamConnection
from sesh.net.http_server import HTTPExchange
from sesh.protocol.http import (
    LAST_CHUNK,
    NEED_DATA,
    ClientConnection,
    ConnectionClosed,
    Data,
    EndOfMessage,
    Headers,
    InformationalResponse,
    RemoteProtocolError,
    Request,
    Response,
    encode_chunk,
    header_value,
    reason_phrase,
    request_framing,
    status_line,
)

log = get_logger("proxy")

# A request body up to this size is read whole before the first attempt, so it can be sent again to
# another member on failover (and leaves with its head in one write). Larger bodies stream.
REPLAYABLE_BODY = 64 * 1024
# ProxyPassReverse URLs remembered per client Host value; bounded because the Host is the client's choice.
_OWN_URLS = 256

_FIRST_THEN_FRESH = (False, True)
# Interim (1xx) responses relayed per exchange: a member sending them without end is broken (502).
_MAX_INTERIM = 16
_TEXT = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]


class MemberUnavailable(Exception):
    """The member refused, reset or closed the connection before answering: fail over."""


class MemberTimeout(Exception):
    """The member did not answer within its timeout: 504."""


class ResponseAborted(Exception):
    """The exchange broke after the response started: only closing the client connection is left."""


class _Attempt:
    """One try at one member: its request, ready to send, and what the try holds and counts."""

    __slots__ = (
        "body", "body_done", "body_error", "body_sender", "chunked", "conn", "head", "pool", "received",
        "reusable", "sent",
    )

    def __init__(self, head: bytes, body: bytes | None, chunked: bool, pool: ConnectionPool) -> None:
        self.head = head
        self.body = body  # the whole body when replayable; None when it streams from the client
        self.chunked = chunked
        self.pool = pool
        # The member connection while the attempt holds it; whoever ends it (pooled or closed) clears it.
        self.conn: UpstreamConnection | None = None
        self.reusable = False  # for a connection kept past the response: may it be pooled?
        # Bytes to and from the member, counted on the scoreboard once, when the attempt ends (a
        # streamed body and a streamed response count as they go).
        self.sent = self.received = 0
        self.body_done = body is not None
        self.body_error: BaseException | None = None
        self.body_sender: trio.Nursery | None = None  # where a streamed body's task runs


class Proxy:
    def __init__(
        self,
        cfg: BalancerConfig,
        balancer: Balancer,
        *,
        server_name: bytes,
        own_port: int,
        clock: Callable[[], float] = time.monotonic,
        timer: WaitTimer | None = None,
    ) -> None:
        self.cfg = cfg
        self.balancer = balancer
        # ``timer`` (run by the server) times the waits for members' answers, cheaper than a cancel
        # scope per wait; without it each wait has its own.
        self.pools = [ConnectionPool(m.host, m.port, cfg.pool_size, timer) for m in balancer.members]
        self.mount = rewrite.normalize_mount(cfg.path)
        self.server_name = server_name
        self.own_port = own_port
        self.via = b"1.1 %s:%d (sesh)" % (server_name, own_port) if cfg.via else None
        self.member_urls = [m.url_bytes for m in balancer.members]
        self.upgrades = frozenset(cfg.upgrade.encode().split(b",")) - {b"none"}
        self._own_urls: dict[bytes | None, bytes] = {}
        # The clock is the system-wide monotonic one: error times are shared between worker processes.
        self.clock = clock

    def _client_headers(self, exchange: HTTPExchange, headers: Headers) -> tuple[bytes, bool]:
        """A member's response headers as the client gets them, encoded (rewrite.encode_client_headers),
        with ProxyPassReverse's replacement: the balancer as this client addressed it, and the mount."""
        host = header_value(exchange.request.headers, b"host")
        own_url = self._own_urls.get(host)
        if own_url is None:
            own_url = b"http://" + (host or b"%s:%d" % (self.cfg.host.encode(), self.own_port)) + self.mount
            if len(self._own_urls) < _OWN_URLS:
                self._own_urls[host] = own_url
        return rewrite.encode_client_headers(headers, member_urls=self.member_urls, own_url=own_url, via=self.via)

    def upgrade_offer(self, request: Request) -> frozenset[bytes]:
        """The protocols this client asked to switch to (Upgrade, with "upgrade" in Connection) that
        ``--upgrade`` allows, by lower-case name without version; empty when none. (RFC 9110 section
        7.8: an HTTP/1.0 request's Upgrade is ignored.)"""
        offer = request.header(b"upgrade")
        if offer is None or not self.upgrades or request.http_version == "1.0":
            return frozenset()
        if b"upgrade" not in rewrite.connection_tokens(request.headers):
            return frozenset()
        names = {token.strip().partition(b"/")[0].lower() for token in offer.split(b",")}
        return frozenset(names & self.upgrades)

    async def handle(self, exchange: HTTPExchange) -> None:
        request = exchange.request
        # (Origin-form, the usual, is what origin_form would give back: one call less.)
        target = request.target if request.target[:1] == b"/" else rewrite.origin_form(request.target)
        if target is None:
            await _reply(exchange, 400, "the request target must be a path or an http URL")
            return
        # Dot-segments are resolved before the mount is matched, as httpd does: "/pub/../admin" is
        # "/admin", which is not under "/pub", rather than "/public/../admin" at the member. (The test
        # is normalize_path's own, here to save a call for the paths it would leave alone.)
        if rewrite.needs_normalizing(target) is not None:
            try:
                target = rewrite.normalize_path(target)
            except rewrite.PathRefused as exc:
                await _reply(exchange, exc.status, str(exc))
                return
        path = rewrite.strip_mount(target, self.mount) if self.mount else target
        if path is None:
            await _reply(exchange, 404, "nothing is proxied at this path")
            return
        # Most requests have no body: skip the await (each coroutine costs on this path).
        body = b"" if not (request.chunked or request.content_length) else await self._replayable_body(exchange)
        attempts = 0
        while True:
            choice = self.balancer.choose(target, request.headers, self.clock())
            if choice.member is None:
                choice = await self._wait_for_member(choice, target, request)
            member = choice.member
            if member is None:
                log.warning("no member for a request", reason=choice.refusal, client=exchange.client[0])
                await _reply(exchange, 503)
                return
            try:
                await self._attempt(exchange, member, path, body)
                return
            except MemberUnavailable as exc:
                member.mark_error(self.clock())
                log.warning("member unavailable, in error", member=member.url, reason=str(exc), retry=member.retry)
                if body is None and (request.chunked or request.content_length):
                    log.warning("request failed while its body was streaming to the member", member=member.url)
                    await _reply(exchange, 502)
                    return
                if member.usable or attempts >= self.balancer.max_attempts:
                    log.warning("no member could take the request", last=member.url, attempts=attempts + 1)
                    await _reply(exchange, 503)
                    return
                attempts += 1
            except MemberTimeout as exc:
                log.warning("member did not answer in time", member=member.url, reason=str(exc))
                await _reply(exchange, 504)
                return
            except ResponseAborted:
                return

    async def _wait_for_member(self, choice: Choice, target: bytes, request: Request) -> Choice:
        """After a choice without a member: with ``--timeout`` wait for a member to become usable,
        polling in 100 steps as httpd does."""
        if self.cfg.timeout > 0 and not choice.final:
            step = self.cfg.timeout / 100
            for _ in range(100):
                await trio.sleep(step)
                choice = self.balancer.choose(target, request.headers, self.clock())
                if choice.member is not None:
                    break
        return choice

    async def _replayable_body(self, exchange: HTTPExchange) -> bytes | None:
        request = exchange.request
        if request.chunked or (request.content_length or 0) > REPLAYABLE_BODY:
            return None
        if not request.content_length:
            return b""
        return await exchange.read_body()

    def _prepare(self, exchange: HTTPExchange, member: Member, path: bytes, body: bytes | None) -> _Attempt:
        request = exchange.request
        # The head is written in one pass over the client's headers.
        lines = rewrite.encode_upstream_headers(
            request,
            host=member.host_header,
            client_ip=exchange.client[0].encode(),
            server_name=self.server_name,
            preserve_host=self.cfg.preserve_host,
            via=self.via,
        )
        # Upgrade and Connection are hop-by-hop, so encode_upstream_headers dropped them; an upgrade
        # request (never keep-alive, the codec sees to that) gets the protocols --upgrade allows back.
        if not request.keep_alive:
            offer = self.upgrade_offer(request)
            if offer:
                lines += b"upgrade: %s\r\nconnection: upgrade\r\n" % b", ".join(sorted(offer))
        # The body's length: whole, or streaming with the client's length, or chunked (None).
        length = len(body) if body is not None else None if request.chunked else request.content_length or 0
        framing = request_framing(request.method, length)
        head = b"%s %s%s HTTP/1.1\r\n%s%s\r\n" % (request.method, member.base_path, path, lines, framing)
        return _Attempt(head, body, length is None, self.pools[member.index])

    async def _attempt(self, exchange: HTTPExchange, member: Member, path: bytes, body: bytes | None) -> None:
        """One try at ``member``: send the request, wait for the final response head, respond
        (:meth:`_forward`). A connection still held at the end is pooled or closed here."""
        attempt = self._prepare(exchange, member, path, body)
        member.add_busy(1)
        try:
            if attempt.body is None:
                await self._beside_body(exchange, member, attempt)
            else:
                await self._forward(exchange, member, attempt)
        except BaseException:
            if attempt.conn is not None:
                attempt.conn.close()
            raise
        else:
            conn = attempt.conn
            if conn is not None:  # a tunnel's, or one a body was still streaming on at the response's end
                if attempt.reusable and attempt.body_done:
                    attempt.pool.release(conn)
                else:
                    conn.close()
        finally:
            member.end_exchange(attempt.sent, attempt.received)

    async def _forward(self, exchange: HTTPExchange, member: Member, attempt: _Attempt) -> None:
        """The three steps of an attempt. A pooled connection that the member closed meanwhile is
        retried once on a new one, when the request can be sent again."""
        pool = attempt.pool
        for fresh in _FIRST_THEN_FRESH:
            # An idle pooled connection is the common case: take it without awaiting _connect.
            conn = attempt.conn = pool.acquire_idle() or await self._connect(pool, member)
            try:
                await self._send(exchange, conn, member, attempt)
                response = await self._final_head(exchange, conn, member, attempt)
                break
            except MemberUnavailable:
                if fresh or not conn.reused or attempt.body is None:
                    raise
                attempt.conn = None
                conn.close()
        else:
            raise AssertionError("unreachable")
        await self._respond(exchange, conn, member, response, attempt)

    async def _beside_body(self, exchange: HTTPExchange, member: Member, attempt: _Attempt) -> None:
        """:meth:`_forward` while the request body streams to the member, full duplex (so a member that
        answers as it reads, like an echo, cannot deadlock us): :meth:`_send` starts the body's task
        once the head has left. A response that ends before the body stops it."""
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            attempt.body_sender = nursery
            try:
                await self._forward(exchange, member, attempt)
            except Exception as exc:  # re-raised below, once the body task has stopped
                error = exc
            nursery.cancel_scope.cancel()
        body_error = attempt.body_error
        if body_error is not None and not exchange.response_started:
            raise body_error
        if error is not None:
            raise error
        if body_error is not None:
            raise ResponseAborted from None

    async def _connect(self, pool: ConnectionPool, member: Member) -> UpstreamConnection:
        """A new connection to the member (when none is idle in its pool)."""
        try:
            return await pool.acquire(member.cfg.connectiontimeout)
        except trio.TooSlowError:
            raise MemberUnavailable(f"no connection within {member.cfg.connectiontimeout:g}s") from None
        except OSError as exc:
            raise MemberUnavailable(exc.strerror or str(exc)) from None

    # -- step 1: send --
    async def _send(self, exchange: HTTPExchange, conn: UpstreamConnection, member: Member, attempt: _Attempt) -> None:
        """Send the request head, and the body with it when it is whole; a streamed body follows in a
        task of its own."""
        conn.codec.expect_response(to_head=exchange.request.method == b"HEAD")
        data = attempt.head + attempt.body if attempt.body else attempt.head
        try:
            await conn.send_all(data, member.cfg.timeout)
        except (OSError, trio.BrokenResourceError) as exc:
            raise MemberUnavailable(_reason(exc)) from None
        attempt.sent += len(data)
        if attempt.body_sender is not None:
            attempt.body_sender.start_soon(self._send_body, exchange, conn, member, attempt)

    async def _send_body(
        self, exchange: HTTPExchange, conn: UpstreamConnection, member: Member, attempt: _Attempt
    ) -> None:
        """Stream the client's body to the member. A failure ends the whole attempt, with the reason
        in ``attempt.body_error``."""
        timeout = member.cfg.timeout
        chunked = attempt.chunked
        try:
            while piece := await exchange.receive_data():
                data = encode_chunk(piece) if chunked else piece
                await conn.send_all(data, timeout)
                member.add_transferred(len(data))
            if chunked:
                await conn.send_all(LAST_CHUNK, timeout)
                member.add_transferred(len(LAST_CHUNK))
            attempt.body_done = True
            return
        except (OSError, trio.BrokenResourceError) as exc:
            attempt.body_error = MemberUnavailable(_reason(exc))
        except (RemoteProtocolError, trio.TooSlowError) as exc:  # the client's body was bad or slow
            attempt.body_error = exc
        assert attempt.body_sender is not None
        attempt.body_sender.cancel_scope.cancel()

    # -- step 2: wait for the final response head --
    async def _final_head(
        self, exchange: HTTPExchange, conn: UpstreamConnection, member: Member, attempt: _Attempt
    ) -> Response | InformationalResponse:
        """The member's final response head, interim 1xx ones relayed on the way; a 101 is final too (a
        tunnel follows), except to a request whose body streams, which is no upgrade handshake (502)."""
        codec = conn.codec
        timeout = member.cfg.timeout
        interim = 0
        try:
            while True:
                event = codec.next_event()
                if event is NEED_DATA:
                    chunk = await conn.receive_some(timeout)
                    if chunk is None:
                        raise trio.TooSlowError
                    codec.receive_data(chunk)
                    attempt.received += len(chunk)
                    continue
                if isinstance(event, Response):
                    break
                if isinstance(event, InformationalResponse):
                    if event.status == 101:
                        if attempt.body is None:
                            raise RemoteProtocolError("101 Switching Protocols to a request with a streamed body", 502)
                        return event
                    interim += 1
                    await self._relay_interim(exchange, event, interim)
                    continue
                if isinstance(event, ConnectionClosed):
                    raise MemberUnavailable("connection closed before a response")
                raise RemoteProtocolError("response data before a response head", 502)
        except RemoteProtocolError as exc:
            await _bad_response(exchange, member, exc)
            raise ResponseAborted from None
        except trio.TooSlowError:
            raise MemberTimeout(f"no answer in {timeout:g}s") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise MemberUnavailable(_reason(exc)) from None
        if event.status in self.balancer.failonstatus:
            # httpd's post_request: the response still goes to the client; the member is in error.
            member.mark_error(self.clock())
        return event

    async def _relay_interim(self, exchange: HTTPExchange, interim: InformationalResponse, count: int) -> None:
        """Pass a 1xx on to the client (HTTPExchange.send_interim knows which clients may get which)."""
        if count > _MAX_INTERIM:
            raise RemoteProtocolError(f"more than {_MAX_INTERIM} interim responses", 502)
        lines, _ = self._client_headers(exchange, interim.headers)
        try:
            await exchange.send_interim(interim.status, lines)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise ResponseAborted from None  # the client's connection failed, not the member's

    # -- step 3: respond --
    async def _respond(
        self,
        exchange: HTTPExchange,
        conn: UpstreamConnection,
        member: Member,
        response: Response | InformationalResponse,
        attempt: _Attempt,
    ) -> None:
        """Answer the client: after a 101, a tunnel; a response that arrived whole in one write, once the
        member's connection went back (a client that stopped reading could hold that write for
        --send-timeout); any other streams as it arrives."""
        if isinstance(response, InformationalResponse):
            await self._tunnel(exchange, conn, member, response, attempt)
            return
        lines, has_date = self._client_headers(exchange, response.headers)
        status = response.status
        pieces: list[bytes] = []
        if not (exchange.request.method == b"HEAD" or status in (204, 304)) and _take_arrived(conn.codec, pieces):
            self._release(attempt, response.keep_alive)
            try:
                await exchange.respond_encoded(status, lines, b"".join(pieces), has_date=has_date)
            except (OSError, trio.BrokenResourceError):
                raise ResponseAborted from None
            return
        reusable = await self._relay_response(exchange, conn, member, response, lines, has_date, pieces)
        self._release(attempt, reusable)

    def _release(self, attempt: _Attempt, reusable: bool) -> None:
        """The member's part is done: its connection goes back to the pool if ``reusable``, else closes.
        One that a body is still streaming on stays with the attempt, which decides once the body task
        has stopped."""
        conn = attempt.conn
        if conn is None:
            return
        if not attempt.body_done:
            attempt.reusable = reusable
            return
        attempt.conn = None
        if reusable:
            attempt.pool.release(conn)
        else:
            conn.close()

    async def _relay_response(
        self,
        exchange: HTTPExchange,
        conn: UpstreamConnection,
        member: Member,
        response: Response,
        lines: bytes,
        has_date: bool,
        arrived: list[bytes],
    ) -> bool:
        """Stream the response to the client (``lines``: its encoded headers; ``arrived``: the body pieces
        already taken from the codec); True if the member connection may be reused."""
        timeout = member.cfg.timeout
        try:
            length = response.content_length
            length_known = False
            if length is not None and not response.chunked:
                lines += b"content-length: %d\r\n" % length
                length_known = True
            await exchange.start_response_encoded(response.status, lines, has_date=has_date, length_known=length_known)
            for piece in arrived:
                await exchange.send_data(piece)
            while True:
                event, received = await conn.next_event(timeout)
                member.add_read(received)
                if isinstance(event, Data):
                    await exchange.send_data(event.data)
                elif isinstance(event, EndOfMessage):
                    break
                else:
                    raise RemoteProtocolError("response ended early", 502)
            await exchange.end_response()
            return response.keep_alive
        except (RemoteProtocolError, trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
            if not exchange.response_started:
                if isinstance(exc, trio.TooSlowError):
                    raise MemberTimeout(f"no answer in {timeout:g}s") from None
                await _bad_response(exchange, member, exc)
            else:
                log.info("response cut short", member=member.url, reason=_reason(exc))
            raise ResponseAborted from None

    async def _tunnel(
        self,
        exchange: HTTPExchange,
        conn: UpstreamConnection,
        member: Member,
        switched: InformationalResponse,
        attempt: _Attempt,
    ) -> None:
        """After the member's 101: relay it and copy bytes both ways (counted on ``attempt``). A 101 the
        client did not ask for is a 502: the client would not know what follows. The connection spoke
        another protocol: it is never pooled."""
        protocol = (switched.header(b"upgrade") or b"").strip().partition(b"/")[0].lower()
        if protocol not in self.upgrade_offer(exchange.request):
            log.warning("member switched protocols unasked", member=member.url, upgrade=protocol.decode("latin-1"))
            await _reply(exchange, 502)
            raise ResponseAborted
        lines, _ = self._client_headers(exchange, switched.headers)
        upgrade = switched.header(b"upgrade") or protocol
        client = exchange.switch_protocols()
        head = b"%s%supgrade: %s\r\nconnection: upgrade\r\n\r\n%s" % (
            status_line(101), lines, upgrade, conn.codec.trailing_data
        )
        idle = member.cfg.timeout
        send_timeout = self.cfg.send_timeout
        moved = [0, 0]  # to the member, from it

        async def pump(
            receive: Callable[[], Awaitable[bytes | None]],
            send: Callable[[bytes], Awaitable[None]],
            eof: Callable[[], Awaitable[None]],
            index: int,
            scope: trio.CancelScope,
        ) -> None:
            # One piece (RECEIVE_SIZE at most) in flight per direction: the tunnel's only buffer.
            try:
                while data := await receive():
                    await send(data)
                    moved[index] += len(data)
                    tunnel.deadline = trio.current_time() + idle  # anything moving keeps it open
                await eof()  # half-close: the other direction may go on
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                scope.cancel()  # one side broke: the tunnel is over for both

        with trio.move_on_after(idle) as tunnel:
            try:
                await client.send_all(head, send_timeout)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            moved[1] += len(conn.codec.trailing_data)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    pump, lambda: client.receive_some(), lambda d: conn.send_all(d, idle), conn.stream.send_eof,
                    0, nursery.cancel_scope,
                )
                nursery.start_soon(
                    pump, lambda: conn.receive_some(math.inf), lambda d: client.send_all(d, send_timeout),
                    client.stream.send_eof, 1, nursery.cancel_scope,
                )
        attempt.sent += moved[0]
        attempt.received += moved[1]
        if tunnel.cancelled_caught:
            log.info("tunnel closed after being idle", member=member.url, idle=idle)


def _take_arrived(codec: ClientConnection, pieces: list[bytes]) -> bool:
    """Take the body pieces that already arrived into ``pieces``; True if the response is complete
    (a small response often is, and then goes to the client in one write)."""
    while True:
        event = codec.next_event()
        if isinstance(event, Data):
            pieces.append(event.data)
            continue
        return isinstance(event, EndOfMessage)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def _bad_response(exchange: HTTPExchange, member: Member, exc: BaseException) -> None:
    log.warning("bad response from member", member=member.url, reason=_reason(exc))
    await _reply(exchange, 502)


async def _reply(exchange: HTTPExchange, status: int, detail: str = "") -> None:
    """A short plain-text answer from the balancer itself (when the response has not started): the
    status and its reason, and for the client's own mistakes (4xx) what was wrong with its request.
    Nothing about members goes in it (their URLs, OS errors): that is the log's."""
    if exchange.response_started:
        return
    text = f"{status} {reason_phrase(status).decode()}"
    if detail and status < 500:
        text += f": {detail}"
    try:
        await exchange.respond(status, list(_TEXT), (text + "\n").encode())
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        exchange.keep_alive = False  # the client is gone (or stopped reading): nothing more to say
