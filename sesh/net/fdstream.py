"""A connected TCP socket read and written through its file descriptor, for the HTTP and store hot paths.

Why. trio's ``SocketStream.receive_some``/``send_all`` add a schedule point to every call, even when
the kernel had the bytes (or the room) at once; an HTTP exchange does two to four such calls, a
memcached command two, and at tens of thousands of requests a second those round trips through the
scheduler cost more than the parsing. :class:`FdStream` reads and writes the non-blocking socket's
descriptor directly and parks in ``trio.lowlevel.wait_readable``/``wait_writable`` only when the kernel
has nothing (or no room).

What stays as trio does it:

* cancellation: every call first checks ``checkpoint_if_cancelled`` (cheap: no schedule point unless
  the caller is cancelled), and parking is a full checkpoint;
* fairness: a connection that always finds input waiting (a client pipelining, a response streaming
  in) yields to the others every :data:`MAX_RECEIVES_WITHOUT_YIELD` receives;
* errors: a reset or broken connection raises ``trio.BrokenResourceError`` (from the ``OSError``), a
  socket closed here or by another task raises ``trio.ClosedResourceError``, and two tasks receiving
  (or sending) at once raise ``trio.BusyResourceError``.

Timing: one mechanism. A receive or a send takes a timeout that bounds only the time spent *parked*
(a call that finds the bytes or the room costs no clock reading at all). Every such wait is timed by
the stream's :class:`WaitTimer`, one task shared by every stream of a server: a parked wait registers
its deadline with the timer, and the timer ends an expired wait with ``trio.lowlevel.notify_closing``
on the socket. That wakes every waiter on the descriptor with ``ClosedResourceError``; each one then
looks at its own side (:class:`_Side`): expired means "timed out" (a receive returns None, a send
raises :class:`SendTimeout`), a descriptor really closed means closed, and anything else means the
other direction's wait expired, so it simply parks again. A cancel scope entered per wait, or a
deadline moved twice per request, measured several microseconds of CPU per proxied request; the
timer's bookkeeping is a dict insert and a pop, and only for waits that park. An untimed wait
(``math.inf``) registers nothing; a finite timeout needs a stream built with a timer that is running.
Cancellation (a caller's own ``fail_after``, shutdown cancelling an idle connection's guard scope) is
not timing and stays trio's.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio
from trio.lowlevel import checkpoint, checkpoint_if_cancelled, notify_closing, wait_readable, wait_writable

from sesh.net.shutdown import Shutdown

# One receive takes at most this much by default: a burst of pipelined requests, or one piece of a
# streamed body (a stream can be built with another size: the store reads 256 KiB of commands).
RECEIVE_SIZE = 64 * 1024
# A task that never had to park yields to the others after this many receives (as memcached yields
# after reqs_per_event commands).
MAX_RECEIVES_WITHOUT_YIELD = 16
# writev() takes at most this many buffers (Linux's IOV_MAX).
IOV_MAX = 1024

# The errors that mean "this socket is already closed", as trio's SocketStream maps them.
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


class SendTimeout(trio.BrokenResourceError):
    """A send parked longer than its timeout: the peer took nothing (part of the data may have left,
    so the connection is unusable, as for any broken stream)."""


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class _Side:
    """One direction of a stream as the timer sees it: at most one wait parked at a time."""

    __slots__ = ("expired", "stream")

    def __init__(self, stream: FdStream) -> None:
        self.stream = stream
        self.expired = False  # the timer ended this side's current wait


class FdStream:
    """One connected socket. ``stream`` is the trio stream it came from (whoever opened it closes it);
    :meth:`close` closes the socket at once. ``timer`` (running) times the waits that have a timeout."""

    __slots__ = (
        "_fd_source", "_receive_size", "_receiving", "_rx", "_sending", "_socket", "_timer", "_tx",
        "_unparked", "stream",
    )

    def __init__(
        self, stream: trio.SocketStream, timer: WaitTimer | None = None, *, receive_size: int = RECEIVE_SIZE
    ) -> None:
        self.stream = stream
        self._socket = stream.socket  # non-blocking, as trio made it
        # The stdlib socket inside trio's: its fileno() is a plain C call (trio's wraps it in Python),
        # and it reads -1 once either is closed.
        self._fd_source: socket.socket | trio.socket.SocketType = getattr(stream.socket, "_sock", stream.socket)
        self._timer = timer
        self._receive_size = receive_size
        self._unparked = 0
        self._receiving = False
        self._sending = False
        self._rx = _Side(self)
        self._tx = _Side(self)

    # -- receiving --
    async def receive_some(
        self,
        timeout: float = math.inf,  # noqa: ASYNC109 it bounds only the time parked, which only the stream knows
        *,
        park_first: bool = False,
        guard: trio.CancelScope | None = None,
        shutdown: Shutdown | None = None,
    ) -> bytes | None:
        """Up to the stream's receive size, ``b""`` once the peer closed its side; ``None`` when nothing
        arrived within ``timeout`` seconds of parking. ``park_first`` skips the first try when the
        caller knows the socket is almost surely empty (just after it sent a request, say): the try
        would only fail. ``guard`` and ``shutdown``: see :meth:`receive_idle`.

        One body, every wait inlined (each coroutine level in between measured ~3k instructions per
        parked wait on the balancer's path)."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this socket")
        self._receiving = True
        fd_source = self._fd_source
        try:
            if park_first:
                fd = fd_source.fileno()
                if fd < 0:
                    raise trio.ClosedResourceError("this socket was already closed")
            else:
                await self._pace()
                if shutdown is not None and shutdown.requested:
                    assert guard is not None
                    guard.cancel()
                    return b""
                # The descriptor read after the last await: a read that finds nothing leaves it good
                # for the park (a closed socket's -1 fails the read, EBADF: ClosedResourceError).
                fd = fd_source.fileno()
                data = self._read(fd)
                if data is not None:
                    return data
            self._unparked = 0
            side = self._rx
            timer = self._timer
            if timeout != math.inf:
                if timer is None:
                    raise RuntimeError("a timed receive on a stream without a WaitTimer")
                timer.add(side, timeout)
            else:
                side.expired = False  # (a timed wait before this one may have expired)
            if guard is not None:
                assert shutdown is not None
                shutdown.watch(guard)
            try:
                while not side.expired:
                    try:
                        await wait_readable(fd)
                    except trio.ClosedResourceError:
                        if side.expired:
                            break
                        fd = fd_source.fileno()
                        if fd < 0:
                            raise
                        continue  # the send side's wait expired, not ours
                    fd = fd_source.fileno()  # anew after the park: the socket may be closed by now
                    data = self._read(fd)
                    if data is not None:
                        return data
                return None
            finally:
                if guard is not None:
                    assert shutdown is not None
                    shutdown.unwatch(guard)
                if timeout != math.inf:
                    assert timer is not None
                    timer.discard(side, timeout)
        finally:
            self._receiving = False

    # The store's hot loop reads and parks through these three, doing its own pacing (every call of
    # ours in between would be a coroutine per command: measured at ~4 us of CPU per store operation).
    def receive_nowait(self) -> bytes | None:
        """What the kernel has now (``b""`` at EOF), None if it has nothing: no checkpoint, no park."""
        try:  # (_read's body, inlined: the store calls this once per command)
            return os.read(self._fd_source.fileno(), self._receive_size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _stream_error(exc) from exc

    def wait_readable(self) -> Awaitable[None]:
        """Park, untimed, until the socket is readable: trio's own wait, returned to be awaited (no
        coroutine of ours in between). Only for a stream whose sends and receives run in one task:
        then no expiry of a timed send can end this wait."""
        fd = self._fd_source.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("this socket was already closed")
        return wait_readable(fd)  # noqa: ASYNC105 awaited by the caller: that is the point

    async def wait_readable_for(self, timeout: float) -> bool:  # noqa: ASYNC109 it bounds only the time parked, as receive_some's
        """Park until the socket is readable, at most ``timeout`` seconds (the stream's timer); False
        once that time is up."""
        if timeout == math.inf:
            await self._park(wait_readable, self._rx)
            return True
        timer = self._timer
        if timer is None:
            raise RuntimeError("a timed receive on a stream without a WaitTimer")
        timer.add(self._rx, timeout)
        try:
            return await self._park(wait_readable, self._rx)
        finally:
            timer.discard(self._rx, timeout)

    def receive_idle(
        self,
        guard: trio.CancelScope,
        timeout: float,
        shutdown: Shutdown,
        *,
        park_first: bool = False,
    ) -> Awaitable[bytes | None]:
        """:meth:`receive_some` for a connection waiting for its next request (None after ``timeout``
        seconds parked); while parked, a shutdown request cancels the caller's long-lived ``guard``
        scope, so the caller's ``with guard:`` ends the connection. The caller must check
        ``guard.cancel_called`` after a return: a shutdown can race with the bytes arriving. Await the
        result (the coroutine of receive_some itself: no level of ours in between)."""
        return self.receive_some(timeout, park_first=park_first, guard=guard, shutdown=shutdown)

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

    def _read(self, fd: int) -> bytes | None:
        """What the kernel has now on ``fd`` (``b""`` at EOF), or None if it has nothing. A closed
        socket's fileno() is -1, which os.read refuses with EBADF: ClosedResourceError."""
        try:
            return os.read(fd, self._receive_size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def _park(self, wait: Callable[[int], Awaitable[None]], side: _Side) -> bool:
        """Park until the socket is ready for ``side``; False once the timer has ended ``side``'s
        wait. A wake-up meant for the other direction (its wait expired) parks again."""
        while not side.expired:
            try:
                await wait(self._fileno())
                return True
            except trio.ClosedResourceError:
                if side.expired:
                    break
                if self._fd_source.fileno() < 0:
                    raise
        return False

    # -- sending --
    def send_nowait(self, data: bytes | memoryview) -> int:
        """Write what the send buffer takes now, without a checkpoint; the number of bytes sent (the
        store's hot path: the rest, if any, goes with :meth:`send_all`)."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this socket")
        try:
            return os.write(self._fd_source.fileno(), data)  # closed: -1, EBADF, ClosedResourceError
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _stream_error(exc) from exc

    async def send_all(self, data: bytes | memoryview, timeout: float = math.inf) -> None:  # noqa: ASYNC109 it bounds each wait, not the whole send (httpd's Timeout), which only the stream can do
        """Send every byte of ``data``, parking only while the socket's send buffer is full; a peer that
        takes nothing for ``timeout`` seconds while we are parked breaks the stream
        (:class:`SendTimeout`, a trio.BrokenResourceError): part of ``data`` may have left, so the
        connection is unusable. As httpd's Timeout, it bounds each wait, not the whole send (a slow
        reader that keeps reading is not cut off). A send that fits costs no timing at all."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this socket")
        await checkpoint_if_cancelled()
        try:
            sent = os.write(self._fd_source.fileno(), data)  # closed: -1, EBADF, ClosedResourceError
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
                await self._wait_writable(timeout)
                try:
                    sent = os.write(self._fd_source.fileno(), view)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _stream_error(exc) from exc
                view = view[sent:]
        finally:
            self._sending = False

    async def send_parts(self, parts: Sequence[bytes | memoryview], timeout: float = math.inf) -> None:  # noqa: ASYNC109 as send_all's
        """:meth:`send_all` for many buffers, written with writev() so they are not copied; each part
        is let go (in the caller's list, when it passes one) as soon as it has left."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this socket")
        await checkpoint_if_cancelled()
        self._sending = True
        try:
            pending = parts if isinstance(parts, list) else list(parts)
            first = 0
            while first < len(pending):
                try:
                    sent = os.writev(self._fd_source.fileno(), pending[first : first + IOV_MAX])
                except BlockingIOError:
                    await self._wait_writable(timeout)
                    continue
                except OSError as exc:
                    raise _stream_error(exc) from exc
                # Skip what went out (empty parts included), letting each go as soon as it is sent.
                while first < len(pending) and sent >= len(pending[first]):
                    sent -= len(pending[first])
                    pending[first] = b""
                    first += 1
                if sent:
                    pending[first] = memoryview(pending[first])[sent:]
        finally:
            self._sending = False

    async def _wait_writable(self, timeout: float) -> None:  # noqa: ASYNC109 see send_all
        """One wait for room in the send buffer, at most ``timeout`` seconds (SendTimeout after)."""
        side = self._tx
        if timeout == math.inf:
            side.expired = False
            await self._park(wait_writable, side)
            return
        timer = self._timer
        if timer is None:
            raise RuntimeError("a timed send on a stream without a WaitTimer")
        timer.add(side, timeout)
        try:
            if not await self._park(wait_writable, side):
                raise SendTimeout(f"send timed out: the peer took nothing for {timeout:g}s")
        finally:
            timer.discard(side, timeout)

    def close(self) -> None:
        """Close the socket now (a task parked on it wakes with ``trio.ClosedResourceError``)."""
        self._socket.close()


class WaitTimer:
    """Times every parked wait of many streams (see the module's theory of operation) with one task,
    :meth:`run`, started in the nursery of the server that owns the streams.

    Waits with the same timeout expire in the order they started, so each timeout keeps its waits in an
    insertion-ordered dict and only the oldest is looked at; :meth:`run` sleeps until the earliest of
    those and ends an expired wait with ``trio.lowlevel.notify_closing`` on its socket.
    """

    def __init__(self) -> None:
        # timeout -> {side: deadline}, oldest first. One side has at most one wait parked.
        self._waits: dict[float, dict[_Side, float]] = {}
        self._sleep = trio.CancelScope()  # run()'s current sleep; its deadline is the next wake-up,
        self._wake = math.inf  # kept here as well (the scope's deadline is a property: a call per read)
        # While running, the run's clock's own current_time: trio.current_time() reaches it through
        # two more calls, on every timed wait that parks.
        self._now: Callable[[], float] = _not_running
        self.running = False

    def add(self, side: _Side, timeout: float) -> None:
        side.expired = False
        deadline = self._now() + timeout
        waits = self._waits.get(timeout)
        if waits is None:
            waits = self._waits[timeout] = {}
        waits[side] = deadline
        if deadline < self._wake:
            self._wake = self._sleep.deadline = deadline

    def discard(self, side: _Side, timeout: float) -> None:
        self._waits[timeout].pop(side, None)

    def _expire(self, side: _Side) -> None:
        """End ``side``'s wait: its waiter sees ``expired`` and reports the timeout."""
        side.expired = True
        fd = side.stream._socket.fileno()
        if fd >= 0:
            notify_closing(fd)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire waits until cancelled."""
        self._now = trio.lowlevel.current_clock().current_time
        self.running = True
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                wake = math.inf
                for waits in self._waits.values():
                    expired = []
                    for side, deadline in waits.items():
                        if deadline > now:
                            wake = min(wake, deadline)
                            break
                        expired.append(side)
                    for side in expired:
                        del waits[side]
                        self._expire(side)
                self._wake = wake
                with trio.CancelScope(deadline=wake) as self._sleep:
                    await trio.sleep_forever()
        finally:
            self.running = False
            self._now = _not_running


def _not_running() -> float:
    raise RuntimeError("a timed wait on a WaitTimer that is not running")
