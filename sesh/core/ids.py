"""Session ids: ``<base>[-<store_node>][.<route>]``.

``base`` is 32 upper-case hex characters from :mod:`secrets` (Tomcat's length), ``store_node`` names the
msm store node that holds the session and ``route`` is the app node's route (Tomcat's ``jvmRoute``). The
balancer routes on whatever follows the *first* ``.``, exactly as httpd's ``mod_proxy_balancer`` does, so
the store node suffix must come before it.

Ids arrive from the network (cookies, ``;jsessionid=`` path parameters), so parsing is strict: every
:class:`SessionId` that exists is valid, and anything else raises :class:`InvalidSessionId`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

# Cookie values go into headers, logs and memcached keys (which forbid spaces and control characters and
# are limited to 250 bytes with msm's prefix), so the id is bounded and uses a safe alphabet.
MAX_ID_LENGTH = 256
BASE_LENGTH = 32

_BASE = re.compile(r"[0-9A-F]{32}")
# No '-' in a store node: the first '-' separates it from the base.
_STORE_NODE = re.compile(r"[A-Za-z0-9_:~]+")
# A route may contain '-' (routes like "node-a" are common) because it is cut off at the first '.'.
_ROUTE = re.compile(r"[A-Za-z0-9_:~-]+")


# A whole valid id in one pattern (the same rules as the three above, with the lengths checked apart):
# what a lookup by base needs, without building a SessionId.
_ID = re.compile(r"[0-9A-F]{32}(?:-[A-Za-z0-9_:~]+)?(?:\.[A-Za-z0-9_:~-]+)?")


class InvalidSessionId(ValueError):
    """A session id (usually from a client) that is not of the form ``<base>[-<store_node>][.<route>]``."""


def _short(text: str) -> str:
    """The text for an error message; ids come from clients, so never echo an unbounded string."""
    return repr(text if len(text) <= 48 else text[:45] + "...")


def _problem(base: str, store_node: str, route: str) -> str | None:
    """Why these parts do not make a valid id, or None if they do."""
    if not _BASE.fullmatch(base):
        return f"base {_short(base)} is not {BASE_LENGTH} upper-case hex characters"
    if store_node and not _STORE_NODE.fullmatch(store_node):
        return f"store node {_short(store_node)} may contain only letters, digits, '_', ':' and '~'"
    if route and not _ROUTE.fullmatch(route):
        return f"route {_short(route)} may contain only letters, digits, '_', ':', '~' and '-'"
    length = BASE_LENGTH + (len(store_node) + 1 if store_node else 0) + (len(route) + 1 if route else 0)
    if length > MAX_ID_LENGTH:
        return f"id is {length} characters long, more than {MAX_ID_LENGTH}"
    return None


@dataclass(frozen=True, slots=True)
class SessionId:
    """A parsed session id. Construction validates, so every instance formats to a parseable string."""

    base: str
    store_node: str = ""
    route: str = ""
    # The formatted id, made once: a request formats its session's id several times (cookie, page, delta).
    _text: str = field(init=False, repr=False, compare=False)

    def __deepcopy__(self, memo: dict[int, object]) -> SessionId:
        return self  # immutable (and a compiled frozen dataclass cannot be rebuilt field by field)

    def __post_init__(self) -> None:
        problem = _problem(self.base, self.store_node, self.route)
        if problem is not None:
            raise InvalidSessionId(f"invalid session id: {problem}")
        text = self.base
        if self.store_node:
            text += "-" + self.store_node
        if self.route:
            text += "." + self.route
        object.__setattr__(self, "_text", text)

    def __str__(self) -> str:
        return self._text

    @classmethod
    def parse(cls, text: str) -> SessionId:
        """Parse ``<base>[-<store_node>][.<route>]``; raise :class:`InvalidSessionId` naming the problem."""
        if not isinstance(text, str):
            raise InvalidSessionId(f"invalid session id: expected a string, got {type(text).__name__}")
        # Check the length first so a hostile cookie costs nothing more to reject.
        if len(text) > MAX_ID_LENGTH:
            raise InvalidSessionId(
                f"invalid session id {_short(text)}: {len(text)} characters, more than {MAX_ID_LENGTH}"
            )
        head, dot, route = text.partition(".")
        base, dash, store_node = head.partition("-")
        if dot and not route:
            raise InvalidSessionId(f"invalid session id {_short(text)}: empty route after '.'")
        if dash and not store_node:
            raise InvalidSessionId(f"invalid session id {_short(text)}: empty store node after '-'")
        try:
            return cls(base, store_node, route)  # which validates the parts (once: ids arrive per request)
        except InvalidSessionId:
            raise InvalidSessionId(f"invalid session id {_short(text)}: {_problem(base, store_node, route)}") from None

    def with_route(self, route: str) -> SessionId:
        """The same session routed to another node (what httpd's failover plus JvmRouteBinderValve do)."""
        return SessionId(self.base, self.store_node, route)

    def with_store_node(self, node: str) -> SessionId:
        """The same session held by another store node (msm's store node failover rewrites the suffix)."""
        return SessionId(self.base, node, self.route)

    def without_route(self) -> SessionId:
        return SessionId(self.base, self.store_node, "")


def id_base(text: str) -> str:
    """``SessionId.parse(text).base``, without building the SessionId when ``text`` is valid (every request
    looks its session up by base); raises :class:`InvalidSessionId` as parse does."""
    if type(text) is str and len(text) <= MAX_ID_LENGTH and _ID.fullmatch(text):
        return text[:BASE_LENGTH]
    return SessionId.parse(text).base


def new_session_id(route: str = "", store_node: str = "") -> SessionId:
    """A fresh id with 128 random bits, the same strength as Tomcat's default 16-byte session ids."""
    return SessionId(secrets.token_hex(BASE_LENGTH // 2).upper(), store_node, route)
