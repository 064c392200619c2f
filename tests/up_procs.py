"""A real ``python sesh.py up ...`` process for end-to-end tests, and the other new tools run for real.

:class:`UpProcess` starts ``sesh up`` on a free balancer port with its control socket in a temporary
directory, waits for its ``sesh up: ready`` line and keeps every line it prints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sesh.net.control_client import request_sync
from tests.procs import ROOT, free_port

STARTUP_TIMEOUT = 40.0
_READY = re.compile(r"sesh up: ready, open (\S+)")


def sesh_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "sesh.py"), *args]


def run_sesh(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sesh_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class UpProcess:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.socket = str(tmp / f"up-{self.port}.sock")
        self.args = ["up", "--port", str(self.port), "--control-socket", self.socket, *args]
        self.proc = subprocess.Popen(
            sesh_cmd(*self.args), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.url = ""
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                match = _READY.search(line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        if not ready.wait(STARTUP_TIMEOUT) or not self.url:
            self.kill()
            raise RuntimeError(f"sesh {' '.join(self.args)} did not start:\n{self.output()}")

    def output(self) -> str:
        return "\n".join(self.lines)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_sesh("ctl", "--control-socket", self.socket, *args)

    def members(self) -> dict[str, dict[str, Any]]:
        return {m["name"]: m for m in self.info()["members"]}

    def info(self) -> dict[str, Any]:
        """``sesh ctl --json list``'s document, read straight from the control socket (no process start:
        the tests that check `sesh ctl` itself run it)."""
        doc = request_sync(self.socket, {"cmd": "list"}, 10.0)
        assert doc["ok"], doc
        return doc

    def drill(self, *args: str, timeout: float = 90.0) -> tuple[int, dict[str, Any], str]:
        result = run_sesh("drill", "--url", self.url, "--control-socket", self.socket, "--json", *args,
                          timeout=timeout)
        try:
            report: dict[str, Any] = json.loads(result.stdout)
        except ValueError:
            raise AssertionError(f"drill printed no JSON report:\n{result.stdout}\n{result.stderr}") from None
        return result.returncode, report, result.stderr

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        self._pump.join(10)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone: it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def exists(path: str) -> bool:
    return Path(path).exists()
