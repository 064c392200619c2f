"""Command events produced by :class:`sesh.protocol.memcache.MemcacheParser`.

One dataclass per memcached command (text and meta protocol). Values are raw protocol values:
exptimes are the client's numbers (relative, absolute or negative, resolved by the storage with the
current time), keys are bytes exactly as they will be stored (base64 meta keys already decoded).
Treat events as read-only; they are not frozen only because a frozen dataclass's ``__init__`` sets
each field through ``object.__setattr__``: 1.3 us more per event, a quarter of a get's parsing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Get:
    """get/gets/gat/gats (and the ancient bget). ``exptime`` is set for gat/gats."""

    keys: tuple[bytes, ...]
    with_cas: bool
    exptime: int | None = None
    # A key over 250 bytes stops the command: earlier keys were looked up (and counted), but the only
    # reply is CLIENT_ERROR, as memcached drops the VALUEs it had queued.
    key_too_long: bool = False
    # The keys of a long line, space separated and not yet split (see memcache.get_keys): they follow
    # ``keys``. Splitting a 1 MiB line at once would hold ~50 bytes of objects per key while the
    # answer is sent.
    more: bytes = b""


@dataclass(slots=True)
class Store:
    """set/add/replace/append/prepend/cas with its data block."""

    command: str
    key: bytes
    flags: int
    exptime: int
    value: bytes
    noreply: bool
    cas_unique: int = 0


@dataclass(slots=True)
class Delete:
    key: bytes
    noreply: bool


@dataclass(slots=True)
class Arithmetic:
    """incr/decr."""

    key: bytes
    delta: int
    incr: bool
    noreply: bool


@dataclass(slots=True)
class Touch:
    key: bytes
    exptime: int
    noreply: bool


@dataclass(slots=True)
class Stats:
    """``stats [args...]``; ``args`` are the tokens after ``stats``."""

    args: tuple[bytes, ...]


@dataclass(slots=True)
class FlushAll:
    """``flush_all [delay] [noreply]``; ``delay`` is None when it did not parse (counted, then refused)."""

    delay: int | None
    noreply: bool


@dataclass(slots=True)
class Version:
    pass


@dataclass(slots=True)
class Verbosity:
    level: int
    noreply: bool


@dataclass(slots=True)
class CacheMemlimit:
    """``cache_memlimit <MiB>``: change -m at run time."""

    megabytes: int
    noreply: bool


@dataclass(slots=True)
class Quit:
    pass


@dataclass(slots=True)
class MetaFlags:
    """The flags of one meta command, parsed as memcached's _meta_flag_preparse does.

    ``tokens`` keeps every flag token in request order: replies echo flags in that order, and some
    flags (T then t) act in that order too.
    """

    tokens: tuple[bytes, ...] = ()
    binary_key: bool = False
    quiet: bool = False
    value: bool = False
    no_bump: bool = False
    vivify_ttl: int | None = None
    recache_ttl: int | None = None
    ttl: int | None = None
    client_flags: int = 0
    compare_cas: int | None = None
    mode: int = 0
    delta: int = 1
    initial: int = 0
    invalidate: bool = False


@dataclass(slots=True)
class MetaGet:
    key: bytes
    flags: MetaFlags


@dataclass(slots=True)
class MetaSet:
    key: bytes
    value: bytes
    flags: MetaFlags


@dataclass(slots=True)
class MetaDelete:
    key: bytes
    flags: MetaFlags


@dataclass(slots=True)
class MetaArithmetic:
    key: bytes
    flags: MetaFlags


@dataclass(slots=True)
class MetaNoop:
    pass


@dataclass(slots=True)
class MetaDebug:
    key: bytes
    binary_key: bool


@dataclass(slots=True)
class TooLarge:
    """A storage command whose item would exceed -I: its data block is swallowed unread.

    memcached also unlinks the key (classic ``set`` only; every ``ms``) so no stale value survives.
    """

    key: bytes
    unlink: bool
    reply: bytes


@dataclass(slots=True)
class NoMemory:
    """A storage command refused while its data block was still arriving: the data in flight would
    exceed the memory the store may use (memcached's failed item_alloc). The rest of the block is
    skipped; ``unlink`` says whether the old item must go too (memcached unlinks it for set and ms)."""

    key: bytes
    unlink: bool
    reply: bytes


@dataclass(slots=True)
class BadDataChunk:
    """A data block that did not end in \\r\\n (counted as a set, answered CLIENT_ERROR)."""

    reply: bytes


@dataclass(slots=True)
class ErrorReply:
    """A command refused by the codec; ``reply`` is the complete answer (ERROR, CLIENT_ERROR ...)."""

    reply: bytes


@dataclass(slots=True)
class Close:
    """The peer must be disconnected (line too long without newline, HTTP, binary protocol)."""

    reason: str


@dataclass(slots=True)
class NeedData:
    pass


NEED_DATA = NeedData()

Command = (
    Get
    | Store
    | Delete
    | Arithmetic
    | Touch
    | Stats
    | FlushAll
    | Version
    | Verbosity
    | CacheMemlimit
    | Quit
    | MetaGet
    | MetaSet
    | MetaDelete
    | MetaArithmetic
    | MetaNoop
    | MetaDebug
    | TooLarge
    | NoMemory
    | BadDataChunk
    | ErrorReply
    | Close
)
Event = Command | NeedData
