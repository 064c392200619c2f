"""Several worker processes sharing one listening port (``--workers N``; the balancer also takes ``auto``,
one per CPU, its default), as httpd's MPMs and Tomcat's threads use every core of a machine and one trio
process uses one.

The parent binds N listening sockets to the same port with SO_REUSEPORT (the kernel spreads
connections over them) and forks N - 1 workers before starting trio; it then serves as worker 0 itself.
When worker 0 stops it asks the others to stop (SIGTERM) and waits for them, killing those still running
after the grace period; a worker whose parent dies (even SIGKILLed) gets SIGKILL from the kernel
(``PR_SET_PDEATHSIG``), so no orphan keeps serving the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import time
from collections.abc import Callable

from sesh.net.server import LISTEN_BACKLOG

PR_SET_PDEATHSIG = 1


def auto_workers(limit: int) -> int:
    """``--workers auto``: one process per CPU this one may run on (its affinity mask, which taskset and
    cgroup cpusets narrow), at most ``limit``."""
    return max(1, min(len(os.sched_getaffinity(0)), limit))


def reuseport_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port`` (port 0: the first bind picks one, the others join).

    SO_REUSEPORT would also let them join a group another process (of the same user) already listens
    with, silently sharing its traffic: a claim bound first without it fails on a port in use, as a
    single listener does, and is held (not listening) until the group listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    claim = socket.socket(family, socket.SOCK_STREAM)
    socks: list[socket.socket] = []
    try:
        claim.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        claim.bind((host, port))
        port = claim.getsockname()[1]
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    finally:
        claim.close()
    return socks


def run_workers(socks: list[socket.socket], run: Callable[[int, socket.socket], int], grace: float) -> int:
    """Fork a worker per socket after the first, each running ``run(worker, sock)`` (and leaving with its
    code, without the parent's cleanup); run worker 0 here; then stop the others."""
    children: list[int] = []
    parent = os.getpid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    for worker in range(1, len(socks)):
        pid = os.fork()
        if pid == 0:  # the child: serve, then leave without running the parent's cleanup
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the prctl: nobody would stop us
                os._exit(1)
            for other, sock in enumerate(socks):
                if other != worker:
                    sock.close()
            code = 1
            try:
                code = run(worker, socks[worker])
            finally:
                os._exit(code)
        children.append(pid)
    for sock in socks[1:]:
        sock.close()
    try:
        return run(0, socks[0])
    finally:
        stop_children(children, grace)


def stop_children(children: list[int], grace: float) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 1
    for pid in children:
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)
