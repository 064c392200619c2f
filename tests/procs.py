"""Real processes for end-to-end tests: ``python sesh.py <role> ...`` and Debian's memcached.

Every sesh role prints one line ``... listening on URL`` on stdout when it is ready; :func:`start_sesh`
waits for that line and exposes the bound port, so tests always use ``--port 0``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.references import reference

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 20.0
_LISTENING = re.compile(r"listening on (\S+)")


class SeshProcess:
    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            # prefix: a command that execs the rest (``ip netns exec NS``), so the pid stays sesh's
            [*prefix, sys.executable, str(ROOT / "sesh.py"), *self.args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        if not self._ready.wait(STARTUP_TIMEOUT):
            self.kill()
            raise RuntimeError(f"sesh {' '.join(self.args)} did not start: {self.output()}")
        if not self.url:
            raise RuntimeError(f"sesh {' '.join(self.args)} exited at start: {self.output()}")
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1].split("/")[0])

    def _pump(self, pipe: object, lines: list[str]) -> None:
        assert pipe is not None
        try:
            for line in pipe:  # type: ignore[attr-defined]
                lines.append(line.rstrip("\n"))
                match = _LISTENING.search(line)
                if match and not self.url:
                    self.url = match.group(1)
                    self._ready.set()
        except (ValueError, OSError):
            pass  # the pipe was closed under us (close() gave up waiting for the end of the output)
        finally:
            self._ready.set()

    def close(self) -> None:
        """Kill the process, read what it wrote to the end, close its pipes."""
        self.kill()
        for pump in self._pumps:
            pump.join(5)  # the pipes end with the process (or with a child that inherited them)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe:
                pipe.close()

    def output(self) -> str:
        return "\n".join(self.stdout_lines + self.stderr_lines)

    def wait_for_line(self, *words: str, timeout: float = 10.0) -> str:
        """The first output line containing every one of ``words``, waiting for it to arrive: the pipes are
        read by threads, so a line written before the ready line may still be on its way."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stdout_lines + self.stderr_lines:
                if all(word in line for word in words):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no line with {words!r} after {timeout}s in:\n{self.output()}")
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def terminate(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


def start_sesh(*args: str, env: dict[str, str] | None = None) -> SeshProcess:
    return SeshProcess(args, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class MemcachedProcess:
    """Debian's memcached on a free loopback port: the reference implementation."""

    def __init__(self, *extra: str) -> None:
        binary = reference("memcached")
        self.port = free_port()
        user = ["-u", "root"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", *user, *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()

    def terminate(self) -> None:
        self.kill()
