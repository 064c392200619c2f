"""``sesh up`` and ``sesh ctl``: run a topology under supervision; talk to it over its control socket."""

from __future__ import annotations

import functools
import json
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import trio

from sesh.config import CtlConfig, UpConfig
from sesh.log import get_logger
from sesh.net.control_client import ControlError, request_sync, resolve_socket
from sesh.up.control import claim, serve_control
from sesh.up.supervisor import Supervisor
from sesh.up.topology import REDIS_SETUP, Plan, plan

log = get_logger()
Body = Callable[[Supervisor, Plan], Awaitable[None]]


def banner(cfg: UpConfig, p: Plan) -> str:
    shape = f"{p.mode} {'sticky' if p.sticky else 'non-sticky'}, {len(p.by_role('node'))} nodes"
    stores = [m for m in p.by_role("store") if m.name != REDIS_SETUP]
    if stores:
        shape += f", {len(stores)} stores ({cfg.store})"
    width = max(len(m.name) for m in p.members)
    lines = [f"sesh up: {shape}"]
    for m in p.members:
        extra = ""
        if m.role == "balancer":
            extra = f"  manager {m.url.rstrip('/')}{p.manager_path}"
        elif m.role == "node":
            extra = f"  status {m.url}sesh/status"
        lines.append(f"  {m.name:<{width}}  {m.url}{extra}")
    lines.append(f"  manager token: {p.manager_token}")
    lines.append(f"  control socket: {p.control_socket}  (sesh ctl list | stop | start | kill | restart MEMBER)")
    if cfg.log_dir:
        lines.append(f"  logs: {cfg.log_dir}/MEMBER.log")
    return "\n".join(lines)


async def run_topology(cfg: UpConfig, p: Plan, out: TextIO, body: Body | None = None, *,
                       echo: TextIO | None = None) -> int:
    """Start every member, run ``body`` (default: until SIGINT/SIGTERM), stop every member gracefully.
    ``echo`` receives the members' prefixed log lines (unless --log-dir sends them to files)."""
    sup = Supervisor(p, startup_timeout=cfg.startup_timeout, stop_timeout=cfg.stop_timeout,
                     log_dir=cfg.log_dir, out=echo)
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            stop = trio.Event()

            async def watch_signals() -> None:
                async for signum in signals:
                    if stop.is_set():
                        log.warning("second signal: killing every member now")
                        sup.kill_all_now()
                    else:
                        log.info("stopping every member", signal=signal.Signals(signum).name)
                        stop.set()

            nursery.start_soon(watch_signals)
            await nursery.start(sup.run)
            await nursery.start(serve_control, sup, p.control_socket)
            started = False
            with trio.CancelScope() as starting:
                nursery.start_soon(_cancel_when, stop, starting)
                try:
                    await sup.start_all()
                    started = True
                except* RuntimeError as group:
                    for exc in group.exceptions:
                        print(f"sesh up: {exc}", file=sys.stderr, flush=True)
                    code = 1
            if started and not stop.is_set():
                print(banner(cfg, p), file=out, flush=True)
                print(f"sesh up: ready, open {p.balancer_url} (Ctrl-C stops everything)", file=out, flush=True)
                with trio.CancelScope() as running:
                    nursery.start_soon(_cancel_when, stop, running)
                    if body is None:
                        await trio.sleep_forever()
                    else:
                        await body(sup, p)
            await sup.stop_all()
            nursery.cancel_scope.cancel()
    print("sesh up: stopped", file=out, flush=True)
    return code


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def run_up(cfg: UpConfig) -> int:
    p = plan(cfg)
    claim(p.control_socket)  # before anything starts: another sesh up there is an error, a stale file is not
    if cfg.log_dir:
        from pathlib import Path

        Path(cfg.log_dir).mkdir(parents=True, exist_ok=True)
    try:
        return trio.run(functools.partial(run_topology, cfg, p, sys.stdout, None, echo=sys.stdout))
    finally:
        if p.scratch_dir:  # every member has stopped (or been killed): nothing writes there any more
            shutil.rmtree(p.scratch_dir, ignore_errors=True)


# -- sesh ctl ---------------------------------------------------------------------------------------------


def format_list(answer: dict[str, Any]) -> str:
    rows = [("NAME", "ROLE", "PID", "URL", "STATE")]
    for m in answer.get("members", []):
        state = m["state"] + (f" (code {m['exit_code']})" if m.get("exit_code") not in (None, 0) else "")
        rows.append((m["name"], m["role"], str(m["pid"] or "-"), m["url"], state))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def run_ctl(cfg: CtlConfig) -> int:
    action = cfg.action
    if action in ("stop", "start", "kill", "restart") and not cfg.member:
        print(f"sesh ctl {action}: which member? (e.g. sesh ctl {action} node1; sesh ctl list shows them)",
              file=sys.stderr)
        return 2
    try:
        path = resolve_socket(cfg.control_socket, cfg.port)
        req: dict[str, Any] = {"cmd": "list" if action == "info" else action}
        if action not in ("list", "info"):
            req["member"] = cfg.member
        answer = request_sync(path, req, cfg.timeout)
    except ControlError as exc:
        print(f"sesh ctl: {exc}", file=sys.stderr)
        return 1
    if cfg.json:
        print(json.dumps(answer, indent=1))
    elif not answer.get("ok"):
        pass
    elif action == "list":
        print(format_list(answer))
    elif action == "info":
        print(f"balancer {answer['balancer_url']}\nmanager  {answer['balancer_url'].rstrip('/')}"
              f"{answer['manager_path']}\ntoken    {answer['manager_token']}\nsocket   {answer['control_socket']}")
    else:
        m = answer["member"]
        print(f"{m['name']}: {m['state']}" + (f" (pid {m['pid']})" if m["pid"] else ""))
    if not answer.get("ok"):
        print(f"sesh ctl: {answer.get('error', 'failed')}", file=sys.stderr)
        return 1
    return 0
