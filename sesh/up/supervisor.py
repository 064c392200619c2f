"""Supervising the members of a ``sesh up`` topology: start, watch, stop, kill, restart.

Theory of operation: every member has one long-lived task (:meth:`Supervisor._keep`) that waits until
the member is wanted running, spawns it, pumps its output (each line prefixed with the member's name, or
written to its log file), marks it running once it listens, and waits for it to exit. An exit nobody
asked for is reported and the member stays down: nothing is restarted by surprise. Commands from the
control socket only change what is wanted and signal the process; they then wait for the state they
asked for.

Children die with ``sesh up`` even when it is SIGKILLed: each is spawned from the main thread with
``PR_SET_PDEATHSIG`` = SIGKILL set in a preexec_fn (the kernel sends it when the spawning *thread*
dies, which is why spawning never happens in a worker thread), and in its own process group so a
terminal's Ctrl-C reaches only ``sesh up``, which then stops each member through its own graceful path
(SIGTERM, ``--stop-timeout``, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio

from sesh.log import get_logger
from sesh.up.topology import MemberSpec, Plan

log = get_logger("supervisor")
_LISTENING = re.compile(r"listening on (\S+)")
PR_SET_PDEATHSIG = 1
# A member's line is cut here: a child is ours, but a runaway line must not grow without bound.
MAX_LINE = 64 * 1024
TAIL_LINES = 20  # the last lines of a member kept to explain a failed start

STARTING, RUNNING, STOPPING, STOPPED, KILLED, EXITED, FAILED = (
    "starting", "running", "stopping", "stopped", "killed", "exited", "failed",
)


def _die_with_parent(parent: int) -> Callable[[], None]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody will stop us
            os._exit(1)

    return preexec


@dataclass(frozen=True, slots=True)
class MemberStatus:
    name: str
    role: str
    pid: int
    url: str
    state: str
    port: int
    host: str
    exit_code: int | None
    starts: int
    since: float


class Member:
    def __init__(self, spec: MemberSpec) -> None:
        self.spec = spec
        self.state = STOPPED
        self.want_running = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.starts = 0
        self.attempts = 0
        self.since = time.time()
        self.intent = ""  # "stop" | "kill" while we are the reason it exits
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._changed = trio.Event()

    def set_state(self, state: str) -> None:
        self.state = state
        self.since = time.time()
        self.notify()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def status(self) -> MemberStatus:
        pid = self.proc.pid if self.proc is not None and self.state in (STARTING, RUNNING, STOPPING) else 0
        spec = self.spec
        return MemberStatus(spec.name, spec.role, pid, spec.url, self.state, spec.port, spec.host,
                            self.exit_code, self.starts, self.since)


class Supervisor:
    def __init__(self, plan: Plan, *, startup_timeout: float, stop_timeout: float, log_dir: str = "",
                 out: TextIO | None = None) -> None:
        self.plan = plan
        self.members = {spec.name: Member(spec) for spec in plan.members}
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_dir = Path(log_dir) if log_dir else None
        self.out = out
        self.width = max(len(name) for name in self.members)

    # -- the per-member tasks ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep every member as wanted until cancelled; then kill whatever still runs."""
        try:
            async with trio.open_nursery() as nursery:
                for member in self.members.values():
                    nursery.start_soon(self._keep, member)
                task_status.started()
        finally:
            for member in self.members.values():
                if member.proc is not None and member.proc.poll() is None:
                    member.proc.kill()
                    member.proc.wait()

    async def _keep(self, member: Member) -> None:
        while True:
            while not member.want_running:
                await member.wait_changed()
            await self._incarnation(member)

    async def _incarnation(self, member: Member) -> None:
        spec = member.spec
        member.attempts += 1
        read_fd, write_fd = os.pipe()
        try:
            member.proc = _spawn(spec, write_fd)
        except OSError as exc:
            os.close(read_fd)
            log.error("cannot start member", member=spec.name, error=exc)
            member.tail.append(f"cannot start: {exc}")
            member.want_running = False
            member.set_state(FAILED)
            return
        finally:
            os.close(write_fd)
        member.starts += 1
        member.exit_code = None
        member.intent = ""
        member.tail.clear()
        member.set_state(STARTING)
        proc = member.proc
        log.info("member started", member=spec.name, pid=proc.pid)
        pidfd = os.pidfd_open(proc.pid)
        pumped = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, member, trio.lowlevel.FdStream(read_fd), pumped)
                nursery.start_soon(self._wait_ready, member)
                await trio.lowlevel.wait_readable(pidfd)
                member.exit_code = proc.wait()
                # Give the pump a moment to drain what the member wrote last, then stop it (a grandchild
                # could hold the pipe open forever).
                with trio.move_on_after(0.5):
                    await pumped.wait()
                nursery.cancel_scope.cancel()
        finally:
            os.close(pidfd)
        if member.intent == "kill":
            state = KILLED
        elif member.intent == "stop":
            state = STOPPED
        elif member.state == STARTING:
            state = FAILED
        else:
            state = EXITED
        if not member.intent:
            log.warning("member exited on its own; not restarted", member=spec.name, code=member.exit_code)
        else:
            log.info("member " + state, member=spec.name, code=member.exit_code)
        member.want_running = False
        member.set_state(state)

    async def _pump(self, member: Member, stream: trio.lowlevel.FdStream, done: trio.Event) -> None:
        sink: TextIO | None = None
        if self.log_dir is not None:
            sink = (self.log_dir / f"{member.spec.name}.log").open("a", encoding="utf-8")
        prefix = f"{member.spec.name:<{self.width}} | "
        buffer = b""
        try:
            async with stream:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    if len(buffer) > MAX_LINE:
                        lines.append(buffer[:MAX_LINE])
                        buffer = b""
                    for raw in lines:
                        self._line(member, raw.decode("utf-8", "replace").rstrip("\r"), sink, prefix)
        finally:
            if buffer:
                self._line(member, buffer.decode("utf-8", "replace"), sink, prefix)
            if sink is not None:
                sink.close()
            done.set()

    def _line(self, member: Member, line: str, sink: TextIO | None, prefix: str) -> None:
        member.tail.append(line)
        if sink is not None:
            sink.write(line + "\n")
            sink.flush()
        elif self.out is not None:
            self.out.write(prefix + line + "\n")
            self.out.flush()
        if member.state == STARTING and member.spec.ready == "line" and _LISTENING.search(line):
            member.set_state(RUNNING)

    async def _wait_ready(self, member: Member) -> None:
        spec = member.spec
        with trio.move_on_after(self.startup_timeout):
            while member.state == STARTING:
                if spec.ready == "port" and await _accepts(spec.host, spec.port):
                    member.set_state(RUNNING)
                    return
                with trio.move_on_after(0.05):
                    await member.wait_changed()
            return
        if member.state == STARTING and member.proc is not None:
            log.error("member did not start in time; killing it", member=spec.name, timeout=self.startup_timeout)
            member.proc.kill()

    # -- commands ------------------------------------------------------------------------------------

    def member(self, name: str) -> Member:
        try:
            return self.members[name]
        except KeyError:
            raise KeyError(f"no member {name!r} (members: {', '.join(self.members)})") from None

    async def start(self, name: str) -> MemberStatus:
        member = self.member(name)
        if member.state in (STARTING, RUNNING):
            return member.status()
        while member.state == STOPPING:
            await member.wait_changed()
        before = member.attempts
        member.want_running = True
        member.notify()
        while member.attempts == before or member.state == STARTING:
            await member.wait_changed()
        if member.state != RUNNING:
            tail = " | ".join(list(member.tail)[-3:])
            raise RuntimeError(f"{name} did not start ({member.state}, code {member.exit_code}): {tail}")
        return member.status()

    async def stop(self, name: str) -> MemberStatus:
        """SIGTERM (the member's own graceful path), SIGKILL after --stop-timeout."""
        member = self.member(name)
        proc = member.proc
        if proc is None or member.state not in (STARTING, RUNNING, STOPPING):
            return member.status()
        member.intent = member.intent or "stop"
        member.want_running = False
        if member.state != STOPPING:
            member.set_state(STOPPING)
        _signal(proc, signal.SIGTERM)
        with trio.move_on_after(self.stop_timeout) as scope:
            await self._wait_down(member)
        if scope.cancelled_caught:
            log.warning("member did not stop in time; killing it", member=name, timeout=self.stop_timeout)
            _signal(proc, signal.SIGKILL)
            await self._wait_down(member)
        return member.status()

    async def kill(self, name: str) -> MemberStatus:
        member = self.member(name)
        proc = member.proc
        if proc is None or member.state not in (STARTING, RUNNING, STOPPING):
            return member.status()
        member.intent = "kill"
        member.want_running = False
        _signal(proc, signal.SIGKILL)
        await self._wait_down(member)
        return member.status()

    async def restart(self, name: str) -> MemberStatus:
        await self.stop(name)
        return await self.start(name)

    async def _wait_down(self, member: Member) -> None:
        while member.state in (STARTING, RUNNING, STOPPING):
            await member.wait_changed()

    async def start_all(self) -> None:
        """Stores, then nodes, then the balancer: each group once the one it depends on listens."""
        for role in ("store", "node", "balancer"):
            async with trio.open_nursery() as nursery:
                for spec in self.plan.by_role(role):
                    nursery.start_soon(self.start, spec.name)

    async def stop_all(self) -> None:
        """The balancer first (no new requests), then the nodes (they finish theirs), then the stores."""
        for role in ("balancer", "node", "store"):
            async with trio.open_nursery() as nursery:
                for spec in self.plan.by_role(role):
                    nursery.start_soon(self.stop, spec.name)

    def kill_all_now(self) -> None:
        for member in self.members.values():
            if member.proc is not None and member.proc.poll() is None:
                member.intent = member.intent or "kill"
                _signal(member.proc, signal.SIGKILL)

    def statuses(self) -> list[MemberStatus]:
        return [member.status() for member in self.members.values()]


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)


def _spawn(spec: MemberSpec, output_fd: int) -> subprocess.Popen[bytes]:
    """Start a member from this (the main) thread: see the module docstring for why not a worker thread."""
    return subprocess.Popen(
        spec.argv,
        stdin=subprocess.DEVNULL,
        stdout=output_fd,
        stderr=output_fd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_die_with_parent(os.getpid()),
        process_group=0,
        close_fds=True,
    )


async def _accepts(host: str, port: int) -> bool:
    try:
        with trio.fail_after(0.5):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError):
        return False
    await stream.aclose()
    return True
