"""End-to-end: real ``python sesh.py store`` processes, stopped with SIGTERM, restarted warm."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.procs import ROOT, SeshProcess
from tests.store_helpers import Wire

Start = Callable[..., SeshProcess]


def test_warm_restart_keeps_every_item(sesh: Start, tmp_path: Path) -> None:
    state = tmp_path / "store.state"
    first = sesh("store", "--port", "0", "--state-file", str(state))
    assert first.stdout_lines[0] == f"sesh store listening on memcached://127.0.0.1:{first.port}"
    wire = Wire(first.port)
    payload = b"".join(b"set sess%04d %d 0 %d\r\n%s\r\n" % (i, i, 10 + i % 7, b"v" * (10 + i % 7)) for i in range(2000))
    payload += b"set ttl 0 3600 3\r\nttl\r\nms Zm9v 3 b\r\nbin\r\n"
    assert wire.ask(payload).count(b"STORED\r\n") == 2001
    before = wire.ask(b"gets sess0000 sess1999 ttl\r\nmg ttl t\r\n")
    wire.close()
    assert first.terminate() == 0
    assert state.exists()
    first.wait_for_line("saved the state file items=2002")

    second = sesh("store", "--port", "0", "--state-file", str(state))
    wire = Wire(second.port)
    assert wire.ask(b"gets sess0000 sess1999 ttl\r\nmg ttl t\r\n").split(b"HD t")[0] == before.split(b"HD t")[0]
    assert 3590 <= int(wire.ask(b"mg ttl t\r\n")[4:-2]) <= 3600
    assert wire.ask(b"mg Zm9v b v\r\n") == b"VA 3\r\nbin\r\n"
    stats = dict(line.split(" ")[1:3] for line in wire.ask(b"stats\r\n").decode().split("\r\n")[:-2])
    assert stats["curr_items"] == "2002"
    # New CAS uniques stay above the restored ones, so a stale gets can never match by accident.
    new_unique = int(wire.ask(b"set fresh 0 0 1\r\nx\r\ngets fresh\r\n").split(b"\r\n")[1].split()[-1])
    assert new_unique > 2002
    wire.close()
    assert second.terminate() == 0


def test_damaged_state_file_is_reported_and_store_starts_empty(sesh: Start, tmp_path: Path) -> None:
    state = tmp_path / "store.state"
    state.write_bytes(b"SESHSTORE\x01" + b"\x00" * 5)
    proc = sesh("store", "--port", "0", "--state-file", str(state))
    proc.wait_for_line("truncated", "starting empty")
    wire = Wire(proc.port)
    assert wire.ask(b"get anything\r\n") == b"END\r\n"
    wire.close()
    proc.signal(signal.SIGINT)
    assert proc.wait() == 0
    # The graceful stop replaced the damaged file with a good (empty) one.
    again = sesh("store", "--port", "0", "--state-file", str(state))
    again.wait_for_line("loaded the state file items=0")


def test_bad_flags_name_the_flag() -> None:
    for args, needle in (
        (["-m", "1"], "-I/--max-item-size"),
        (["-I", "12"], "-I/--max-item-size"),
        (["-p", "70000"], "--port"),
        (["-m", "lots"], "--memory-limit"),
    ):
        result = subprocess.run(
            [sys.executable, str(ROOT / "sesh.py"), "store", *args],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )
        assert result.returncode == 2, args
        assert needle in result.stderr, (args, result.stderr)
