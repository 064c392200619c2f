"""TCP listeners shared by every role: bind, report the port, accept until shutdown, hand each connection
to a handler in a nursery that outlives the accept loop (so in-flight connections finish).

The number of connections is capped below the open-file limit (:func:`default_connection_limit`):
without a cap, a flood of slow clients takes every descriptor and accept() fails with EMFILE for
everyone, normal clients included, for as long as the flood lasts. At the cap a new connection is
accepted and closed at once (after an optional short answer written without waiting), so the backlog
never fills with clients that wait for nothing and the connections already open are not starved.
Both the cap and EMFILE are logged, at most once per :data:`REPORT_INTERVAL` each.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from sesh.log import get_logger
from sesh.net.shutdown import Shutdown

log = get_logger("net")

ConnectionHandler = Callable[[trio.SocketStream], Awaitable[None]]

# A full accept queue stalls clients silently; memcached and httpd both use 1024 or more.
LISTEN_BACKLOG = 1024
# Errors that mean "out of file descriptors or buffers": wait a little and accept again, as trio's
# serve_listeners does, rather than crash the server.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_PAUSE = 0.1
# Seconds between two log lines about refused connections or failing accepts (a flood would
# otherwise write one line per connection).
REPORT_INTERVAL = 10.0
# Descriptors kept free of client connections: listeners, upstream and store connections, the
# interpreter's own files; a tenth of the limit, at least this many.
FD_HEADROOM = 64


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    current_connections: int
    total_connections: int
    refused_connections: int


class ConnectionCounter:
    """Counts connections and enforces an optional limit (memcached's -c)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.current = 0
        self.total = 0
        self.refused = 0
        self._refusals_reported = 0
        self._next_refusal_report = -float("inf")

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(self.current, self.total, self.refused)

    def count_refusal(self) -> None:
        self.refused += 1
        now = trio.current_time()
        if now >= self._next_refusal_report:
            self._next_refusal_report = now + REPORT_INTERVAL
            log.warning(
                "connection limit reached: refusing new connections",
                limit=self.limit,
                current=self.current,
                refused=self.refused - self._refusals_reported,
            )
            self._refusals_reported = self.refused


def default_connection_limit(descriptors_per_connection: int = 1) -> int:
    """The connection cap when none is configured: the open-file limit (RLIMIT_NOFILE) less headroom,
    divided by the descriptors one connection takes (2 for a proxy: the client's and the member's)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    usable = soft - max(FD_HEADROOM, soft // 10)
    return max(8, usable // descriptors_per_connection)


async def open_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Bind ``host:port`` (port 0 picks a free one). Raises OSError naming the address on failure."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return listeners


def bound_port(listeners: list[trio.SocketListener]) -> int:
    port: int = listeners[0].socket.getsockname()[1]
    return port


def set_nodelay(stream: trio.SocketStream) -> None:
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def serve_connections(
    listeners: list[trio.SocketListener],
    handler: ConnectionHandler,
    shutdown: Shutdown,
    counter: ConnectionCounter | None = None,
    on_refused: Callable[[trio.SocketStream], Awaitable[None]] | None = None,
    *,
    refusal: bytes = b"",
) -> None:
    """Accept on every listener until shutdown is requested, then wait for open connections to end.

    Over the counter's limit a connection is refused: handed to ``on_refused`` (which has a second to
    answer) or, without it, sent ``refusal`` if the socket takes it at once, and closed.

    Handlers must not raise for a peer's misbehaviour; if one does anyway, the error is reported and
    the server keeps serving (input never crashes a server).
    """
    counter = counter or ConnectionCounter()
    next_accept_report = -float("inf")

    async def run_handler(stream: trio.SocketStream) -> None:
        # Counted in when accepted (below), so a burst of accepts cannot overshoot the limit.
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
        except Exception:  # a bug, not input: report it, keep serving the others
            log.exception("connection handler failed")
        finally:
            counter.current -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def refuse(stream: trio.SocketStream) -> None:
        try:
            if on_refused is not None:
                with trio.move_on_after(1):
                    await on_refused(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def refuse_nowait(stream: trio.SocketStream) -> None:
        # No task and no wait: a flood at the cap costs one accept and one close per connection.
        sock = stream.socket
        with contextlib.suppress(OSError):
            if refusal:
                os.write(sock.fileno(), refusal)  # non-blocking: what the kernel takes now, or nothing
        sock.close()

    async def accept_loop(listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        nonlocal next_accept_report
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    # The connections already open keep being served meanwhile (other tasks).
                    now = trio.current_time()
                    if now >= next_accept_report:
                        next_accept_report = now + REPORT_INTERVAL
                        log.warning(
                            "accept failed, pausing accepts",
                            error=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                            pause=_ACCEPT_PAUSE,
                            connections=counter.current,
                            limit=counter.limit,
                        )
                    await trio.sleep(_ACCEPT_PAUSE)
                    continue
                raise
            if counter.limit is not None and counter.current >= counter.limit:
                counter.count_refusal()
                if on_refused is None:
                    refuse_nowait(stream)
                else:
                    handlers.start_soon(refuse, stream)
                continue
            set_nodelay(stream)
            counter.current += 1
            counter.total += 1
            handlers.start_soon(run_handler, stream)

    try:
        async with trio.open_nursery() as handlers:
            with shutdown.cancel_on_request():
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(accept_loop, listener, handlers)
            close_listeners(listeners)
    finally:
        close_listeners(listeners)


def close_listeners(listeners: list[trio.SocketListener]) -> None:
    """Stop listening now (synchronously, so it also happens while being cancelled)."""
    for listener in listeners:
        listener.socket.close()
