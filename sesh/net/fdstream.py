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
parked, so a cancel scope is built only when there is something to wait for. A hot path that parks on
every exchange (the balancer waiting for a member's answer, and for a client's next request) passes a
:class:`WaitTimer` instead: one task times every such wait, because a cancel scope entered per wait
(or a deadline moved twice per request) measured several microseconds of CPU per proxied request.
"""

from __future__ import annotations

import errno
import math
import os
import socket

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled, notify_closing, wait_readable, wait_writable

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

    __slots__ = ("_fd_source", "_guard", "_receiving", "_sending", "_socket", "_timed_out", "_unparked", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._socket = stream.socket  # non-blocking, as trio made it
        # The stdlib socket inside trio's: its fileno() is a plain C call (trio's wraps it in Python),
        # and it reads -1 once either is closed.
        self._fd_source: socket.socket | trio.socket.SocketType = getattr(stream.socket, "_sock", stream.socket)
        self._unparked = 0
        self._receiving = False
        self._sending = False
        self._timed_out = False  # a WaitTimer ended this stream's wait
        self._guard: trio.CancelScope | None = None  # what a WaitTimer cancels to end an idle wait

    async def receive_some(
        self, timeout: float = math.inf, *, park_first: bool = False, timer: WaitTimer | None = None
    ) -> bytes | None:
        """Up to :data:`RECEIVE_SIZE` bytes, ``b""`` once the peer closed its side; ``None`` when
        nothing arrived within ``timeout`` seconds of parking. ``park_first`` skips the first try when
        the caller knows the socket is almost surely empty (just after it sent a request, say): the try
        would only fail. ``timer`` (running) times the wait instead of a cancel scope; it ends a wait with
        ``notify_closing``, which wakes every waiter on the socket (a sender parked on it waits to be
        cancelled), so the caller should close the socket after a timeout, as the balancer does."""
        self._begin_receive()
        try:
            if not park_first:
                await self._pace()
                data = self._read()
                if data is not None:
                    return data
            self._unparked = 0
            if timer is not None and timer.running and timeout != math.inf:
                self._timed_out = False
                timer.add(self, timeout)
                try:
                    while True:
                        try:
                            await wait_readable(self._fileno())
                        except trio.ClosedResourceError:
                            if self._timed_out:
                                return None
                            raise
                        data = self._read()
                        if data is not None:
                            return data
                finally:
                    timer.discard(self, timeout)
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

    def _time_out(self) -> None:
        """Called by a WaitTimer: end this stream's parked wait (an idle one by cancelling its guard;
        the others see ``_timed_out``)."""
        if self._guard is not None:
            self._guard.cancel()
            return
        self._timed_out = True
        fd = self._socket.fileno()
        if fd >= 0:
            notify_closing(fd)

    async def receive_idle(
        self,
        guard: trio.CancelScope,
        timeout: float,
        shutdown: Shutdown,
        *,
        park_first: bool = False,
        timer: WaitTimer | None = None,
    ) -> bytes:
        """Like :meth:`receive_some` for a connection waiting for its next request, timed by the
        caller's long-lived ``guard`` scope rather than a new scope per wait (a new scope costs more
        than the wait): while parked, ``guard`` expires after ``timeout`` seconds and is cancelled when
        ``shutdown`` is requested, so the caller's ``with guard:`` ends the connection. The caller must
        check ``guard.cancel_called`` after a return: an expiry can race with the bytes arriving.
        With ``timer`` (running) the expiry is the timer's (it cancels ``guard``), not a deadline on
        ``guard``: moving a deadline twice per request costs more than the timer's bookkeeping."""
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
            timed = timer is not None and timer.running and timeout != math.inf
            if timed:
                assert timer is not None
                self._guard = guard
                timer.add(self, timeout)
            else:
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
                if timed:
                    assert timer is not None
                    timer.discard(self, timeout)
                    self._guard = None
                else:
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
        fd = self._fd_source.fileno()
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

    async def send_all(self, data: bytes, timeout: float = math.inf) -> None:
        """Send every byte of ``data``, parking only while the socket's send buffer is full; a peer that
        takes nothing for ``timeout`` seconds while we are parked breaks the stream
        (trio.BrokenResourceError): part of ``data`` may have left, so the connection is unusable. As
        httpd's Timeout, it bounds each wait, not the whole send (a slow reader that keeps reading is
        not cut off). The scope is entered only when the send parks: a send that fits costs none."""
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
            if timeout == math.inf:
                await self._send_parked(fd, memoryview(data)[sent:])
                return
            with trio.move_on_after(timeout) as scope:
                await self._send_parked(fd, memoryview(data)[sent:], scope, timeout)
            if scope.cancelled_caught:
                raise trio.BrokenResourceError(f"send timed out: the peer took nothing for {timeout:g}s")
        finally:
            self._sending = False

    async def _send_parked(
        self, fd: int, view: memoryview, scope: trio.CancelScope | None = None, timeout: float = math.inf
    ) -> None:
        """Write ``view`` out, parking while the send buffer is full; each write that makes progress
        moves ``scope``'s deadline ``timeout`` seconds on."""
        while view:
            try:
                await wait_writable(fd)
            except trio.ClosedResourceError:
                if not self._timed_out:
                    raise
                # A WaitTimer ended the receive side's wait on this socket (a member that
                # stopped answering, say): its task reports the timeout and cancels this one,
                # so wait for that rather than report a different failure first.
                await trio.sleep_forever()
            fd = self._fileno()
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            view = view[sent:]
            if scope is not None and sent:
                scope.deadline = trio.current_time() + timeout

    def close(self) -> None:
        """Close the socket now (a task parked on it wakes with ``trio.ClosedResourceError``)."""
        self._socket.close()



class WaitTimer:
    """Times parked receives (:meth:`FdStream.receive_some` with ``timer=``) for many streams with one
    task, :meth:`run`, instead of a cancel scope per wait.

    Waits with the same timeout expire in the order they started, so each timeout keeps its waits in an
    insertion-ordered dict and only the oldest is looked at; :meth:`run` sleeps until the earliest of
    those and ends an expired wait with ``trio.lowlevel.notify_closing`` on its socket (the waiter sees
    its stream's ``_timed_out`` and reports the timeout). A timer that is not running is ignored by
    receive_some, which then falls back to a cancel scope.
    """

    def __init__(self) -> None:
        # timeout -> {stream: deadline}, oldest first. One stream has at most one receive parked.
        self._waits: dict[float, dict[FdStream, float]] = {}
        self._sleep = trio.CancelScope()  # run()'s current sleep; its deadline is the next wake-up
        self.running = False

    def add(self, stream: FdStream, timeout: float) -> None:
        deadline = trio.current_time() + timeout
        waits = self._waits.get(timeout)
        if waits is None:
            waits = self._waits[timeout] = {}
        waits[stream] = deadline
        if deadline < self._sleep.deadline:
            self._sleep.deadline = deadline

    def discard(self, stream: FdStream, timeout: float) -> None:
        self._waits[timeout].pop(stream, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire waits until cancelled."""
        self.running = True
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                wake = math.inf
                for waits in self._waits.values():
                    expired = []
                    for stream, deadline in waits.items():
                        if deadline > now:
                            wake = min(wake, deadline)
                            break
                        expired.append(stream)
                    for stream in expired:
                        del waits[stream]
                        stream._time_out()
                with trio.CancelScope(deadline=wake) as self._sleep:
                    await trio.sleep_forever()
        finally:
            self.running = False
