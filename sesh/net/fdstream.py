"""A connected TCP socket read and written through its file descriptor, for the HTTP hot paths.

Why. trio's ``SocketStream.receive_some``/``send_all`` add a schedule point to every call, even when
the kernel had the bytes (or the room) at once; an HTTP exchange does two to four such calls, and at
tens of thousands of requests a second those round trips through the scheduler cost more than the
parsing. :class:`FdStream` reads and writes the non-blocking socket's descriptor directly and parks in
``trio.lowlevel.wait_readable``/``wait_writable`` only when the kernel has nothing (or no room), the
trick ``sesh store`` uses (see sesh/store/server.py).

What stays as trio does it:

* cancellation: every call first checks ``checkpoint_if_cancelled`` (cheap: no schedule point unless
  the caller is cancelled), and parking is a full checkpoint;
* fairness: a connection that always finds input waiting (a client pipelining, a response streaming
  in) yields to the others every :data:`MAX_RECEIVES_WITHOUT_YIELD` receives;
* errors: a reset or broken connection raises ``trio.BrokenResourceError`` (from the ``OSError``), a
  socket closed here or by another task raises ``trio.ClosedResourceError``, and two tasks receiving
  (or sending) at once raise ``trio.BusyResourceError``.

Timeouts belong to the callers (house style), but a receive takes one: it bounds only the time spent
parked, so a cancel scope is built only when there is something to wait for.
"""

from __future__ import annotations

import errno
import math
import os

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled, wait_readable, wait_writable

from sesh.net.shutdown import Shutdown

# One receive takes at most this much: a burst of pipelined requests, or one piece of a streamed body.
RECEIVE_SIZE = 64 * 1024
# A task that never had to park yields to the others after this many receives (as memcached yields
# after reqs_per_event commands).
MAX_RECEIVES_WITHOUT_YIELD = 16

# The errors that mean "this socket is already closed", as trio's SocketStream maps them.
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class FdStream:
    """One connected socket. ``stream`` is the trio stream it came from (whoever opened it closes it);
    :meth:`close` closes the socket at once."""

    __slots__ = ("_receiving", "_sending", "_socket", "_unparked", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._socket = stream.socket  # non-blocking, as trio made it
        self._unparked = 0
        self._receiving = False
        self._sending = False

    async def receive_some(self, timeout: float = math.inf, *, park_first: bool = False) -> bytes | None:
        """Up to :data:`RECEIVE_SIZE` bytes, ``b""`` once the peer closed its side; ``None`` when
        nothing arrived within ``timeout`` seconds of parking. ``park_first`` skips the first try when
        the caller knows the socket is almost surely empty (just after it sent a request, say): the try
        would only fail."""
        self._begin_receive()
        try:
            if not park_first:
                await self._pace()
                data = self._read()
                if data is not None:
                    return data
            self._unparked = 0
            deadline = math.inf if timeout == math.inf else trio.current_time() + timeout
            while True:
                if deadline == math.inf:
                    await wait_readable(self._fileno())
                else:
                    with trio.CancelScope(deadline=deadline) as scope:
                        await wait_readable(self._fileno())
                    if scope.cancelled_caught:
                        return None
                data = self._read()
                if data is not None:
                    return data
        finally:
            self._receiving = False

    async def receive_idle(
        self, guard: trio.CancelScope, timeout: float, shutdown: Shutdown, *, park_first: bool = False
    ) -> bytes:
        """Like :meth:`receive_some` for a connection waiting for its next request, timed by the
        caller's long-lived ``guard`` scope rather than a new scope per wait (a new scope costs more
        than the wait): while parked, ``guard`` expires after ``timeout`` seconds and is cancelled when
        ``shutdown`` is requested, so the caller's ``with guard:`` ends the connection. The caller must
        check ``guard.cancel_called`` after a return: an expiry can race with the bytes arriving."""
        self._begin_receive()
        try:
            if not park_first:
                await self._pace()
                if shutdown.requested:
                    guard.cancel()
                    return b""
                data = self._read()
                if data is not None:
                    return data
            self._unparked = 0
            guard.deadline = trio.current_time() + timeout
            shutdown.watch(guard)
            try:
                while True:
                    await wait_readable(self._fileno())
                    data = self._read()
                    if data is not None:
                        return data
            finally:
                shutdown.unwatch(guard)
                guard.deadline = math.inf
        finally:
            self._receiving = False

    def _begin_receive(self) -> None:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this socket")
        self._receiving = True

    async def _pace(self) -> None:
        """Before a read that may not park: honour a cancellation, and let the others run every
        :data:`MAX_RECEIVES_WITHOUT_YIELD` reads."""
        if self._unparked >= MAX_RECEIVES_WITHOUT_YIELD:
            self._unparked = 0
            await checkpoint()
        else:
            self._unparked += 1
            await checkpoint_if_cancelled()

    def _fileno(self) -> int:
        # Looked up on every call, never kept: once the socket is closed it is -1, whereas a kept
        # number could by then name another connection.
        fd = self._socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("this socket was already closed")
        return fd

    def _read(self) -> bytes | None:
        """What the kernel has now (``b""`` at EOF), or None if it has nothing."""
        try:
            return os.read(self._fileno(), RECEIVE_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def send_all(self, data: bytes) -> None:
        """Send every byte of ``data``, parking only while the socket's send buffer is full."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this socket")
        await checkpoint_if_cancelled()
        fd = self._fileno()
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _stream_error(exc) from exc
        if sent == len(data):
            return
        self._sending = True
        try:
            view = memoryview(data)[sent:]
            while view:
                await wait_writable(fd)
                fd = self._fileno()
                try:
                    sent = os.write(fd, view)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _stream_error(exc) from exc
                view = view[sent:]
        finally:
            self._sending = False

    def close(self) -> None:
        """Close the socket now (a task parked on it wakes with ``trio.ClosedResourceError``)."""
        self._socket.close()

