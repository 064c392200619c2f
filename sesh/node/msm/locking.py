"""Which non-sticky requests lock their session: msm's ``lockingMode``, and what ``auto`` learns.

``none`` never locks (concurrent writes are still caught by CAS, see ``nonsticky``); ``all`` always
does; ``uriPattern:REGEX`` locks requests whose whole path matches (Java's ``matches()``, as msm);
``auto`` locks every request except those
to paths that have been seen read-only (not changing the session) and never changing it, as msm's
``ReadOnlyRequestsCache`` does.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

# How often a path must be seen read-only (and never changing) before auto mode stops locking it.
READ_ONLY_AFTER = 2
# Paths remembered either way; the least recently seen are forgotten first (URLs with ids in them
# would otherwise grow the table without bound).
MAX_PATHS = 1000


class ReadOnlyPaths:
    """Bounded memory of which request paths change the session."""

    def __init__(self, limit: int = MAX_PATHS) -> None:
        self.limit = limit
        self._read_only: OrderedDict[str, int] = OrderedDict()
        self._modifying: OrderedDict[str, None] = OrderedDict()

    def record(self, path: str, *, modified: bool) -> None:
        if modified:
            self._read_only.pop(path, None)
            self._remember(self._modifying, path, None)
        elif path not in self._modifying:
            self._remember(self._read_only, path, self._read_only.get(path, 0) + 1)

    def is_read_only(self, path: str) -> bool:
        return path not in self._modifying and self._read_only.get(path, 0) >= READ_ONLY_AFTER

    def _remember(self, table: OrderedDict[str, int] | OrderedDict[str, None], path: str, value: object) -> None:
        table[path] = value  # type: ignore[assignment]
        table.move_to_end(path)
        while len(table) > self.limit:
            table.popitem(last=False)


@dataclass(frozen=True, slots=True)
class LockingPolicy:
    mode: str  # none | all | auto | uriPattern
    pattern: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> LockingPolicy:
        if text in ("none", "all", "auto"):
            return cls(text)
        if text.startswith("uriPattern:"):
            regex = text[len("uriPattern:") :]
            try:
                return cls("uriPattern", re.compile(regex))
            except re.error as exc:
                raise ValueError(f"uriPattern: not a valid regular expression ({exc}): {regex!r}") from None
        raise ValueError(f"expected none|all|auto|uriPattern:REGEX, got {text!r}")

    def __str__(self) -> str:
        return f"uriPattern:{self.pattern.pattern}" if self.pattern is not None else self.mode

    def should_lock(self, path: str, read_only: ReadOnlyPaths) -> bool:
        match self.mode:
            case "all":
                return True
            case "auto":
                return not read_only.is_read_only(path)
            case "uriPattern":
                assert self.pattern is not None
                return self.pattern.fullmatch(path) is not None
        return False
