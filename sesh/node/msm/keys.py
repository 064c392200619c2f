"""msm's store layout: keys, expiry times, and which store node holds (or backs up) a session.

Keys are msm's, so operators recognise them: ``<prefix>_<id>`` for the session (just ``<id>`` without a
prefix), ``lock:<prefix>_<id>`` for its lock and ``bak:<prefix>_<id>`` for the backup copy on the next
node (on Redis, the base carries a hash tag: see :class:`KeyFormat`). The key holds the *whole* id,
store node and route included, as msm's does: a failover that rewrites the id writes a new key and
deletes the old one (never a RENAME, which a Redis Cluster refuses across slots).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sesh.core.ids import SessionId
from sesh.core.session import Session

# memcached reads an exptime above 30 days as an absolute Unix time, not a number of seconds.
MAX_RELATIVE_EXPTIME = 30 * 24 * 3600
# Every node of a cluster must compute the same keys, so the parts msm takes from Tomcat's
# configuration are constants here: sesh serves one virtual host (Tomcat's default "localhost") with
# one unversioned root application (Tomcat's "ROOT").
_PREFIX_PARTS = {"host": "localhost", "context": "ROOT", "webappVersion": ""}
_PREFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:~/")
MAX_PREFIX = 64  # keeps "bak:<prefix>_<id>" under memcached's 250-byte key limit for any valid id


def key_prefix(spec: str) -> str:
    """msm's ``storageKeyPrefix``: comma-separated ``static:NAME``, ``host``, ``context``,
    ``webappVersion`` (``.hash`` variants allowed), joined with ``_``; empty parts are left out."""
    parts: list[str] = []
    for raw in (p.strip() for p in spec.split(",")):
        if not raw:
            continue
        if raw.startswith("static:"):
            value = raw[len("static:") :]
            if not value:
                raise ValueError("static: needs a name, e.g. static:shop")
        else:
            name, _, suffix = raw.partition(".")
            if name not in _PREFIX_PARTS or suffix not in ("", "hash"):
                raise ValueError(f"expected static:NAME, host, context or webappVersion (or .hash), got {raw!r}")
            value = _PREFIX_PARTS[name]
            if suffix and value:
                value = hashlib.md5(value.encode(), usedforsecurity=False).hexdigest()
        if value:
            parts.append(value)
    prefix = "_".join(parts)
    if len(prefix) > MAX_PREFIX or not set(prefix) <= _PREFIX_CHARS:
        raise ValueError(f"prefix {prefix[:80]!r} must be at most {MAX_PREFIX} letters, digits or _-.:~/")
    return prefix


@dataclass(frozen=True, slots=True)
class KeyFormat:
    prefix: str = ""
    # Redis Cluster: the id's base in braces (``<prefix>_{<base>}-<node>.<route>``), so that the
    # session, its lock and its backup hash to one slot, whatever store node and route the id names.
    hash_tag: bool = False

    def session_key(self, session_id: SessionId | str) -> bytes:
        text = str(session_id)
        if self.hash_tag:
            end = min((i for i in (text.find("-"), text.find(".")) if i >= 0), default=len(text))
            text = "{" + text[:end] + "}" + text[end:]
        return (f"{self.prefix}_{text}" if self.prefix else text).encode()

    def lock_key(self, session_id: SessionId | str) -> bytes:
        return b"lock:" + self.session_key(session_id)

    def backup_key(self, session_id: SessionId | str) -> bytes:
        return b"bak:" + self.session_key(session_id)


def store_exptime(session: Session, now: float) -> int:
    """The memcached exptime that makes the stored copy expire with the session: relative seconds (at
    least 1), an absolute Unix time beyond 30 days, 0 (never) for a session that never expires."""
    expires = session.expires_at()
    if expires is None:
        return 0
    remaining = max(1, math.ceil(expires - now))
    if remaining > MAX_RELATIVE_EXPTIME:
        return math.ceil(expires)
    return remaining


class NodeRing:
    """The configured store nodes in order; failover nodes are used only when all others are down."""

    def __init__(self, node_ids: Sequence[str], failover: frozenset[str] = frozenset()) -> None:
        self.ids = tuple(node_ids)
        self.failover = failover
        self.regular = tuple(i for i in self.ids if i not in failover)
        self._next_new = itertools.cycle(range(len(self.regular)))

    def node_of(self, session_id: SessionId) -> str:
        """The node an id names; ids without a known node (e.g. from another mode) go to the first."""
        return session_id.store_node if session_id.store_node in self.ids else self.regular[0]

    def for_new_session(self, available: Callable[[str], bool]) -> str:
        """Round robin over the available regular nodes; failover nodes if none; the first if all are down."""
        for _ in range(len(self.regular)):
            node = self.regular[next(self._next_new)]
            if available(node):
                return node
        return next((i for i in self.ids if i in self.failover and available(i)), self.regular[0])

    def successors(self, node: str) -> list[str]:
        """The other nodes in failover order: regular nodes after ``node`` (wrapping), then failover nodes."""
        start = self.ids.index(node) if node in self.ids else -1
        ordered = self.ids[start + 1 :] + self.ids[: start + 1]
        others = [i for i in ordered if i != node]
        return [i for i in others if i not in self.failover] + [i for i in others if i in self.failover]

    def next_available(self, node: str, available: Callable[[str], bool]) -> str | None:
        return next((i for i in self.successors(node) if available(i)), None)
