"""Members and their live state, kept in a scoreboard as httpd keeps its workers' shared state.

Theory of operation. Everything about a member that changes at run time (status flags, lbfactor,
lbstatus, lbset, route, redirect, the counters) lives in one flat buffer of 64-bit integers plus a few
fixed-size text fields: a :class:`Scoreboard`. With one worker process the buffer is an ordinary
``bytearray``; with ``--workers N`` it is an anonymous shared ``mmap`` created before the workers fork,
so every worker elects from, and the balancer-manager page edits, the same state (httpd's scoreboard).

Counters that every request bumps (elected, busy, bytes to and from) have one column per worker
process and are summed when read, so two processes never race on the same word. ``lbstatus`` is shared
and updated without a cross-process lock, exactly as httpd's ``PROXY_THREAD_LOCK`` only locks within a
process: with several workers the smooth round-robin interleaves, it never loses a member.

The status bits and flag letters are httpd's (``mod_proxy.h``), so ``+H``, ``+D``, ``+S``, ``+N``,
``+I``, ``+E`` and ``+C`` mean what operators already know.
"""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from sesh.config import MemberConfig

INITIALIZED: Final = 0x0001
IGNORE_ERRORS: Final = 0x0002
DRAIN: Final = 0x0004
DISABLED: Final = 0x0020
STOPPED: Final = 0x0040
IN_ERROR: Final = 0x0080
HOT_STANDBY: Final = 0x0100
HC_FAIL: Final = 0x0400
HOT_SPARE: Final = 0x0800
NOT_USABLE: Final = DISABLED | STOPPED | IN_ERROR | HC_FAIL

# Flag letter -> bit, in httpd's table order (the order the Status column lists them).
FLAGS: Final = {
    "I": IGNORE_ERRORS,
    "N": DRAIN,
    "D": DISABLED,
    "S": STOPPED,
    "E": IN_ERROR,
    "H": HOT_STANDBY,
    "R": HOT_SPARE,
    "C": HC_FAIL,
}
_STATUS_WORDS: Final = (
    (INITIALIZED, "Init"),
    (IGNORE_ERRORS, "Ign"),
    (DRAIN, "Drn"),
    (DISABLED, "Dis"),
    (STOPPED, "Stop"),
    (IN_ERROR, "Err"),
    (HOT_STANDBY, "Stby"),
    (HOT_SPARE, "Spar"),
    (HC_FAIL, "HcFl"),
)
_STATUS_SPEC = re.compile(r"(?:[+-]?[A-Za-z])+")


def apply_status(status: int, spec: str) -> int:
    """Apply httpd's ``status=`` syntax: ``+H`` sets hot standby, ``-D`` clears disabled, ``D`` sets."""
    if not _STATUS_SPEC.fullmatch(spec):
        raise ValueError(f"expected status flags such as +H, -D or +D+I, got {spec!r}")
    sign = "+"
    for char in spec:
        if char in "+-":
            sign = char
            continue
        bit = FLAGS.get(char.upper())
        if bit is None:
            raise ValueError(f"unknown status flag {char!r} (known: {', '.join(FLAGS)})")
        status = status | bit if sign == "+" else status & ~bit
        sign = "+"
    return status


def status_words(status: int) -> str:
    """The Status column of httpd's balancer-manager: ``Init Ok``, ``Init Dis``, ``Init Stby Ok``..."""
    words = [name for bit, name in _STATUS_WORDS if status & bit]
    if is_usable(status):
        words.append("Ok")
    return " ".join(words) or "???"


def status_letters(status: int) -> str:
    return "".join(letter for letter, bit in FLAGS.items() if status & bit)


def is_usable(status: int) -> bool:
    return bool(status & INITIALIZED) and not status & NOT_USABLE


# -- the scoreboard layout ------------------------------------------------------------------------------

# Balancer-wide words.
B_LBMETHOD: Final = 0
B_EDITS: Final = 1
_BALANCER_WORDS: Final = 4
# Shared per-member words.
M_STATUS: Final = 0
M_LBFACTOR: Final = 1
M_LBSTATUS: Final = 2
M_LBSET: Final = 3
M_ERROR_TIME_US: Final = 4
M_RETRIES: Final = 5
M_HC_PASSES: Final = 6
M_HC_FAILS: Final = 7
_SHARED_WORDS: Final = 8
# Per-worker counter columns, one block of these per worker process.
C_ELECTED: Final = 0
C_BUSY: Final = 1
C_TO: Final = 2
C_FROM: Final = 3
_COUNTER_WORDS: Final = 4
# Text fields are fixed-size like httpd's (PROXY_WORKER_MAX_ROUTE_SIZE is 96; these are generous).
TEXT_BYTES: Final = 96
_MEMBER_TEXTS: Final = 2  # route, redirect
_BALANCER_TEXTS: Final = 1  # stickysession

LBMETHODS: Final = ("byrequests", "bytraffic", "bybusyness")


class Scoreboard:
    """The flat state buffer. ``shared=True`` puts it in an anonymous shared mapping (fork-inherited)."""

    def __init__(self, members: int, workers: int = 1, *, shared: bool = False) -> None:
        self.members = members
        self.workers = workers
        self.member_words = _SHARED_WORDS + workers * _COUNTER_WORDS
        words = _BALANCER_WORDS + members * self.member_words
        self._text_base = words * 8
        size = self._text_base + (_BALANCER_TEXTS + members * _MEMBER_TEXTS) * TEXT_BYTES
        self._buffer: mmap.mmap | bytearray = mmap.mmap(-1, size) if shared else bytearray(size)
        self.ints = memoryview(self._buffer)[: words * 8].cast("q")
        self._bytes = memoryview(self._buffer)

    def member_base(self, index: int) -> int:
        return _BALANCER_WORDS + index * self.member_words

    def text_slot(self, slot: int) -> int:
        return self._text_base + slot * TEXT_BYTES

    def get_text(self, slot: int) -> str:
        start = self.text_slot(slot)
        raw = bytes(self._bytes[start : start + TEXT_BYTES])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def set_text(self, slot: int, value: str) -> None:
        raw = value.encode()
        if len(raw) >= TEXT_BYTES:
            raise ValueError(f"at most {TEXT_BYTES - 1} bytes, got {len(raw)}")
        start = self.text_slot(slot)
        self._bytes[start : start + TEXT_BYTES] = raw.ljust(TEXT_BYTES, b"\0")


@dataclass(frozen=True, slots=True)
class MemberStatistics:
    """What the balancer-manager page shows for one member (httpd's columns, plus a few)."""

    url: str
    route: str
    redirect: str
    loadfactor: float
    lbset: int
    status: str
    flags: str
    usable: bool
    elected: int
    busy: int
    lbstatus: int
    bytes_to: int
    bytes_from: int
    retries: int
    hcmethod: str
    hcinterval: float
    hcpasses: int
    hcfails: int
    hc_passes_seen: int
    hc_fails_seen: int
    hcuri: str


class Member:
    """One BalancerMember: its fixed configuration and a view of its scoreboard slot.

    ``worker`` selects this process's counter column; reads of counters sum every column.
    """

    def __init__(self, cfg: MemberConfig, index: int, board: Scoreboard, worker: int = 0) -> None:
        self.cfg = cfg
        self.index = index
        self.url = cfg.url
        parts = urlsplit(cfg.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/").encode()
        self.host_header = parts.netloc.encode()
        self.url_bytes = cfg.url.encode()
        self.retry = cfg.retry
        self._ints = board.ints
        self._board = board
        self._base = board.member_base(index)
        self._counters = self._base + _SHARED_WORDS + worker * _COUNTER_WORDS
        self._columns = tuple(
            self._base + _SHARED_WORDS + w * _COUNTER_WORDS for w in range(board.workers)
        )
        self._route_slot = _BALANCER_TEXTS + index * _MEMBER_TEXTS
        # The route is read on every sticky request: cache it, refreshed when an edit bumps B_EDITS.
        self._route_cache = ("", -1)

    def initialize(self) -> None:
        """Write the configured state into the scoreboard (once, before any worker starts)."""
        self.status = apply_status(INITIALIZED, self.cfg.status) if self.cfg.status else INITIALIZED
        # httpd keeps lbfactor as loadfactor * 100 (the balancer-manager shows it divided again).
        self.lbfactor = self.cfg.loadfactor * 100
        self.lbstatus = 0
        self.lbset = self.cfg.lbset
        self.route = self.cfg.route
        self.redirect = self.cfg.redirect

    # -- shared words --
    @property
    def status(self) -> int:
        return self._ints[self._base + M_STATUS]

    @status.setter
    def status(self, value: int) -> None:
        self._ints[self._base + M_STATUS] = value

    @property
    def lbfactor(self) -> int:
        return self._ints[self._base + M_LBFACTOR]

    @lbfactor.setter
    def lbfactor(self, value: int) -> None:
        self._ints[self._base + M_LBFACTOR] = value

    @property
    def lbstatus(self) -> int:
        return self._ints[self._base + M_LBSTATUS]

    @lbstatus.setter
    def lbstatus(self, value: int) -> None:
        self._ints[self._base + M_LBSTATUS] = value

    @property
    def lbset(self) -> int:
        return self._ints[self._base + M_LBSET]

    @lbset.setter
    def lbset(self, value: int) -> None:
        self._ints[self._base + M_LBSET] = value

    @property
    def error_time(self) -> float:
        return self._ints[self._base + M_ERROR_TIME_US] / 1e6

    @error_time.setter
    def error_time(self, value: float) -> None:
        self._ints[self._base + M_ERROR_TIME_US] = int(value * 1e6)

    @property
    def retries(self) -> int:
        return self._ints[self._base + M_RETRIES]

    @retries.setter
    def retries(self, value: int) -> None:
        self._ints[self._base + M_RETRIES] = value

    @property
    def hc_passes_seen(self) -> int:
        return self._ints[self._base + M_HC_PASSES]

    @hc_passes_seen.setter
    def hc_passes_seen(self, value: int) -> None:
        self._ints[self._base + M_HC_PASSES] = value

    @property
    def hc_fails_seen(self) -> int:
        return self._ints[self._base + M_HC_FAILS]

    @hc_fails_seen.setter
    def hc_fails_seen(self, value: int) -> None:
        self._ints[self._base + M_HC_FAILS] = value

    @property
    def route(self) -> str:
        edits = self._ints[B_EDITS]
        cached, seen = self._route_cache
        if seen != edits:
            cached = self._board.get_text(self._route_slot)
            self._route_cache = (cached, edits)
        return cached

    @route.setter
    def route(self, value: str) -> None:
        self._board.set_text(self._route_slot, value)
        self._ints[B_EDITS] += 1

    @property
    def redirect(self) -> str:
        return self._board.get_text(self._route_slot + 1)

    @redirect.setter
    def redirect(self, value: str) -> None:
        self._board.set_text(self._route_slot + 1, value)

    # -- per-worker counters (this process's column is written; reads sum every column) --
    def _sum(self, offset: int) -> int:
        ints = self._ints
        return sum(ints[c + offset] for c in self._columns)

    @property
    def elected(self) -> int:
        return self._sum(C_ELECTED)

    @property
    def busy(self) -> int:
        return self._sum(C_BUSY)

    @property
    def transferred(self) -> int:
        return self._sum(C_TO)

    @property
    def read(self) -> int:
        return self._sum(C_FROM)

    def count_elected(self) -> None:
        self._ints[self._counters + C_ELECTED] += 1

    def add_busy(self, delta: int) -> None:
        self._ints[self._counters + C_BUSY] += delta

    def add_transferred(self, count: int) -> None:
        self._ints[self._counters + C_TO] += count

    def add_read(self, count: int) -> None:
        self._ints[self._counters + C_FROM] += count

    def end_exchange(self, transferred: int, read: int) -> None:
        """An exchange ended: no longer busy, and its bytes to and from the member counted (one call
        rather than one per read and write)."""
        ints = self._ints
        base = self._counters
        ints[base + C_BUSY] -= 1
        ints[base + C_TO] += transferred
        ints[base + C_FROM] += read

    # -- state changes --
    def mark_error(self, now: float) -> None:
        """Put the member in error for ``retry`` seconds, unless it ignores errors (+I)."""
        if not self.status & IGNORE_ERRORS:
            self.status |= IN_ERROR
            self.error_time = now

    @property
    def usable(self) -> bool:
        return is_usable(self.status)

    def statistics(self) -> MemberStatistics:
        cfg = self.cfg
        status = self.status
        return MemberStatistics(
            url=self.url,
            route=self.route,
            redirect=self.redirect,
            loadfactor=self.lbfactor / 100,
            lbset=self.lbset,
            status=status_words(status),
            flags=status_letters(status),
            usable=is_usable(status),
            elected=self.elected,
            busy=self.busy,
            lbstatus=self.lbstatus,
            bytes_to=self.transferred,
            bytes_from=self.read,
            retries=self.retries,
            hcmethod=cfg.hcmethod or "None",
            hcinterval=cfg.hcinterval,
            hcpasses=cfg.hcpasses,
            hcfails=cfg.hcfails,
            hc_passes_seen=self.hc_passes_seen,
            hc_fails_seen=self.hc_fails_seen,
            hcuri=cfg.hcuri,
        )
