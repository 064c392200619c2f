"""memcached's text and meta protocol, server side, sans-IO: bytes in, command events out.

Theory of operation. A connection is a stream of command lines, each ended by ``\\n`` (an optional
``\\r`` before it is dropped). Storage commands (set ... and ``ms``) are followed by a data block of the
declared length plus ``\\r\\n``. :meth:`MemcacheParser.next_event` returns one command event at a
time, or ``NEED_DATA`` until a whole line (and data block) is buffered. The parser reproduces
memcached 1.6.18's proto_text.c decision for decision — tokenising on spaces only, at most 24 tokens,
the same argument checks in the same order, the same error strings — because real clients and the
differential tests compare answers byte for byte. Errors that memcached answers without closing are
events too (:class:`ErrorReply`, :class:`TooLarge`, :class:`BadDataChunk`); only input memcached would
hang up on yields :class:`Close`.

Replies are built by the store with the small encoders at the end of this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from sesh.protocol.memcache_events import (
    NEED_DATA,
    Arithmetic,
    BadDataChunk,
    CacheMemlimit,
    Close,
    Command,
    Delete,
    ErrorReply,
    Event,
    FlushAll,
    Get,
    MetaArithmetic,
    MetaDebug,
    MetaDelete,
    MetaFlags,
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
from sesh.protocol.memcache_numbers import b64decode_key, b64encode_key, strtol32, strtoul32, strtoull

KEY_MAX_LENGTH = 250
# memcached hangs up on a client that sends 2048 bytes without a newline (its read buffer holds the
# line; anything longer is garbage or an attack), except for a multi-key get...
MAX_COMMAND_LINE = 2048
# ... whose line memcached lets grow without bound. We cap it: 1 MiB still holds 4000 keys of the
# maximum length, far beyond any session manager's multiget.
MAX_GET_LINE = 1024 * 1024
# A get line longer than a command line is not split into keys at once: the keys would cost ~50 bytes
# of Python objects each for as long as the answer takes to send. Get.more holds them unsplit and
# get_keys() splits them this many bytes at a time (a window always holds a whole key: keys are at
# most 250 bytes).
GET_KEYS_WINDOW = 4096
# memcached's tokenizer keeps 23 tokens plus a terminal one (MAX_TOKENS 24).
MAX_TOKENS = 24
# Meta commands refuse more than 20 tokens (MFLAG_MAX_OPT_LENGTH) and opaques over 32 bytes.
META_MAX_TOKENS = 20
META_MAX_OPAQUE = 32
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024
# memcached's item header on 64-bit Linux: sizeof(item) is 48 bytes, the CAS adds 8.
ITEM_HEADER_SIZE = 48
CAS_SIZE = 8
# A connection whose first byte is this speaks memcached's binary protocol, which sesh does not.
BINARY_REQUEST_MAGIC = 0x80

ERROR = b"ERROR\r\n"
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
NO_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
_STORE_COMMANDS = {b"set": "set", b"add": "add", b"replace": "replace", b"append": "append", b"prepend": "prepend"}
_GET_COMMANDS = {b"get": (False, False), b"gets": (True, False), b"gat": (False, True), b"gats": (True, True)}
_SPACE = b" "
# A token longer than memcached's key limit, found without splitting the line.
_KEY_TOO_LONG = re.compile(b"[^ ]{%d}" % (KEY_MAX_LENGTH + 1))


def item_size(key_length: int, flags: int, value_length: int) -> int:
    """memcached's ITEM_ntotal: what an item costs in its ``bytes`` stat and against -I."""
    return ITEM_HEADER_SIZE + key_length + 1 + (4 if flags else 0) + value_length + 2 + CAS_SIZE


class _PendingStore:
    """A storage command whose line parsed and whose data block is awaited."""

    __slots__ = ("cas_unique", "command", "exptime", "flags", "key", "meta", "need", "noreply")

    def __init__(
        self,
        command: str,
        key: bytes,
        flags: int,
        exptime: int,
        need: int,
        noreply: bool,
        cas_unique: int = 0,
        meta: MetaFlags | None = None,
    ) -> None:
        self.command = command
        self.key = key
        self.flags = flags
        self.exptime = exptime
        self.need = need
        self.noreply = noreply
        self.cas_unique = cas_unique
        self.meta = meta


class MemcacheParser:
    """Server side of one connection: feed it bytes, take command events out."""

    def __init__(self, max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> None:
        self.max_item_size = max_item_size
        self._buf = b""
        self._pos = 0
        self._pending: _PendingStore | None = None
        # The data block of ``_pending`` once it spans receives: collected here, so a value that
        # arrives in many small pieces is copied once per piece instead of once per piece per
        # buffered byte. Its size never exceeds the declared length (plus \r\n).
        self._value: bytearray | None = None
        self._have = 0
        # A get line longer than a command line, still without its newline: gathered here so each
        # receive is appended (and scanned for the newline) once, instead of the whole line being
        # copied and searched again for every piece that arrives. Never holds a newline.
        self._line: bytearray | None = None
        self._swallow = 0
        self._started = False
        self._closed = False

    def receive_data(self, data: bytes) -> None:
        if self._pending is not None:
            self._collect(data)
            return
        line = self._line
        if line is not None:
            line += data
            if b"\n" in data:
                self._buf = bytes(line)
                self._line = None
            return
        if self._pos:
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf = self._buf + data if self._buf else data

    def _collect(self, data: bytes) -> None:
        """More of a data block that did not arrive with its command line."""
        pending = self._pending
        assert pending is not None
        value = self._value
        if value is None:
            # Allocated once at its final size: growing it would copy, and leave freed pieces behind.
            value = self._value = bytearray(pending.need)
            have = len(self._buf) - self._pos
            value[:have] = memoryview(self._buf)[self._pos :]
            self._have = have
            self._buf = b""
            self._pos = 0
        have = self._have
        take = min(len(data), pending.need - have)
        value[have : have + take] = memoryview(data)[:take]
        self._have = have + take
        if take < len(data):
            self._buf = data
            self._pos = take

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events (a data block being collected included)."""
        held = len(self._buf) - self._pos
        if self._value is not None:
            held += self._have
        if self._line is not None:
            held += len(self._line)
        return held

    @property
    def mid_command(self) -> bool:
        """Whether part of a command (a line, a data block, a refused block to skip) is still to come."""
        return (
            self._pending is not None or self._swallow > 0 or self._pos < len(self._buf) or self._line is not None
        )

    @property
    def awaiting_value(self) -> tuple[bytes, int] | None:
        """(key, declared length + 2) of a storage command whose data block is still arriving."""
        pending = self._pending
        if pending is None:
            return None
        return pending.key, pending.need

    def refuse_value(self) -> NoMemory:
        """Give up the data block still arriving, as memcached does when it cannot allocate the item:
        the rest of it is skipped as it comes, and the event says what to answer."""
        pending = self._pending
        assert pending is not None
        self._pending = None
        collected = self._value
        self._value = None
        self._swallow = pending.need - (self._have if collected is not None else 0)
        if pending.meta is not None:
            return NoMemory(pending.key, True, NO_MEMORY)
        return NoMemory(pending.key, pending.command == "set", b"" if pending.noreply else NO_MEMORY)

    def next_event(self) -> Event:
        if self._closed:
            return NEED_DATA
        buf = self._buf
        if not self._started and len(buf) > self._pos:
            self._started = True
            if buf[self._pos] == BINARY_REQUEST_MAGIC:
                return self._close("binary protocol is not supported")
        while True:
            if self._swallow:
                take = min(self._swallow, len(buf) - self._pos)
                self._pos += take
                self._swallow -= take
                if self._swallow:
                    # All of it was skipped: let the receive go now, not at the next one.
                    self._buf = b""
                    self._pos = 0
                    return NEED_DATA
            if self._pending is not None:
                return self._data_block()
            pos = self._pos
            if pos == len(buf) and self._line is None:
                # Everything received was used (the usual end of a batch): let the receive go now.
                self._buf = b""
                self._pos = 0
                return NEED_DATA
            end = buf.find(b"\n", pos)
            if end < 0:
                return self._incomplete_line()
            self._pos = end + 1
            line = buf[pos : end - 1] if end > pos and buf[end - 1] == 13 else buf[pos:end]
            event = self._command(line)
            if event is not None:
                return event
            # None: a data block follows, a refused one is to be skipped, or noreply suppressed the
            # answer; go on.

    def _close(self, reason: str) -> Close:
        self._closed = True
        return Close(reason)

    def _incomplete_line(self) -> Event:
        if self._line is not None:
            if len(self._line) > MAX_GET_LINE:
                return self._close(f"get line longer than {MAX_GET_LINE} bytes")
            return NEED_DATA
        waiting = len(self._buf) - self._pos
        if self._pos and waiting < len(self._buf) // 2:
            # Keep only the partial line: the rest of a large receive must not stay alive (up to the
            # read size, per connection) while the client takes its time.
            self._buf = self._buf[self._pos :]
            self._pos = 0
        if waiting > MAX_COMMAND_LINE:
            head = self._buf[self._pos : self._pos + 110]
            stripped = head.lstrip(b" ")
            if len(head) - len(stripped) > 100 or not (
                stripped.startswith(b"get ") or stripped.startswith(b"gets ")
            ):
                return self._close(f"no newline in the first {MAX_COMMAND_LINE} bytes")
            if waiting > MAX_GET_LINE:
                return self._close(f"get line longer than {MAX_GET_LINE} bytes")
            self._line = bytearray(memoryview(self._buf)[self._pos :])
            self._buf = b""
            self._pos = 0
        return NEED_DATA

    def _data_block(self) -> Event:
        pending = self._pending
        assert pending is not None
        collected = self._value
        if collected is not None:
            if self._have < pending.need:
                return NEED_DATA
            self._value = None
            trailer_ok = collected.endswith(b"\r\n")
            value = bytes(memoryview(collected)[:-2]) if trailer_ok else b""
        else:
            start = self._pos
            if len(self._buf) - start < pending.need:
                return NEED_DATA
            end = start + pending.need
            self._pos = end
            buf = self._buf
            trailer_ok = buf[end - 2 : end] == b"\r\n"
            value = buf[start : end - 2] if trailer_ok else b""
        self._pending = None
        if not trailer_ok:
            if pending.meta is not None:
                return BadDataChunk(BAD_CHUNK)
            return BadDataChunk(b"" if pending.noreply else BAD_CHUNK)
        if pending.meta is not None:
            return MetaSet(pending.key, value, pending.meta)
        return Store(
            pending.command, pending.key, pending.flags, pending.exptime, value, pending.noreply,
            pending.cas_unique,
        )

    # -- command lines -------------------------------------------------------------------------------

    def _command(self, line: bytes) -> Command | None:
        """The event for one command line; None when its only answer was suppressed by noreply."""
        if line.startswith(b"get "):
            # The most common command by far, one key and single spaces: the event the general path
            # below would make, without splitting and checking the line token by token.
            key = line[4:]
            if 0 < len(key) <= KEY_MAX_LENGTH and _SPACE not in key and b"\0" not in key:
                return Get((key,), False)
        if b"\0" in line:
            line = line[: line.index(b"\0")]  # memcached's tokenizer stops at a NUL (strlen)
        if len(line) > MAX_COMMAND_LINE:
            long_get = self._long_get(line)
            if long_get is not None:
                return long_get
        tokens = line.split(_SPACE)
        if b"" in tokens:
            tokens = [t for t in tokens if t]
        if not tokens or len(tokens[0]) < 2:
            return ErrorReply(ERROR)
        # ntokens counts memcached's terminal token; it never exceeds MAX_TOKENS.
        ntokens = min(len(tokens), MAX_TOKENS - 1) + 1
        name = tokens[0]
        first = name[0]
        if first == 109 and len(name) == 2:  # 'm': a meta command
            return self._meta(name[1], tokens, ntokens)
        if first == 103:  # 'g'
            if ntokens < 3:
                return ErrorReply(ERROR)
            mode = _GET_COMMANDS.get(name)
            if mode is None:
                return ErrorReply(ERROR)
            return self._get(tokens, *mode)
        if name in _STORE_COMMANDS:
            if ntokens not in (6, 7):
                return ErrorReply(ERROR)
            return self._store(_STORE_COMMANDS[name], tokens, ntokens, False)
        if name == b"cas":
            if ntokens not in (7, 8):
                return ErrorReply(ERROR)
            return self._store("cas", tokens, ntokens, True)
        if name == b"delete":
            if not 3 <= ntokens <= 5:
                return ErrorReply(ERROR)
            return self._delete(tokens, ntokens)
        if name in (b"incr", b"decr"):
            if ntokens not in (4, 5):
                return ErrorReply(ERROR)
            return self._arithmetic(tokens, ntokens, name == b"incr")
        if name == b"touch":
            if ntokens not in (4, 5):
                return ErrorReply(ERROR)
            return self._touch(tokens, ntokens)
        if name == b"stats":
            return Stats(tuple(tokens[1 : ntokens - 1]))
        if name == b"bget":
            return self._get(tokens, False, False)
        if name == b"flush_all":
            if not 2 <= ntokens <= 4:
                return ErrorReply(ERROR)
            return self._flush_all(tokens, ntokens)
        if name == b"version":
            return Version()
        if name == b"quit":
            return Quit()
        if name == b"verbosity":
            if ntokens not in (3, 4):
                return ErrorReply(ERROR)
            noreply = _noreply(tokens, ntokens)
            level = strtoul32(tokens[1])
            if level is None:
                return _reply(BAD_FORMAT, noreply)
            return Verbosity(level, noreply)
        if name == b"cache_memlimit":
            if ntokens not in (3, 4):
                return ErrorReply(ERROR)
            noreply = _noreply(tokens, ntokens)
            megabytes = strtoul32(tokens[1])
            if megabytes is None:
                return _reply(ERROR, noreply)
            return CacheMemlimit(megabytes, noreply)
        if name == b"shutdown":
            return ErrorReply(b"ERROR: shutdown not enabled\r\n")
        if first not in b"mgsacidt" and tokens[ntokens - 2].startswith(b"HTTP/"):
            return self._close("an HTTP request")
        return ErrorReply(ERROR)

    def _get(self, tokens: list[bytes], with_cas: bool, touch: bool) -> Command:
        exptime = None
        keys = tokens[1:]
        if touch:
            exptime = strtol32(tokens[1])
            if exptime is None:
                return ErrorReply(b"CLIENT_ERROR invalid exptime argument\r\n")
            keys = tokens[2:]
        for index, key in enumerate(keys):
            if len(key) > KEY_MAX_LENGTH:
                return Get(tuple(keys[:index]), with_cas, exptime, key_too_long=True)
        return Get(tuple(keys), with_cas, exptime)

    def _long_get(self, line: bytes) -> Command | None:
        """A get line too long to split at once (None: not a get, parse it the usual way).

        The answer is the one :meth:`_get` would give; the keys stay unsplit in ``Get.more``.
        """
        rest = line.lstrip(_SPACE)
        name, _, rest = rest.partition(_SPACE)
        if name == b"bget":
            mode = (False, False)
        else:
            found = _GET_COMMANDS.get(name)
            if found is None:
                return None
            mode = found
        with_cas, touch = mode
        exptime = None
        rest = rest.lstrip(_SPACE)
        if not rest:
            return ErrorReply(ERROR)  # ntokens < 3
        if touch:
            token, _, rest = rest.partition(_SPACE)
            exptime = strtol32(token)
            if exptime is None:
                return ErrorReply(b"CLIENT_ERROR invalid exptime argument\r\n")
        too_long = _KEY_TOO_LONG.search(rest)
        if too_long is not None:
            return Get((), with_cas, exptime, key_too_long=True, more=rest[: too_long.start()])
        return Get((), with_cas, exptime, more=rest)

    def _store(self, command: str, tokens: list[bytes], ntokens: int, with_cas: bool) -> Command | None:
        noreply = _noreply(tokens, ntokens)
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return _reply(BAD_FORMAT, noreply)
        flags = strtoul32(tokens[2])
        exptime = strtol32(tokens[3])
        length = strtol32(tokens[4])
        if flags is None or exptime is None or length is None:
            return _reply(BAD_FORMAT, noreply)
        cas_unique = 0
        if with_cas:
            parsed = strtoull(tokens[5])
            if parsed is None:
                return _reply(BAD_FORMAT, noreply)
            cas_unique = parsed
        if length < 0 or length > 0x7FFFFFFF - 2:
            return _reply(BAD_FORMAT, noreply)
        if item_size(len(key), flags, length) > self.max_item_size:
            self._swallow = length + 2
            return TooLarge(key, command == "set", b"" if noreply else TOO_LARGE)
        self._pending = _PendingStore(command, key, flags, exptime, length + 2, noreply, cas_unique)
        return None

    def _delete(self, tokens: list[bytes], ntokens: int) -> Command | None:
        noreply = False
        if ntokens > 3:
            hold_is_zero = tokens[2] == b"0"
            noreply = _noreply(tokens, ntokens)
            valid = (ntokens == 4 and (hold_is_zero or noreply)) or (
                ntokens == 5 and hold_is_zero and noreply
            )
            if not valid:
                return _reply(
                    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n", noreply
                )
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return _reply(BAD_FORMAT, noreply)
        return Delete(tokens[1], noreply)

    def _arithmetic(self, tokens: list[bytes], ntokens: int, incr: bool) -> Command | None:
        noreply = _noreply(tokens, ntokens)
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return _reply(BAD_FORMAT, noreply)
        delta = strtoull(tokens[2])
        if delta is None:
            return _reply(b"CLIENT_ERROR invalid numeric delta argument\r\n", noreply)
        return Arithmetic(tokens[1], delta, incr, noreply)

    def _touch(self, tokens: list[bytes], ntokens: int) -> Command | None:
        noreply = _noreply(tokens, ntokens)
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return _reply(BAD_FORMAT, noreply)
        exptime = strtol32(tokens[2])
        if exptime is None:
            return _reply(b"CLIENT_ERROR invalid exptime argument\r\n", noreply)
        return Touch(tokens[1], exptime, noreply)

    def _flush_all(self, tokens: list[bytes], ntokens: int) -> Command | None:
        noreply = _noreply(tokens, ntokens)
        delay: int | None = 0
        if ntokens != (3 if noreply else 2):
            delay = strtol32(tokens[1])
        return FlushAll(delay, noreply)

    # -- meta commands ---------------------------------------------------------------------------------

    def _meta(self, code: int, tokens: list[bytes], ntokens: int) -> Command | None:
        if code == 110:  # mn
            return MetaNoop()
        if code == 101:  # me
            return self._meta_debug(tokens, ntokens)
        if code not in b"gsda":
            return ErrorReply(ERROR)
        if ntokens < 3:
            return ErrorReply(ERROR)
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return ErrorReply(BAD_FORMAT)
        if code == 103:  # mg
            if ntokens > META_MAX_TOKENS:
                return ErrorReply(b"CLIENT_ERROR options flags are too long\r\n")
            flags, error = _meta_flags(tokens, 2, ntokens)
            if error is not None:
                return ErrorReply(error)
            return MetaGet(_meta_key(key, flags), flags)
        if code == 115:  # ms
            return self._meta_set(key, tokens, ntokens)
        if ntokens > META_MAX_TOKENS:
            return ErrorReply(b"CLIENT_ERROR options flags too long\r\n")
        flags, error = _meta_flags(tokens, 2, ntokens)
        if error is not None:
            return ErrorReply(b"CLIENT_ERROR invalid or duplicate flag\r\n")
        if code == 100:  # md
            return MetaDelete(_meta_key(key, flags), flags)
        return MetaArithmetic(_meta_key(key, flags), flags)

    def _meta_set(self, key: bytes, tokens: list[bytes], ntokens: int) -> Command | None:
        if ntokens == 3:
            return ErrorReply(BAD_FORMAT)
        if ntokens > META_MAX_TOKENS:
            return ErrorReply(b"CLIENT_ERROR options flags too long\r\n")
        length = strtol32(tokens[2])
        if length is None or length < 0 or length > 0x7FFFFFFF - 2:
            return ErrorReply(BAD_FORMAT)
        flags, error = _meta_flags(tokens, 3, ntokens)
        if error is None:
            error = _meta_set_error(flags)
        if error is not None:
            self._swallow = length + 2
            return ErrorReply(error)
        key = _meta_key(key, flags)
        if item_size(len(key), flags.client_flags, length) > self.max_item_size:
            self._swallow = length + 2
            return TooLarge(key, True, TOO_LARGE)
        self._pending = _PendingStore(
            "ms", key, flags.client_flags, flags.ttl or 0, length + 2, flags.quiet, meta=flags
        )
        return None

    def _meta_debug(self, tokens: list[bytes], ntokens: int) -> Command:
        if ntokens < 3 or len(tokens[1]) > KEY_MAX_LENGTH:
            return ErrorReply(BAD_FORMAT)
        key = tokens[1]
        binary = ntokens >= 4 and tokens[2] == b"b"
        if binary:
            decoded = b64decode_key(key)
            if decoded is None:
                return ErrorReply(BAD_FORMAT)
            key = decoded
        return MetaDebug(key, binary)


def get_keys(command: Get) -> Iterator[bytes]:
    """Every key a get asks for, in order; a long line's keys are split a window at a time."""
    yield from command.keys
    more = command.more
    start = 0
    size = len(more)
    while start < size:
        end = start + GET_KEYS_WINDOW
        if end < size:
            cut = more.rfind(_SPACE, start, end)
            end = cut if cut > start else more.find(_SPACE, end)
            if end < 0:
                end = size
        for key in more[start:end].split(_SPACE):
            if key:
                yield key
        start = end + 1


def _reply(line: bytes, noreply: bool) -> ErrorReply | None:
    """An error answer that noreply suppresses, as memcached's out_string does."""
    return None if noreply else ErrorReply(line)


def _noreply(tokens: list[bytes], ntokens: int) -> bool:
    return tokens[ntokens - 2] == b"noreply"


def _meta_key(key: bytes, flags: MetaFlags) -> bytes:
    if flags.binary_key:
        return b64decode_key(key) or b""
    return key


_META_NUMBER_ERROR = b"CLIENT_ERROR bad token in command line format\r\n"


def _meta_flags(tokens: list[bytes], start: int, ntokens: int) -> tuple[MetaFlags, bytes | None]:
    """memcached's _meta_flag_preparse: the parsed flags, and the error it would answer (or None)."""
    seen: set[int] = set()
    error: bytes | None = None
    failed = False
    values: dict[str, object] = {}
    flag_tokens = tokens[start : ntokens - 1]
    for token in flag_tokens:
        flag = token[0]
        if flag >= 127 or flag in seen:
            return MetaFlags(), b"CLIENT_ERROR duplicate flag\r\n"
        seen.add(flag)
        arg = token[1:]
        if flag == 98:  # b
            values["binary_key"] = True
            if b64decode_key(tokens[1]) is None:
                error, failed = b"CLIENT_ERROR error decoding key\r\n", True
        elif flag in (78, 84, 82):  # N T R
            ttl = strtol32(arg)
            if ttl is None:
                error, failed = _META_NUMBER_ERROR, True
            else:
                values[{78: "vivify_ttl", 84: "ttl", 82: "recache_ttl"}[flag]] = ttl
        elif flag in b"OPLkstcfhl":
            pass
        elif flag == 118:  # v
            values["value"] = True
        elif flag == 117:  # u
            values["no_bump"] = True
        elif flag == 113:  # q
            values["quiet"] = True
        elif flag == 70:  # F
            client_flags = strtoul32(arg)
            if client_flags is None:
                failed = True
            else:
                values["client_flags"] = client_flags
        elif flag == 67:  # C
            cas = strtoull(arg)
            if cas is None:
                error, failed = _META_NUMBER_ERROR, True
            else:
                values["compare_cas"] = cas
        elif flag == 77:  # M
            if len(token) != 2:
                error, failed = b"CLIENT_ERROR incorrect length for M token\r\n", True
            else:
                values["mode"] = token[1]
        elif flag == 74:  # J
            initial = strtoull(arg)
            if initial is None:
                error, failed = b"CLIENT_ERROR invalid numeric initial value\r\n", True
            else:
                values["initial"] = initial
        elif flag == 68:  # D
            delta = strtoull(arg)
            if delta is None:
                error, failed = b"CLIENT_ERROR invalid numeric delta value\r\n", True
            else:
                values["delta"] = delta
        elif flag == 73:  # I
            values["invalidate"] = True
        else:
            return MetaFlags(), b"CLIENT_ERROR invalid flag\r\n"
    flags = MetaFlags(tuple(flag_tokens), **values)  # type: ignore[arg-type]
    if failed:
        return flags, error or BAD_FORMAT
    return flags, None


def _meta_set_error(flags: MetaFlags) -> bytes | None:
    """ms's checks after the flags parsed: an invalid mode, then an opaque that is too long."""
    if flags.mode and flags.mode not in b"EAPRS":
        return b"CLIENT_ERROR invalid mode for ms M token\r\n"
    if opaque_too_long(flags):
        return b"CLIENT_ERROR opaque token too long\r\n"
    return None


def opaque_too_long(flags: MetaFlags) -> bool:
    return any(t[0] == 79 and len(t) > META_MAX_OPAQUE for t in flags.tokens)


OPAQUE_TOO_LONG = b"CLIENT_ERROR opaque token too long\r\n"


# -- reply encoders --------------------------------------------------------------------------------------


def meta_key_token(key: bytes, binary: bool) -> bytes:
    """The `` k<key>`` a meta reply echoes; binary keys go back base64-encoded and marked `` b``."""
    if binary:
        return b" k" + b64encode_key(key) + b" b"
    return b" k" + key


def meta_echo(flags: MetaFlags, key: bytes) -> bytes:
    """The O(paque) and k(ey) tokens every meta reply echoes, in request order."""
    out = b""
    for token in flags.tokens:
        flag = token[0]
        if flag == 79:
            out += b" " + token
        elif flag == 107:
            out += meta_key_token(key, flags.binary_key)
    return out


def stats_lines(pairs: list[tuple[str, object]]) -> bytes:
    """``STAT name value`` lines and the closing ``END``."""
    return b"".join(b"STAT %s %s\r\n" % (name.encode(), str(value).encode()) for name, value in pairs) + (
        b"END\r\n"
    )
