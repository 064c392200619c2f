"""One logger for every role, with levels, a stable greppable line format and escaped values.

Every line is ``TIME ROLE[/COMPONENT] NAME LEVEL message key=value ...``, for example::

    2026-12-01T20:31:02.123Z node/msm node1 WARNING store node down node=n1 peer=127.0.0.1:11211

``sesh up`` and ``sesh top`` read these lines, so the shape is part of the interface: the time is UTC
with milliseconds, ROLE is the subcommand, NAME the instance (node name, balancer or store port), LEVEL
one of DEBUG INFO WARNING ERROR CRITICAL. Control characters in the message and in every value are
escaped (``\\n``, ``\\x1b``), so no client, stored value or token holder can forge a log line; a value
with a space, ``=`` or a quote is quoted.

Libraries' own loggers (trio's ``serve_listeners`` reports EMFILE through ``logging``) go through the
same handler, so nothing they say is lost or formatted differently.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error", "critical")
_ROOT = "sesh"
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1, Unicode line separators) made visible."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable() or char == " ":
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def format_value(value: Any) -> str:
    text = escape(value if isinstance(value, str) else str(value))
    if text == "" or any(c in text for c in ' ="'):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class LineFormatter(logging.Formatter):
    """The one line format; ``role`` and ``name`` are fixed per process by :func:`configure`."""

    def __init__(self, role: str, name: str) -> None:
        super().__init__()
        self.role = role
        self.name = format_value(name or "-")

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.msecs)
        component = record.name
        if component == _ROOT or component.startswith(_ROOT + "."):
            sub = component[len(_ROOT) + 1 :]
            where = f"{self.role}/{sub}" if sub else self.role
        else:
            where = f"{self.role}/{component}"  # a library's logger, e.g. node/trio.serve_listeners
        message = escape(record.getMessage())
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        tail = "".join(f" {key}={format_value(value)}" for key, value in fields.items())
        line = f"{stamp}.{millis:03d}Z {where} {self.name} {record.levelname} {message}{tail}"
        if record.exc_info:
            line += " exc=" + format_value(self.formatException(record.exc_info))
        return line


class Log:
    """A component's logger: ``log.warning("store node down", node="n1")``; fields become key=value."""

    __slots__ = ("_logger",)

    def __init__(self, component: str = "") -> None:
        self._logger = logging.getLogger(f"{_ROOT}.{component}" if component else _ROOT)

    def enabled(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)

    def _log(self, level: int, message: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, message, extra={"fields": fields}, exc_info=exc_info, stacklevel=3)

    def debug(self, message: str, **fields: Any) -> None:
        self._log(logging.DEBUG, message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._log(logging.INFO, message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._log(logging.WARNING, message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._log(logging.ERROR, message, fields)

    def exception(self, message: str, **fields: Any) -> None:
        """An error with the current exception's traceback, escaped onto the same line."""
        self._log(logging.ERROR, message, fields, exc_info=True)


def get_logger(component: str = "") -> Log:
    return Log(component)


def level_from(log_level: str = "info", verbose: int = 0, quiet: int = 0) -> int:
    """The effective level: ``log_level``, one step down per ``-v`` and one up per ``-q``."""
    index = LEVELS.index(log_level.lower()) - verbose + quiet
    index = max(0, min(len(LEVELS) - 1, index))
    return int(getattr(logging, LEVELS[index].upper()))


def configure(role: str, name: str = "", level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Send every logger's records (sesh's and libraries') to ``stream`` (stderr) in the line format."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter(role, name))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(_ROOT).setLevel(level)
