"""Real memcached clients against ``sesh store``: pymemcache and libmemcached's command-line tools."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from tests.procs import SeshProcess, start_sesh


@pytest.fixture(scope="module")
def store() -> Iterator[SeshProcess]:
    proc = start_sesh("store", "--port", "0")
    yield proc
    proc.kill()
    for pipe in (proc.proc.stdout, proc.proc.stderr):
        if pipe:
            pipe.close()


@pytest.fixture
def client(store: SeshProcess) -> Iterator[Client]:
    c = Client(("127.0.0.1", store.port), connect_timeout=5, timeout=5)
    yield c
    c.close()


def test_pymemcache_basic_operations(client: Client) -> None:
    assert client.set("pk", b"value", expire=100) is True
    assert client.get("pk") == b"value"
    assert client.add("pk", b"other", noreply=False) is False
    assert client.replace("pk", b"v2", noreply=False) is True
    assert client.append("pk", b"+", noreply=False) is True
    assert client.prepend("pk", b"-", noreply=False) is True
    assert client.get("pk") == b"-v2+"
    assert client.get_many(["pk", "nope"]) == {"pk": b"-v2+"}
    assert client.delete("pk", noreply=False) is True
    assert client.get("pk") is None
    assert client.touch("nope", 10, noreply=False) is False
    assert client.version().startswith(b"1.6.18")


def test_pymemcache_counters_and_cas(client: Client) -> None:
    client.set("n", b"41")
    assert client.incr("n", 1) == 42
    assert client.decr("n", 50) == 0
    value, unique = client.gets("n")
    assert value == b"0 "  # memcached writes a shorter result in place, padded with spaces
    assert client.cas("n", b"1", unique, noreply=False) is True
    assert client.cas("n", b"2", unique, noreply=False) is False
    assert client.get("n") == b"1"


def test_pymemcache_cas_race_between_threads(store: SeshProcess) -> None:
    """Many clients increment one counter with gets/cas retries: no update is lost."""
    setup = Client(("127.0.0.1", store.port))
    setup.set("race", b"0")
    rounds = 50

    def worker() -> None:
        c = Client(("127.0.0.1", store.port), timeout=5)
        for _ in range(rounds):
            for _attempt in range(1000):
                value, unique = c.gets("race")
                if c.cas("race", str(int(value) + 1).encode(), unique, noreply=False):
                    break
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert setup.get("race") == str(4 * rounds).encode()
    setup.close()


def test_pymemcache_stats(client: Client) -> None:
    stats = client.stats()
    for name in (b"curr_items", b"total_items", b"bytes", b"curr_connections", b"total_connections",
                 b"cmd_get", b"cmd_set", b"get_hits", b"get_misses", b"evictions", b"expired_unfetched",
                 b"limit_maxbytes", b"uptime", b"time", b"version"):
        assert name in stats
    assert stats[b"limit_maxbytes"] == 64 * 1024 * 1024
    assert client.stats("settings")[b"item_size_max"] == 1024 * 1024


def _tool(name: str) -> str:
    # Debian ships libmemcached's tools as memc* (memccat, memccp, ...); upstream names them mem*.
    for candidate in (f"memc{name}", f"mem{name}"):
        path = shutil.which(candidate)
        if path:
            return path
    pytest.skip(f"Debian's libmemcached-tools is not installed (memc{name} not found): 'make test' as root or "
                "'sudo bash .ci/debian-deps' installs it")


def _run(store: SeshProcess, tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool(tool), f"--servers=127.0.0.1:{store.port}", *args],
        capture_output=True, text=True, timeout=30, cwd=cwd,
    )


def test_libmemcached_tools(store: SeshProcess, tmp_path: Path) -> None:
    (tmp_path / "greeting.txt").write_text("hello from memcp\n")
    assert _run(store, "cp", "greeting.txt", cwd=tmp_path).returncode == 0
    cat = _run(store, "cat", "greeting.txt")
    assert cat.returncode == 0 and cat.stdout.startswith("hello from memcp\n")
    assert _run(store, "exist", "greeting.txt").returncode == 0
    assert _run(store, "touch", "--expire=100", "greeting.txt").returncode == 0
    assert _run(store, "rm", "greeting.txt").returncode == 0
    assert _run(store, "cat", "greeting.txt").returncode != 0
    assert _run(store, "exist", "greeting.txt").returncode != 0
    stat = _run(store, "stat")
    assert stat.returncode == 0 and "curr_items" in stat.stdout and "version: 1.6.18" in stat.stdout
    assert _run(store, "ping").returncode == 0
    assert _run(store, "flush").returncode == 0


def test_libmemcached_protocol_conformance(store: SeshProcess) -> None:
    result = subprocess.run(
        [_tool("capable"), "-h", "127.0.0.1", "-p", str(store.port), "-a"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All tests passed" in result.stdout
    assert "[fail]" not in result.stdout
