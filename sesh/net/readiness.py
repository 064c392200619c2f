"""Batched readiness: one task waits for many sockets at once and serves every ready one in one pass.

Why. A server whose connections each have one request in flight wakes one trio task per request: a
task switch, an ``epoll_ctl`` to re-arm the socket, a trip through the scheduler, which at memcached's
rates cost more than the command itself. When the work a socket's input starts is synchronous (the
store's commands run in memory), one task can do it for all of them: it waits, through trio, on an
``epoll`` object of its own (an epoll descriptor is itself pollable), and when woken takes every
ready socket from it with ``poll(0)`` and calls each one's handler in turn. The sockets stay
registered (level-triggered) for as long as they are served this way: no ``epoll_ctl`` per request,
one wake-up per batch.

Structure. :meth:`ReadinessLoop.run` is a task in the server's nursery, started before the
connections and cancelled after they have all ended. A connection's own task hands its socket over
with :meth:`ReadinessLoop.serve_while` and stays parked (costing nothing) while the loop calls its
handler; the handler returns False when the connection needs its task again (a send that would
block, a command still arriving, the end of the connection), and ``serve_while`` returns. An
exception raised by a handler is raised in the connection's task, not in the loop's, so one
connection's trouble is that connection's. Cancelling the parked task (shutdown) takes the socket out
of the loop.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable

import outcome
import trio
from trio.lowlevel import Abort, RaiseCancelT, Task, current_task, reschedule, wait_task_rescheduled

# Handler: called in the loop's task each time the socket is readable; True keeps it in the loop.
ReadyHandler = Callable[[], bool]


class ReadinessLoop:
    """Serves the readable sockets handed to it, many per wake-up (see the module's docstring)."""

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        # fd -> (handler, the parked task it belongs to)
        self._served: dict[int, tuple[ReadyHandler, Task]] = {}

    @property
    def running(self) -> bool:
        return self._epoll is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve ready sockets until cancelled."""
        epoll = self._epoll = select.epoll()
        served = self._served
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    entry = served.get(fd)
                    if entry is None:
                        continue  # handed back earlier in this batch
                    handler, task = entry
                    try:
                        keep = handler()
                    except Exception as exc:  # the connection's, raised in its task
                        self._hand_back(fd, task, outcome.Error(exc))
                        continue
                    if not keep:
                        self._hand_back(fd, task, outcome.Value(None))
        finally:
            self._epoll = None
            epoll.close()
            for fd, (_, task) in list(served.items()):
                self._hand_back(fd, task, outcome.Error(trio.ClosedResourceError("the readiness loop stopped")))

    async def serve_while(self, fd: int, handler: ReadyHandler) -> None:
        """Park the calling task while the loop calls ``handler`` each time ``fd`` is readable, until it
        returns False (or raises: raised here). The caller must not close ``fd`` meanwhile."""
        epoll = self._epoll
        if epoll is None:
            raise RuntimeError("serve_while on a readiness loop that is not running")
        await trio.lowlevel.checkpoint_if_cancelled()
        epoll.register(fd, select.EPOLLIN)
        self._served[fd] = (handler, current_task())

        def abort(_: RaiseCancelT) -> Abort:
            self._forget(fd)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def _hand_back(self, fd: int, task: Task, result: outcome.Outcome[None]) -> None:
        self._forget(fd)
        reschedule(task, result)

    def _forget(self, fd: int) -> None:
        del self._served[fd]
        if self._epoll is not None:
            # A descriptor closed behind our back has left the epoll set already: nothing to undo,
            # and no reason to stop serving the others.
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
