"""``sesh node --workers N``: processes sharing the port with SO_REUSEPORT (real processes, real store)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import trio

from tests.http_client import get
from tests.msm_helpers import Browser, StoreProc, nodes_flag
from tests.procs import SeshProcess
from tests.up_procs import pid_alive, run_sesh


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


async def test_workers_share_the_port_and_every_session(
    sesh: Callable[..., SeshProcess], store_proc: Callable[[str], StoreProc]
) -> None:
    stores = [store_proc("sesh-store"), store_proc("sesh-store")]
    node = sesh("node", "--mode", "msm", "--no-sticky", "--port", "0", "--workers", "2",
                "--memcached-nodes", nodes_flag(stores))
    [worker] = _children(node.proc.pid)
    browser = Browser()
    # Each hit is a fresh connection, which the kernel gives to either worker: the count still goes up
    # by one every time, because the session is in the store, not in a worker.
    for expected in range(1, 25):
        assert (await browser.hit(node.port))["hits"] == expected
    answered = set()
    with trio.fail_after(20):
        while answered != {0, 1}:
            reply = await get(node.port, "/sesh/status")
            answered.add(json.loads(reply.body)["worker"])
    node.proc.kill()  # SIGKILL: the worker must not outlive it, holding the port
    node.proc.wait(10)
    with trio.fail_after(10):
        while pid_alive(worker):  # noqa: ASYNC110 a process has no event to wait on
            await trio.sleep(0.02)


def test_workers_are_refused_where_sessions_live_in_one_process() -> None:
    for mode in (("--mode", "local"), ("--mode", "msm", "--sticky", "--memcached-nodes", "n1:127.0.0.1:1")):
        result = run_sesh("node", "--port", "0", "--workers", "2", *mode, timeout=30)
        assert result.returncode != 0
        assert "--workers" in result.stderr and "--no-sticky" in result.stderr, result.stderr
