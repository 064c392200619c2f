"""The control socket of ``sesh up``: a Unix socket speaking small JSON lines.

One request per connection: ``{"cmd": "list"}`` or ``{"cmd": "kill", "member": "node1"}``, one line of
at most :data:`MAX_REQUEST` bytes; one answer line, ``{"ok": true, ...}`` or ``{"ok": false, "error":
"..."}``. The request must arrive within :data:`REQUEST_TIMEOUT` seconds; a command runs at most
:data:`COMMAND_TIMEOUT` seconds. The socket is created mode 0600: whoever can connect can kill members.

Commands: ``list`` (the topology: every member's name, role, pid, URL and state, the balancer URL, the
manager path and token), ``start``, ``stop``, ``kill``, ``restart`` (with ``member``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import trio

from sesh.log import get_logger
from sesh.net.control_client import COMMAND_TIMEOUT
from sesh.up.supervisor import Supervisor

log = get_logger("control")
# A request is one short JSON object (a command and a member name); anything longer is not one.
MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0
COMMANDS = ("list", "start", "stop", "kill", "restart")


def describe(sup: Supervisor) -> dict[str, Any]:
    plan = sup.plan
    return {
        "balancer_url": plan.balancer_url,
        "manager_path": plan.manager_path,
        "manager_token": plan.manager_token,
        "control_socket": plan.control_socket,
        "mode": plan.mode,
        "sticky": plan.sticky,
        "pid": os.getpid(),
        "members": [dataclasses.asdict(status) for status in sup.statuses()],
    }


async def handle_command(sup: Supervisor, request: Any) -> dict[str, Any]:
    if not isinstance(request, dict) or request.get("cmd") not in COMMANDS:
        return {"ok": False, "error": f"expected {{\"cmd\": {'|'.join(COMMANDS)}}}, got {request!r:.200}"}
    cmd = request["cmd"]
    if cmd == "list":
        return {"ok": True, **describe(sup)}
    name = request.get("member")
    if not isinstance(name, str) or name not in sup.members:
        return {"ok": False, "error": f"{cmd}: no member {name!r} (members: {', '.join(sup.members)})"}
    log.info("control command", cmd=cmd, member=name)
    try:
        with trio.fail_after(COMMAND_TIMEOUT):
            status = await getattr(sup, cmd)(name)
    except (RuntimeError, trio.TooSlowError) as exc:
        return {"ok": False, "error": f"{cmd} {name}: {exc or 'timed out'}"}
    return {"ok": True, "member": dataclasses.asdict(status)}


async def serve_control(
    sup: Supervisor, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    claim(path)
    old = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    line = await _read_line(stream, MAX_REQUEST)
                try:
                    request = json.loads(line)
                except ValueError:
                    answer: dict[str, Any] = {"ok": False, "error": "a request is one line of JSON"}
                else:
                    answer = await handle_command(sup, request)
                await stream.send_all(json.dumps(answer).encode() + b"\n")
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
                log.debug("control connection dropped", error=exc)

    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(handle, [listener], handler_nursery=nursery)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def claim(path: str) -> None:
    """Remove a stale socket at ``path``; refuse when a live ``sesh up`` answers there."""
    target = Path(path)
    if not target.exists():
        return
    if not stat.S_ISSOCK(target.stat().st_mode):
        raise OSError(f"--control-socket: {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            target.unlink()
            return
    raise OSError(f"--control-socket: another sesh up listens on {path} (stop it, or pick another --port)")


async def _read_line(stream: trio.SocketStream, limit: int) -> bytes:
    data = b""
    while b"\n" not in data:
        piece = await stream.receive_some(limit + 1)
        if not piece:
            break
        data += piece
        if len(data) > limit:
            raise ValueError(f"line longer than {limit} bytes")
    return data.split(b"\n", 1)[0]
