"""TCP listeners shared by every role: bind, report the port, accept until shutdown, hand each connection
to a handler in a nursery that outlives the accept loop (so in-flight connections finish)."""

from __future__ import annotations

import contextlib
import errno
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from sesh.net.shutdown import Shutdown

ConnectionHandler = Callable[[trio.SocketStream], Awaitable[None]]

# A full accept queue stalls clients silently; memcached and httpd both use 1024 or more.
LISTEN_BACKLOG = 1024
# Errors that mean "out of file descriptors or buffers": wait a little and accept again, as trio's
# serve_listeners does, rather than crash the server.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_PAUSE = 0.1


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

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(self.current, self.total, self.refused)


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
) -> None:
    """Accept on every listener until shutdown is requested, then wait for open connections to end.

    Handlers must not raise for a peer's misbehaviour; if one does anyway, the error is reported and
    the server keeps serving (input never crashes a server).
    """
    counter = counter or ConnectionCounter()

    async def run_handler(stream: trio.SocketStream) -> None:
        counter.current += 1
        counter.total += 1
        try:
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
        except Exception as exc:  # a bug, not input: report it, keep serving the others
            print(f"sesh: connection handler failed: {exc!r}", file=sys.stderr, flush=True)
        finally:
            counter.current -= 1
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def refuse(stream: trio.SocketStream) -> None:
        counter.refused += 1
        try:
            if on_refused is not None:
                with trio.move_on_after(1):
                    await on_refused(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def accept_loop(listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    await trio.sleep(_ACCEPT_PAUSE)
                    continue
                raise
            set_nodelay(stream)
            if counter.limit is not None and counter.current >= counter.limit:
                handlers.start_soon(refuse, stream)
            else:
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
