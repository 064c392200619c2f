"""The one shutdown path every role shares.

signal -> stop accepting -> deadline on in-flight work -> shielded cleanup -> a second signal forces the
exit. A role's main coroutine receives a :class:`Shutdown`; listeners stop accepting when it is
requested, and code that waits for *new* work (an idle keep-alive connection waiting for its next
request, say) wraps that wait in :meth:`Shutdown.cancel_on_request` so it ends at once, while work
already in progress runs on until the grace deadline.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial

import trio

from sesh.log import get_logger

log = get_logger("shutdown")

class Shutdown:
    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    def request(self, reason: str = "requested") -> None:
        if self.requested:
            return
        self.requested = True
        self.reason = reason
        self._event.set()
        for scope in list(self._scopes):
            scope.cancel()

    async def wait(self) -> None:
        await self._event.wait()

    def watch(self, scope: trio.CancelScope) -> None:
        """Cancel ``scope`` when shutdown is requested (at once if it already was). The cheap form of
        :meth:`cancel_on_request` for hot paths; pair it with :meth:`unwatch`."""
        if self.requested:
            scope.cancel()
        self._scopes.add(scope)

    def unwatch(self, scope: trio.CancelScope) -> None:
        self._scopes.discard(scope)

    @contextmanager
    def cancel_on_request(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that is cancelled as soon as shutdown is requested (or already was)."""
        scope = trio.CancelScope()
        if self.requested:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)


RoleMain = Callable[[Shutdown], Awaitable[None]]


async def run_until_signalled(role_main: RoleMain, *, grace: float, name: str = "sesh") -> None:
    """Run ``role_main`` until it returns, or until SIGINT/SIGTERM and its grace period end."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            shutdown = Shutdown()

            async def watch_signals() -> None:
                async for signum in signals:
                    if not shutdown.requested:
                        log.info(
                            f"{signal.Signals(signum).name} received, stopping "
                            f"(in-flight work gets {grace:g}s; signal again to force)"
                        )
                        shutdown.request(signal.Signals(signum).name)
                        nursery.cancel_scope.deadline = trio.current_time() + grace
                    else:
                        log.warning(f"{signal.Signals(signum).name} received again: forced stop")
                        nursery.cancel_scope.cancel()
                        return

            async def main_then_stop() -> None:
                try:
                    await role_main(shutdown)
                finally:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            nursery.start_soon(main_then_stop)


def run_role(role_main: RoleMain, *, grace: float, name: str) -> int:
    """Synchronous entry point for a role: runs trio, returns the process exit code."""
    try:
        trio.run(partial(run_until_signalled, role_main, grace=grace, name=name))
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # Nurseries wrap errors in groups; a lone error (a busy port, a bad --app) is re-raised as
        # itself so the command line can report it plainly.
        leaf = single_leaf(group)
        if leaf is None:
            raise
        raise leaf from None
    return 0


def single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested single-member groups, or None if there are several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
