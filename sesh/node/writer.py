"""The bounded queue of writes a backend does after the response (msm's ``--session-backup-async``
and old-key cleanups; any store-backed backend can use it).

Jobs are coroutine functions; a few workers run them, so one slow write does not hold up the others.
A full queue refuses a job (the caller counts the drop: the session is still in memory and the next
change writes it again). At shutdown the queue is drained: once the node's requests are all closed and
every queued job has run, :meth:`WriteQueue.run` returns; if the node's grace period runs out first, what
is still queued is written under a shielded, bounded scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from sesh.log import Log, get_logger
from sesh.net.shutdown import Shutdown

Job = Callable[[], Awaitable[None]]
# Enough for a burst of thousands of changed sessions per second at a few ms per write; beyond that the
# store is too slow for the load, and growing the queue would only turn that into memory use.
QUEUE_SIZE = 1024
# Each worker waits one store round trip per job, so the queue drains at about WORKERS / round trip; the
# workers' calls are pipelined over the node client's few connections, so many workers cost little.
WORKERS = 32
_IDLE_POLL = 0.02  # how often a stopping node checks whether its last requests and writes are done


class WriteQueue:
    def __init__(
        self, *, size: int = QUEUE_SIZE, workers: int = WORKERS, flush_timeout: float = 5.0, log: Log | None = None
    ) -> None:
        self._send, self._receive = trio.open_memory_channel[Job](size)
        self._log = log if log is not None else get_logger("node")
        self.workers = workers
        self.flush_timeout = flush_timeout
        self._busy = 0

    def __len__(self) -> int:
        return self._send.statistics().current_buffer_used

    def put_nowait(self, job: Job) -> bool:
        """Queue ``job``; False when the queue is full (the caller counts the drop)."""
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            return False
        return True

    async def _work(self) -> None:
        async for job in self._receive:
            self._busy += 1
            try:
                await self._run(job)
            finally:
                self._busy -= 1

    async def run(
        self,
        shutdown: Shutdown,
        quiescent: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the workers until shutdown, then until ``quiescent()`` and the queue is empty."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.workers):
                    nursery.start_soon(self._work)
                task_status.started()
                await shutdown.wait()
                # Polling, once per shutdown: the condition spans the node's requests and the workers.
                while not (quiescent() and len(self) == 0 and self._busy == 0):  # noqa: ASYNC110
                    await trio.sleep(_IDLE_POLL)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.flush_timeout):
                while True:
                    try:
                        job = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    await self._run(job)

    async def _run(self, job: Job) -> None:
        try:
            await job()
        except Exception as exc:  # a bug in a job must not stop the others
            self._log.exception("a store write failed unexpectedly", error=repr(exc))
