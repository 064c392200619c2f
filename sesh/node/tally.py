"""Counters defined once: a frozen dataclass of int fields lists what is counted (each field with its
comment), and :func:`tally_of` makes the mutable twin that code bumps on the hot path. ``statistics()``
returns the frozen kind, built from :meth:`Tally.values`, so the two can never list different fields.

The twin has ``__slots__`` for exactly the frozen fields, so bumping a counter that is not defined
fails at once (and ``tests/test_node_statistics.py`` finds such names in the source before that).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

S = TypeVar("S")


class Tally(Generic[S]):
    __slots__ = ()
    frozen: ClassVar[type[Any]]
    names: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        for name in self.names:
            object.__setattr__(self, name, 0)

    def values(self) -> dict[str, int]:
        """Every counter's current value, by field name (the frozen dataclass's keyword arguments)."""
        return {name: getattr(self, name) for name in self.names}

    def freeze(self) -> S:
        """The counters as their frozen dataclass (for one that has no fields beyond the counters)."""
        frozen: S = self.frozen(**self.values())
        return frozen

    if TYPE_CHECKING:  # the attributes are the frozen dataclass's fields, made in tally_of

        def __getattr__(self, name: str) -> int: ...

        def __setattr__(self, name: str, value: int) -> None: ...


def tally_of(frozen: type[S]) -> type[Tally[S]]:
    """The mutable twin of ``frozen``, a dataclass whose fields are all ints."""
    names = tuple(f.name for f in dataclasses.fields(frozen))  # type: ignore[arg-type]
    namespace = {"__slots__": names, "frozen": frozen, "names": names}
    return cast("type[Tally[S]]", type(f"{frozen.__name__}Tally", (Tally,), namespace))
