"""The client side of ``sesh up``'s control socket, for ``sesh ctl``, ``sesh top`` and ``sesh drill``.

The protocol (see ``sesh/up/control.py``): one JSON line each way per connection. Where the socket is:
``$XDG_RUNTIME_DIR/sesh-up-PORT.sock`` (else the temp dir), named after the balancer's port.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

# An answer lists every member: a few hundred bytes each, a topology of dozens of members at most.
MAX_ANSWER = 1024 * 1024
# stop, then start, of a member: its graceful stop and its startup, each bounded by sesh up.
COMMAND_TIMEOUT = 120.0


class ControlError(Exception):
    """The control socket cannot be reached or answered an error; the message says which socket."""


def runtime_dir() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and Path(xdg).is_dir():
        return Path(xdg)
    return Path(tempfile.gettempdir())


def default_control_socket(port: int) -> str:
    return str(runtime_dir() / f"sesh-up-{port}.sock")




def find_sockets() -> list[str]:
    """Control sockets of running ``sesh up`` processes, in the default place."""
    found = []
    for path in sorted(runtime_dir().glob("sesh-up-*.sock")):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(str(path))
            except OSError:
                continue
        found.append(str(path))
    return found


def resolve_socket(explicit: str = "", port: int = 0, flag: str = "--control-socket") -> str:
    """The control socket to use: ``explicit``, the one named after ``port``, or the only one running."""
    if explicit:
        return explicit
    if port:
        return default_control_socket(port)
    found = find_sockets()
    if len(found) == 1:
        return found[0]
    if not found:
        raise ControlError(f"no sesh up is running (no control socket in {runtime_dir()}); start one, or pass {flag}")
    raise ControlError(f"several sesh up are running ({', '.join(found)}): pass {flag}")


@contextlib.contextmanager
def _translate(path: str) -> Iterator[None]:
    try:
        yield
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no sesh up answers on {path} (--control-socket)") from None
    except (TimeoutError, trio.TooSlowError):
        raise ControlError(f"sesh up on {path} did not answer in time") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to sesh up on {path}: {exc}") from None


def _decode(path: str, data: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        raise ControlError(f"sesh up on {path} answered something that is not JSON") from None
    if not isinstance(answer, dict):
        raise ControlError(f"sesh up on {path} answered {answer!r:.100}")
    return answer


def request_sync(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One command, blocking (``sesh ctl``)."""
    with _translate(path), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while b"\n" not in data and len(data) <= MAX_ANSWER:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    return _decode(path, data)


async def request(path: str, req: dict[str, Any], timeout: float) -> dict[str, Any]:  # noqa: ASYNC109 a one-shot request's whole deadline, applied inside with fail_after for every caller
    """One command from trio code (``sesh top``, ``sesh drill``)."""
    with _translate(path), trio.fail_after(timeout):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(json.dumps(req).encode() + b"\n")
            data = b""
            while b"\n" not in data and len(data) <= MAX_ANSWER:
                piece = await stream.receive_some(65536)
                if not piece:
                    break
                data += piece
    return _decode(path, data)
