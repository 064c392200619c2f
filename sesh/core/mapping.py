"""``scope["session"]`` for ASGI apps: a dict-like view of one request's session transaction.

Starlette's ``request.session`` is ``scope["session"]`` used as a dict, so an app written for Starlette's
cookie sessions runs unchanged on a sesh node. Every write goes through the transaction, so it is checked
(:class:`~sesh.core.serializer.UnencodableValue` naming the key) and recorded in the request's delta.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from sesh.core.manager import SessionTransaction

_MISSING = object()


class SessionMapping(MutableMapping[str, Any]):
    """A ``MutableMapping`` over a :class:`SessionTransaction`; valid until the transaction finishes."""

    __slots__ = ("_tx",)

    def __init__(self, tx: SessionTransaction) -> None:
        self._tx = tx

    @property
    def id(self) -> str:
        return self._tx.id

    @property
    def transaction(self) -> SessionTransaction:
        return self._tx

    def __getitem__(self, name: str) -> Any:
        value = self._tx.get(name, _MISSING)
        if value is _MISSING:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: Any) -> None:
        self._tx.set(name, value)

    def __delitem__(self, name: str) -> None:
        if not self._tx.has(name):
            raise KeyError(name)
        self._tx.remove(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._tx.has(name)

    def __iter__(self) -> Iterator[str]:
        # A snapshot, so ``for key in session: del session[key]`` works.
        return iter(self._tx.names())

    def __len__(self) -> int:
        return len(self._tx.names())

    def __repr__(self) -> str:
        return f"<SessionMapping {self._tx.id} {len(self)} keys>"

    def clear(self) -> None:
        """Remove every attribute; the session itself lives on, with its id. (``scope["session"]``'s
        clear(), Starlette's logout idiom, invalidates instead: see :mod:`sesh.node.asgi`.)"""
        for name in self._tx.names():
            self._tx.remove(name)

    def invalidate(self) -> None:
        """End the session; unless the request then creates a new one, the node's response expires the
        client's cookie (``Set-Cookie: JSESSIONID=; Max-Age=0; ...``)."""
        self._tx.invalidate()
