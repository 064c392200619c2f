"""``sesh top``: poll, render, and in live mode read keys and act through ``sesh up`` or the manager.

Keys come from the terminal in cbreak mode (no echo, no line buffering), read by one task; each poll
replaces the snapshot and the frame is redrawn in place by rich.live (no flicker: only changed lines are
rewritten). An action runs in its own task so a slow restart never freezes the dashboard.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import termios
import tty
from collections.abc import Iterator
from urllib.parse import urlencode

import trio
from rich.console import Console
from rich.live import Live

from sesh.config import TopConfig
from sesh.net import control_client as control
from sesh.net import simple_http as http
from sesh.top.collect import Collector
from sesh.top.render import render
from sesh.top.snapshot import Snapshot

UP, DOWN = "\x1b[A", "\x1b[B"


def _socket_for(cfg: TopConfig) -> str:
    """The sesh up to watch: --control-socket, --up, or the default when no other target is given."""
    if cfg.control_socket:
        return cfg.control_socket
    if cfg.up or not (cfg.balancers or cfg.nodes or cfg.stores):
        return control.resolve_socket("", 0)
    return ""


def run_top(cfg: TopConfig) -> int:
    try:
        socket = _socket_for(cfg)
    except control.ControlError as exc:
        print(f"sesh top: {exc}", file=sys.stderr)
        return 2
    collector = Collector(cfg, socket)
    if cfg.json or cfg.once:
        snap = trio.run(_two_polls, collector)
        if cfg.json:
            print(json.dumps(snap.as_dict(), indent=1))
        else:
            Console().print(render(snap))
        return 0
    return trio.run(live, cfg, collector, None)


async def _two_polls(collector: Collector) -> Snapshot:
    """One snapshot with rates: two polls a short interval apart."""
    await collector.poll()
    await trio.sleep(min(0.5, collector.cfg.interval))
    return await collector.poll()


@contextlib.contextmanager
def _cbreak() -> Iterator[int | None]:
    """stdin in cbreak mode (keys one at a time, no echo) when it is a terminal; restored on exit."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield os.dup(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        os.set_blocking(fd, True)


class Dashboard:
    def __init__(self, cfg: TopConfig, collector: Collector) -> None:
        self.cfg = cfg
        self.collector = collector
        self.snap: Snapshot | None = None
        self.selected = ""
        self.message = ""
        self.quit = trio.Event()
        self.changed = trio.Event()

    def redraw(self) -> None:
        self.changed.set()

    def names(self) -> list[str]:
        snap = self.snap
        if snap is None:
            return []
        if snap.members:  # in the order they are drawn: balancer, nodes, stores
            order = {"balancer": 0, "node": 1, "store": 2}
            return [m.name for m in sorted(snap.members, key=lambda m: order.get(m.role, 3))]
        return [n.name for n in snap.nodes] + [s.name for s in snap.stores]

    def move(self, step: int) -> None:
        names = self.names()
        if not names:
            return
        index = names.index(self.selected) if self.selected in names else (-1 if step > 0 else 0)
        self.selected = names[(index + step) % len(names)]

    async def act(self, key: str) -> None:
        name = self.selected
        if not name:
            self.message = "select a member first (↑/↓)"
            return
        if key in "skr":
            cmd = {"s": "stop", "k": "kill", "r": "restart"}[key]
            if not self.collector.socket:
                self.message = f"{cmd}: only members of a sesh up can be controlled (sesh top --up)"
                return
            self.message = f"{cmd} {name}..."
            self.redraw()
            try:
                answer = await control.request(self.collector.socket, {"cmd": cmd, "member": name},
                                               control.COMMAND_TIMEOUT)
                self.message = (f"{cmd} {name}: {answer['member']['state']}" if answer.get("ok")
                                else f"{cmd} {name}: {answer.get('error')}")
            except control.ControlError as exc:
                self.message = f"{cmd} {name}: {exc}"
        else:
            self.message = await self.drain(name, key == "d")

    async def drain(self, name: str, drain: bool) -> str:
        """d/e: set or clear the member's drain flag (+N) in every balancer through its manager."""
        snap = self.snap
        verb = "drain" if drain else "enable"
        if snap is None:
            return f"{verb}: nothing polled yet"
        node = next((n for n in snap.nodes if n.name == name), None)
        if node is None:
            return f"{verb}: {name} is not a balancer member (select a node)"
        token = snap.manager_token
        if not token:
            return f"{verb}: the manager token is unknown (sesh top --manager-token)"
        done = []
        for bal in snap.balancers:
            member = next((m for m in bal.members if m.url.rstrip("/") == node.url.rstrip("/")), None)
            if member is None:
                continue
            manager = bal.url.rstrip("/") + self.cfg.manager_path
            try:
                page = json.loads((await http.get(manager, self.cfg.timeout, [("Accept", "application/json")])).body)
                form = {"w": member.url, "w_status_N": "1" if drain else "0", "token": token, "nonce": page["nonce"]}
                if not drain:
                    form["w_status_D"] = "0"
                host, port, path = http.split_url(manager)
                conn = http.Connection(host, port)
                try:
                    with trio.fail_after(self.cfg.timeout):
                        reply = await conn.request("POST", path, [
                            ("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json"),
                        ], urlencode(form).encode())
                finally:
                    await conn.close()
                if reply.status != 200:
                    return f"{verb} {name}: the manager answered {reply.status}: {reply.body[:100].decode()}"
                done.append(bal.name)
            except (http.HTTPFailure, trio.TooSlowError, ValueError, KeyError) as exc:
                return f"{verb} {name}: {exc}"
        return f"{verb} {name}: done in {', '.join(done)}" if done else f"{verb}: {name} is in no balancer"

    async def poll_loop(self) -> None:
        while True:
            self.snap = await self.collector.poll()
            self.redraw()
            await trio.sleep(self.cfg.interval)

    async def key_loop(self, fd: int, nursery: trio.Nursery) -> None:
        stream = trio.lowlevel.FdStream(fd)
        pending = ""
        async with stream:
            while not self.quit.is_set():
                data = await stream.receive_some(64)
                if not data:
                    return
                pending += data.decode("utf-8", "replace")
                while pending:
                    if pending.startswith("\x1b"):
                        if len(pending) < 3:
                            break
                        key, pending = pending[:3], pending[3:]
                    else:
                        key, pending = pending[0], pending[1:]
                    if key in ("q", "Q"):
                        self.quit.set()
                        return
                    if key in (UP, "\x1b[D"):
                        self.move(-1)
                    elif key in (DOWN, "\x1b[C", "\t"):
                        self.move(1)
                    elif key in ("s", "k", "r", "d", "e"):
                        nursery.start_soon(self._act_and_redraw, key)
                    self.redraw()

    async def _act_and_redraw(self, key: str) -> None:
        await self.act(key)
        self.redraw()
        self.snap = await self.collector.poll()
        self.redraw()


async def live(cfg: TopConfig, collector: Collector, stop: trio.Event | None, banner: str = "") -> int:
    """The live dashboard until q (or ``stop``), on the terminal's alternate screen like top(1), so a
    frame never scrolls; ``banner`` (``sesh demo``'s URLs) is shown under the title."""
    board = Dashboard(cfg, collector)
    console = Console()
    with _cbreak() as fd, Live(console=console, auto_refresh=False, screen=console.is_terminal,
                               transient=False) as view:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(board.poll_loop)
            if fd is not None:
                nursery.start_soon(board.key_loop, fd, nursery)

            async def watch_stop() -> None:
                if stop is not None:
                    await stop.wait()
                    board.quit.set()

            nursery.start_soon(watch_stop)

            async def draw() -> None:
                while True:
                    await board.changed.wait()
                    board.changed = trio.Event()
                    if board.snap is not None:
                        frame = render(board.snap, board.selected, board.message, live=True, banner=banner)
                        view.update(frame, refresh=True)

            nursery.start_soon(draw)
            await board.quit.wait()
            nursery.cancel_scope.cancel()
    return 0
