"""Carry out one memcached command event against the storage and return the reply bytes.

Synchronous and socket-free: the server loop feeds it the parser's events with the current time;
tests drive it directly. Each meta handler follows memcached 1.6.18's process_m*_command step for
step, because the order of its side effects (a TTL set before a ``t`` flag is echoed, an item vivified
before an opaque turns out too long) is visible to clients.
"""

from __future__ import annotations

from sesh.protocol.memcache import (
    BAD_FORMAT,
    ERROR,
    OPAQUE_TOO_LONG,
    get_keys,
    item_size,
    meta_echo,
    meta_key_token,
    opaque_too_long,
    stats_lines,
)
from sesh.protocol.memcache_events import (
    Arithmetic,
    BadDataChunk,
    CacheMemlimit,
    Close,
    Command,
    Delete,
    ErrorReply,
    FlushAll,
    Get,
    MetaArithmetic,
    MetaDebug,
    MetaDelete,
    MetaGet,
    MetaNoop,
    MetaSet,
    NoMemory,
    Quit,
    Stats,
    Store,
    TooLarge,
    Touch,
    Verbosity,
    Version,
)
from sesh.protocol.memcache_numbers import b64encode_key
from sesh.store import stats
from sesh.store.slabs import slab_class
from sesh.store.storage import (
    BINARY_KEY,
    FETCHED,
    STALE,
    TOKEN_SENT,
    DeltaResult,
    Item,
    Storage,
    StoreResult,
    expiry,
)

_STORE_REPLIES = {
    StoreResult.STORED: b"STORED\r\n",
    StoreResult.NOT_STORED: b"NOT_STORED\r\n",
    StoreResult.EXISTS: b"EXISTS\r\n",
    StoreResult.NOT_FOUND: b"NOT_FOUND\r\n",
    StoreResult.NO_MEMORY: b"SERVER_ERROR out of memory storing object\r\n",
}
_META_CODES = {
    StoreResult.STORED: b"HD",
    StoreResult.NOT_STORED: b"NS",
    StoreResult.EXISTS: b"EX",
    StoreResult.NOT_FOUND: b"NF",
}
_MS_MODES = {0: "set", 83: "set", 69: "add", 65: "append", 80: "prepend", 82: "replace"}
NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
MAX_VERBOSITY = 2


class CommandHandler:
    def __init__(self, storage: Storage, info: stats.ServerInfo) -> None:
        self.storage = storage
        self.info = info

    def handle(self, command: Command, now: int) -> bytes:
        """The reply to ``command`` (b"" when there is none). Close and Quit are the caller's."""
        match command:
            case Get():
                return self.get(command, now)
            case Store():
                return self.store(command, now)
            case MetaGet():
                return self.meta_get(command, now)
            case MetaSet():
                return self.meta_set(command, now)
            case Delete(key, noreply):
                deleted = self.storage.delete(key, now)
                return b"" if noreply else (b"DELETED\r\n" if deleted else b"NOT_FOUND\r\n")
            case Arithmetic():
                return self.arithmetic(command, now)
            case Touch(key, exptime, noreply):
                touched = self.storage.touch(key, exptime, now) is not None
                return b"" if noreply else (b"TOUCHED\r\n" if touched else b"NOT_FOUND\r\n")
            case MetaDelete():
                return self.meta_delete(command, now)
            case MetaArithmetic():
                return self.meta_arithmetic(command, now)
            case MetaNoop():
                return b"MN\r\n"
            case MetaDebug():
                return self.meta_debug(command, now)
            case Stats(args):
                return self.stats(args, now)
            case FlushAll(delay, noreply):
                if delay is None:
                    self.storage.counters.cmd_flush += 1  # memcached counts the refused one too
                    return b"" if noreply else b"CLIENT_ERROR invalid exptime argument\r\n"
                self.storage.flush_all(delay, now)
                return b"" if noreply else b"OK\r\n"
            case Version():
                return f"VERSION {self.info.version}\r\n".encode()
            case Verbosity(level, noreply):
                self.info.verbosity = min(level, MAX_VERBOSITY)
                return b"" if noreply else b"OK\r\n"
            case CacheMemlimit(megabytes, noreply):
                return self.cache_memlimit(megabytes, noreply)
            case TooLarge(key, unlink, reply):
                self.storage.counters.store_too_large += 1
                if unlink:
                    self.storage.unlink(key)
                return reply
            case NoMemory(key, unlink, reply):
                self.storage.counters.store_no_memory += 1
                if unlink:
                    self.storage.unlink(key)
                return reply
            case BadDataChunk(reply):
                self.storage.counters.cmd_set += 1
                return reply
            case ErrorReply(reply):
                return reply
            case Quit() | Close():
                return b""
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    # -- the text protocol -----------------------------------------------------------------------------

    def get(self, command: Get, now: int) -> bytes:
        """The whole answer to a get at once (the server streams it with :meth:`get_key` instead)."""
        parts: list[bytes] = []
        for key in get_keys(command):
            self.get_key(key, command, now, parts)
        if command.key_too_long:
            return BAD_FORMAT
        parts.append(b"END\r\n")
        return b"".join(parts)

    def get_key(self, key: bytes, command: Get, now: int, out: list[bytes]) -> int:
        """Look up one key of a get; a hit appends its VALUE line, the value itself (not a copy) and
        \r\n to ``out``. Returns the bytes appended."""
        storage = self.storage
        exptime = command.exptime
        item = storage.get(key, now) if exptime is None else storage.touch(key, exptime, now)
        if item is None:
            return 0
        value = item.value
        if command.with_cas:
            head = b"VALUE %s %d %d %d\r\n" % (key, item.flags, len(value), item.cas)
        else:
            head = b"VALUE %s %d %d\r\n" % (key, item.flags, len(value))
        out.append(head)
        out.append(value)
        out.append(b"\r\n")
        return len(head) + len(value) + 2

    def store(self, command: Store, now: int) -> bytes:
        result, _ = self.storage.store(
            command.command, command.key, command.value, command.flags, command.exptime, now,
            command.cas_unique,
        )
        return b"" if command.noreply else _STORE_REPLIES[result]

    def arithmetic(self, command: Arithmetic, now: int) -> bytes:
        result, _, digits = self.storage.add_delta(command.key, command.incr, command.delta, now)
        if result is DeltaResult.OK:
            reply = digits + b"\r\n"
        elif result is DeltaResult.NOT_FOUND:
            if command.incr:
                self.storage.counters.incr_misses += 1
            else:
                self.storage.counters.decr_misses += 1
            reply = b"NOT_FOUND\r\n"
        elif result is DeltaResult.NON_NUMERIC:
            reply = NON_NUMERIC
        else:
            reply = b"SERVER_ERROR out of memory\r\n"
        return b"" if command.noreply else reply

    def stats(self, args: tuple[bytes, ...], now: int) -> bytes:
        info = self.info
        if not args:
            return stats_lines(stats.general(self.storage, info, now))
        sub = args[0]
        if sub == b"reset":
            self.storage.reset_counters()
            info.connections.total = 0
            info.connections.refused = 0
            return b"RESET\r\n"
        if sub == b"settings":
            return stats_lines(stats.settings(self.storage, info))
        if sub == b"items":
            return stats_lines(stats.items(self.storage, now))
        if sub == b"slabs":
            return stats_lines(stats.slabs(self.storage, now))
        if sub == b"sizes":
            return b"STAT sizes_status disabled\r\nEND\r\n"
        if sub == b"detail":
            if len(args) >= 2 and args[1] in (b"on", b"off"):
                return b"OK\r\n"
            if len(args) >= 2 and args[1] == b"dump":
                return b"END\r\n"
            return b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"
        return ERROR

    def cache_memlimit(self, megabytes: int, noreply: bool) -> bytes:
        if megabytes < 8:
            reply = b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n"
        elif megabytes > 1_000_000_000:
            reply = b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n"
        else:
            self.storage.memory_limit = megabytes * 1024 * 1024
            reply = b"OK\r\n"
        return b"" if noreply else reply

    # -- the meta protocol ------------------------------------------------------------------------------

    def meta_get(self, command: MetaGet, now: int) -> bytes:
        storage = self.storage
        key = command.key
        flags = command.flags
        item = storage.fetch(key, now)
        created = False
        if item is None and flags.vivify_ttl is not None:
            item = Item(b"", 0, 0, storage.next_cas(), now)
            storage.link(key, item, now)
            created = True
        counters = storage.counters
        if item is None:
            counters.get_misses += 1
            counters.cmd_get += 1
            echo = meta_echo(flags, key)
            if opaque_too_long(flags):
                return OPAQUE_TOO_LONG
            return b"" if flags.quiet else b"EN" + echo + b"\r\n"
        head = b"VA %d" % len(item.value) if flags.value else b"HD"
        parts = [head]
        won = False
        ttl_set = False
        hit_before = item.bits & FETCHED
        last_access = now - item.time
        for token in flags.tokens:
            flag = token[0]
            if flag == 84:  # T
                ttl_set = True
                item.exptime = expiry(flags.ttl or 0, now)
            elif flag == 78:  # N
                if created:
                    item.exptime = expiry(flags.vivify_ttl or 0, now)
                    won = True
            elif flag == 82:  # R
                if (
                    not item.bits & TOKEN_SENT
                    and not created
                    and item.exptime != 0
                    and item.exptime < expiry(flags.recache_ttl or 0, now)
                ):
                    won = True
            elif flag == 115:  # s
                parts.append(b" s%d" % len(item.value))
            elif flag == 116:  # t
                parts.append(b" t-1" if item.exptime == 0 else b" t%d" % ((item.exptime - now) & 0xFFFFFFFF))
            elif flag == 99:  # c
                parts.append(b" c%d" % item.cas)
            elif flag == 102:  # f
                parts.append(b" f%d" % item.flags)
            elif flag == 108:  # l
                parts.append(b" l%d" % last_access)
            elif flag == 104:  # h
                parts.append(b" h1" if hit_before else b" h0")
            elif flag == 79:  # O
                if len(token) > 32:
                    return OPAQUE_TOO_LONG
                parts.append(b" " + token)
            elif flag == 107:  # k
                parts.append(meta_key_token(key, bool(item.bits & BINARY_KEY)))
        if item.bits & TOKEN_SENT:
            parts.append(b" Z")
        if item.bits & STALE:
            parts.append(b" X")
            if not item.bits & TOKEN_SENT:
                won = True
        if won:
            parts.append(b" W")
            item.bits |= TOKEN_SENT
        parts.append(b"\r\n")
        if flags.value:
            parts.append(item.value)
            parts.append(b"\r\n")
        if not flags.no_bump:
            storage.bump(key, item, now)
        if ttl_set:
            counters.cmd_touch += 1
            counters.touch_hits += 1
        else:
            counters.cmd_get += 1
            counters.get_hits += 1
        return b"".join(parts)

    def meta_set(self, command: MetaSet, now: int) -> bytes:
        flags = command.flags
        mode = _MS_MODES[flags.mode]
        if flags.compare_cas is not None and mode in ("set", "replace"):
            mode = "cas"
        result, cas = self.storage.store(
            mode, command.key, command.value, flags.client_flags, flags.ttl or 0, now,
            flags.compare_cas or 0, allow_stale=flags.invalidate and mode == "cas",
            binary_key=flags.binary_key,
        )
        if result is StoreResult.NO_MEMORY:
            return _STORE_REPLIES[result]
        if result is StoreResult.STORED and flags.quiet:
            return b""
        parts = [_META_CODES[result]]
        for token in flags.tokens:
            flag = token[0]
            if flag == 79:
                parts.append(b" " + token)
            elif flag == 107:
                parts.append(meta_key_token(command.key, flags.binary_key))
            elif flag == 99:
                parts.append(b" c%d" % cas)
        parts.append(b"\r\n")
        return b"".join(parts)

    def meta_delete(self, command: MetaDelete, now: int) -> bytes:
        storage = self.storage
        flags = command.flags
        if opaque_too_long(flags):
            return OPAQUE_TOO_LONG
        echo = meta_echo(flags, command.key)
        item = storage.fetch(command.key, now)
        if item is None:
            storage.counters.delete_misses += 1
            return b"NF" + echo + b"\r\n"
        if flags.compare_cas is not None and item.cas != flags.compare_cas:
            storage.counters.delete_misses += 1
            return b"EX" + echo + b"\r\n"
        if flags.invalidate:
            if flags.ttl is not None:
                item.exptime = expiry(flags.ttl, now)
            item.bits = (item.bits | STALE) & ~TOKEN_SENT
            item.cas = storage.next_cas()
        else:
            storage.counters.delete_hits += 1
            storage.unlink(command.key)
        return b"" if flags.quiet else b"HD" + echo + b"\r\n"

    def meta_arithmetic(self, command: MetaArithmetic, now: int) -> bytes:
        storage = self.storage
        flags = command.flags
        key = command.key
        if flags.mode in (0, 73, 43):  # I +
            incr = True
        elif flags.mode in (68, 45):  # D -
            incr = False
        else:
            return b"CLIENT_ERROR invalid mode for ma M token\r\n"
        result, item, digits = storage.add_delta(key, incr, flags.delta, now, flags.compare_cas or 0)
        created = False
        code = b""
        if result is DeltaResult.NON_NUMERIC:
            return NON_NUMERIC
        if result is DeltaResult.NO_MEMORY:
            return b"SERVER_ERROR out of memory\r\n"
        if result is DeltaResult.NOT_FOUND:
            if flags.vivify_ttl is not None:
                digits = b"%d" % flags.initial
                item = Item(digits, 0, 0, storage.next_cas(), now)
                if not storage.link(key, item, now):
                    return b"SERVER_ERROR Out of memory allocating new item\r\n"
                created = True
            else:
                if incr:
                    storage.counters.incr_misses += 1
                else:
                    storage.counters.decr_misses += 1
                code = b"NF"
        elif result is DeltaResult.CAS_MISMATCH:
            code = b"EX"
        if item is None:
            if opaque_too_long(flags):
                return OPAQUE_TOO_LONG
            return code + meta_echo(flags, key) + b"\r\n"
        parts = [b"VA %d" % len(digits) if flags.value else b"HD"]
        for token in flags.tokens:
            flag = token[0]
            if flag == 99:  # c
                parts.append(b" c%d" % item.cas)
            elif flag == 116:  # t
                parts.append(b" t-1" if item.exptime == 0 else b" t%d" % ((item.exptime - now) & 0xFFFFFFFF))
            elif flag == 84:  # T
                item.exptime = expiry(flags.ttl or 0, now)
            elif flag == 78:  # N
                if created:
                    item.exptime = expiry(flags.vivify_ttl or 0, now)
            elif flag == 79:  # O
                if len(token) > 32:
                    return OPAQUE_TOO_LONG
                parts.append(b" " + token)
            elif flag == 107:  # k
                parts.append(meta_key_token(key, flags.binary_key))
        if flags.value:
            parts.append(b"\r\n" + digits)
        parts.append(b"\r\n")
        if result is DeltaResult.OK and flags.quiet:
            return b""
        return b"".join(parts)

    def meta_debug(self, command: MetaDebug, now: int) -> bytes:
        storage = self.storage
        storage.counters.cmd_meta += 1
        item = storage.fetch(command.key, now)
        if item is None:
            return b"EN\r\n"
        key = b64encode_key(command.key) if item.bits & BINARY_KEY else command.key
        size = item_size(len(command.key), item.flags, len(item.value))
        return b"ME %s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\r\n" % (
            key,
            -1 if item.exptime == 0 else now - item.exptime,
            now - item.time,
            item.cas,
            b"yes" if item.bits & FETCHED else b"no",
            slab_class(size),
            size,
        )
