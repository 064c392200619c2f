"""``sesh demo`` (what ``make demo`` runs): the demo topology on localhost, each role its own process.

Every role is started as ``python sesh.py <role> ...`` on a free port; the demo waits for each one's
``listening on URL`` line, prints what to open, and on Ctrl-C (or SIGTERM) stops them all with
SIGTERM, so each role takes its own graceful shutdown path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_LISTENING = re.compile(r"listening on (\S+)")
STARTUP_TIMEOUT = 20.0


@dataclass
class Child:
    label: str
    proc: subprocess.Popen[str]
    url: str = ""


def _start(label: str, *args: str) -> Child:
    sesh_py = Path(__file__).resolve().parent.parent / "sesh.py"
    proc = subprocess.Popen(
        [sys.executable, str(sesh_py), *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    child = Child(label, proc)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = _LISTENING.search(line)
        if match:
            child.url = match.group(1)
            print(f"  {label:<10} {child.url}", flush=True)
            # Keep draining its stdout so a chatty role never blocks on a full pipe.
            threading.Thread(target=_copy_lines, args=(label, proc.stdout), daemon=True).start()
            return child
    proc.kill()
    raise RuntimeError(f"{label} did not start (sesh {' '.join(args)})")


def _copy_lines(label: str, pipe: IO[str]) -> None:
    for line in pipe:
        print(f"[{label}] {line}", end="", flush=True)


def _start_topology(children: list[Child]) -> str:
    """The classic seed on localhost: two stores, two msm nodes (non-sticky) and a non-sticky bytraffic
    balancer in front of them, started in dependency order so each gets the ports of what it needs.
    Requests alternate between the nodes and the session follows. Returns the URL to open."""
    stores = [_start(f"store n{i}", "store", "--port", "0") for i in (1, 2)]
    children.extend(stores)
    memcached_nodes = ",".join(f"n{i}:127.0.0.1:{_port(store.url)}" for i, store in enumerate(stores, 1))
    nodes = []
    # Non-sticky nodes carry no route: no request is pinned to a node, every one may land anywhere.
    for name in ("node1", "node2"):
        node = _start(
            name, "node", "--mode", "msm", "--name", name, "--port", "0",
            "--memcached-nodes", memcached_nodes, "--no-sticky",
        )
        children.append(node)
        nodes.append(node)
    members = [f"--member=http://127.0.0.1:{_port(node.url)}" for node in nodes]
    balancer = _start(
        "balancer", "balancer", "--port", "0", *members, "--lbmethod", "bytraffic", "--manager-path", "/status",
    )
    children.append(balancer)
    return balancer.url


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def run_demo() -> int:
    print("sesh demo: starting", flush=True)
    children: list[Child] = []
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        front = _start_topology(children)
        nodes = [child for child in children if child.label.startswith("node")]
        print(
            f"\nOpen {front} and reload: requests alternate between the nodes, the Session_ID stays and the"
            f" hit count goes up by one.\n"
            f"JSON: curl -s -H 'Accept: application/json' -c /tmp/sesh.jar -b /tmp/sesh.jar {front}\n"
            f"Balancer manager: {front}status\n"
            + "".join(f"{child.label} status: {child.url}sesh/status\n" for child in nodes)
            + "Ctrl-C stops the demo.",
            flush=True,
        )
        while not stop:
            for child in children:
                if child.proc.poll() is not None:
                    print(f"sesh demo: {child.label} exited with {child.proc.returncode}", file=sys.stderr)
                    stop = True
            time.sleep(0.2)
    except RuntimeError as exc:
        print(f"sesh demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.proc.wait(15)
            except subprocess.TimeoutExpired:
                child.proc.kill()
        print("sesh demo: stopped", flush=True)
    return 0
