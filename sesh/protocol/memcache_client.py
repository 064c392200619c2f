"""memcached's text protocol, client side, sans-IO: requests in, bytes out; bytes in, replies out.

Theory of operation. memcached answers the requests of one connection in the order they were sent, so a
client may send several before reading (pipelining) as long as it knows which reply belongs to which
request. :class:`ClientCodec` keeps that queue: :meth:`ClientCodec.send` encodes a request and notes the
shape of the reply it expects (a ``VALUE ... END`` block for a get, one status line for the others);
:meth:`ClientCodec.receive_data` buffers what the server sent and :meth:`ClientCodec.next_event` returns
the next complete reply, or :data:`NEED_DATA`. A reply that does not fit the request it answers (a
``STORED`` to a get, a value for a key nobody asked for, a malformed line) raises :class:`ProtocolError`:
the server is broken or is not memcached, and the connection cannot be trusted any more. So does any
reply after an ``ERROR`` or ``CLIENT_ERROR``: memcached sends those when it could not parse a command
line, and then reads the data block that followed as commands, answering each, so later replies no
longer line up with their requests (:attr:`ClientCodec.desynchronized`). Every number and key is checked
before a request is encoded, so sesh itself never sends a line memcached cannot parse.

Only the classic text commands are spoken (``gets``, ``set``/``add``/``cas``, ``delete``, ``touch``,
``version``): every memcached-protocol server implements them, ``gets``/``cas`` give the optimistic
concurrency msm mode needs, and ``add`` is the lock primitive. Replies are never suppressed with
``noreply``, because counting replies is what keeps a pipelined connection in step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

# --- requests -------------------------------------------------------------------------------------------

StoreCommand: TypeAlias = Literal["set", "add", "replace", "cas"]
# memcached's KEY_MAX_LENGTH; longer keys get CLIENT_ERROR, so refuse them before they cost a round trip.
MAX_KEY_LENGTH: Final = 250
# A reply line (VALUE key flags bytes cas, or an error message) is short; memcached itself reads command
# lines of at most 2048 bytes. Twice that bounds what a broken server can make us buffer before a CRLF.
MAX_LINE: Final = 4096
# Sessions above memcached's default item limit (-I 1m) cannot be stored at all; a reply announcing more
# than this is a broken server, not a session, and must not make the client buffer it.
DEFAULT_MAX_VALUE: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Get:
    """``gets k1 k2 ...`` (or ``get`` without CAS values); the reply is :class:`Values`."""

    keys: tuple[bytes, ...]
    cas: bool = True


@dataclass(frozen=True, slots=True)
class Store:
    """``set``/``add``/``replace``/``cas``; the reply is a :class:`Status`."""

    command: StoreCommand
    key: bytes
    value: bytes
    exptime: int = 0
    flags: int = 0
    cas_unique: int | None = None  # required for "cas", refused otherwise


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class Touch:
    key: bytes
    exptime: int


@dataclass(frozen=True, slots=True)
class Version:
    pass


Request: TypeAlias = Get | Store | Delete | Touch | Version

# --- replies --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    key: bytes
    flags: int
    value: bytes
    cas_unique: int | None


@dataclass(frozen=True, slots=True)
class Values:
    """The items a get found, in the server's order; misses are simply absent."""

    items: tuple[Value, ...]

    def get(self, key: bytes) -> Value | None:
        for item in self.items:
            if item.key == key:
                return item
        return None


@dataclass(frozen=True, slots=True)
class Status:
    """STORED, NOT_STORED, EXISTS, NOT_FOUND, DELETED or TOUCHED."""

    word: str


@dataclass(frozen=True, slots=True)
class VersionReply:
    version: str


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """ERROR, CLIENT_ERROR or SERVER_ERROR (out of memory, object too large...): the server is fine,
    this one request failed."""

    kind: str
    message: str


Reply: TypeAlias = Values | Status | VersionReply | ErrorReply


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class ProtocolError(Exception):
    """The server's bytes are not a valid reply to what was asked: the connection must be dropped."""


class LocalProtocolError(ValueError):
    """A request this codec refuses to send (a key memcached would reject, a missing CAS value...)."""


_STATUS_FOR: Final[dict[type, frozenset[bytes]]] = {
    Store: frozenset({b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND"}),
    Delete: frozenset({b"DELETED", b"NOT_FOUND"}),
    Touch: frozenset({b"TOUCHED", b"NOT_FOUND"}),
}
_ERRORS: Final = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")
_U32: Final = 1 << 32
_U64: Final = 1 << 64
# memcached parses an exptime with safe_strtol into a 32-bit int; anything wider is CLIENT_ERROR, after
# which memcached reads the value's bytes as commands. Negative exptimes are valid (expired at once).
_EXPTIME_MIN: Final = -(1 << 31)
_EXPTIME_MAX: Final = (1 << 31) - 1
# memcached reads a value length into an int32 too; the codec's own max_value is the tighter limit.
_LENGTH_MAX: Final = (1 << 31) - 3
# Replies that say the server did not understand a request as it was meant: after a CLIENT_ERROR for a
# bad storage command line memcached reads the data block that followed as commands of its own, so
# nothing later on the connection can be matched to its request any more.
DESYNC_ERRORS: Final = frozenset({"ERROR", "CLIENT_ERROR"})


# Bytes a key cannot hold (space and the control bytes), deleted by bytes.translate at C speed.
_KEY_FORBIDDEN: Final = bytes(range(33)) + b"\x7f"


def check_key(key: bytes) -> None:
    """Refuse keys memcached's text protocol cannot carry: empty, too long, spaces or control bytes."""
    if type(key) is not bytes:
        raise LocalProtocolError(f"memcached keys are bytes, got {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise LocalProtocolError(f"memcached keys are 1 to {MAX_KEY_LENGTH} bytes, got {len(key)}")
    if len(key.translate(None, _KEY_FORBIDDEN)) != len(key):
        raise LocalProtocolError(f"memcached keys cannot contain spaces or control bytes: {key[:60]!r}")


def _check_int(value: object, lo: int, hi: int, what: str) -> int:
    # bool is an int to Python but never a number memcached was meant to get; a float would be
    # formatted by %d after silent truncation.
    if type(value) is not int:
        raise LocalProtocolError(f"{what} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        # str() of a huge int raises (Python's 4300-digit limit), and would flood the message anyway.
        shown = str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit number"
        raise LocalProtocolError(f"{what} must be from {lo} to {hi}, got {shown}")
    return value


def check_exptime(exptime: object) -> int:
    """Refuse an exptime memcached cannot parse (its 32-bit ``safe_strtol``)."""
    return _check_int(exptime, _EXPTIME_MIN, _EXPTIME_MAX, "exptime")


def encode_request(request: Request, max_value: int = _LENGTH_MAX) -> bytes:
    """The bytes of one request (no reply bookkeeping: use :meth:`ClientCodec.send` on a connection).

    Every number and key is checked before anything is encoded: a request memcached cannot parse would
    make it read the value's bytes as commands, and every later reply on the connection would then be
    matched to the wrong request."""
    match request:
        case Get(keys, cas):
            if not keys:
                raise LocalProtocolError("a get needs at least one key")
            for key in keys:
                check_key(key)
            return (b"gets " if cas else b"get ") + b" ".join(keys) + b"\r\n"
        case Store(command, key, value, exptime, flags, cas_unique):
            if command not in ("set", "add", "replace", "cas"):
                raise LocalProtocolError(f"not a storage command: {command!r:.40}")
            check_key(key)
            if type(value) is not bytes:
                raise LocalProtocolError(f"a value must be bytes, got {type(value).__name__}")
            if len(value) > min(max_value, _LENGTH_MAX):
                raise LocalProtocolError(f"value of {len(value)} bytes is larger than the {max_value}-byte limit")
            _check_int(flags, 0, _U32 - 1, "flags")
            check_exptime(exptime)
            head = b"%s %s %d %d %d" % (command.encode(), key, flags, exptime, len(value))
            if command == "cas":
                if cas_unique is None:
                    raise LocalProtocolError("cas needs a 64-bit CAS value, got None")
                _check_int(cas_unique, 0, _U64 - 1, "CAS value")
                head += b" %d" % cas_unique
            elif cas_unique is not None:
                raise LocalProtocolError(f"{command} takes no CAS value")
            return head + b"\r\n" + value + b"\r\n"
        case Delete(key):
            check_key(key)
            return b"delete " + key + b"\r\n"
        case Touch(key, exptime):
            check_key(key)
            check_exptime(exptime)
            return b"touch %s %d\r\n" % (key, exptime)
        case Version():
            return b"version\r\n"
    raise TypeError(f"not a memcached request: {request!r}")


def _number(token: bytes, limit: int, what: str) -> int:
    if not token.isdigit():
        raise ProtocolError(f"{what} {token[:40]!r} is not a number")
    value = int(token)
    if value >= limit:
        raise ProtocolError(f"{what} {value} is out of range")
    return value


class ClientCodec:
    """One connection's client side. Not thread-safe; a connection's sends and reads must keep order."""

    def __init__(self, max_value: int = DEFAULT_MAX_VALUE) -> None:
        self.max_value = max_value
        self._buffer = bytearray()
        # What each outstanding request expects: the request itself (keys to check, status words allowed).
        self._expected: deque[Request] = deque()
        self._items: list[Value] = []  # values of the get being read
        self._value_head: tuple[bytes, int, int, int | None] | None = None  # VALUE line awaiting its data
        self._desync: bytes | None = None  # the ERROR/CLIENT_ERROR line that put the connection out of step

    @property
    def pending(self) -> int:
        """Requests sent whose reply has not been returned by :meth:`next_event` yet."""
        return len(self._expected)

    @property
    def desynchronized(self) -> bool:
        """The server answered ERROR or CLIENT_ERROR: it did not read a request as it was meant (see
        :data:`DESYNC_ERRORS`), so no later reply on this connection can be trusted."""
        return self._desync is not None

    def send(self, request: Request) -> bytes:
        data = encode_request(request, self.max_value)
        self._expected.append(request)
        return data

    def send_batch(self, requests: Sequence[Request]) -> bytes:
        """Several requests to pipeline; all are checked before any is queued, so a refused one leaves
        the codec as it was."""
        if len(requests) == 1:
            data = encode_request(requests[0], self.max_value)
        else:
            data = b"".join([encode_request(request, self.max_value) for request in requests])
        self._expected.extend(requests)
        return data

    def check_idle(self) -> None:
        """Raise :class:`ProtocolError` if bytes arrived that no request asked for: a connection that is
        to sit idle must be exactly in step, or its next request would get a stale reply."""
        if self._desync is not None:
            raise ProtocolError(f"connection out of step since the server answered {self._desync[:60]!r}")
        if not self._expected and self._buffer:
            raise ProtocolError(f"unsolicited reply {bytes(self._buffer[:60])!r}")

    def receive_data(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Reply | NeedData:
        if self._desync is not None and (self._buffer or self._expected):
            raise ProtocolError(f"connection out of step since the server answered {self._desync[:60]!r}")
        while True:
            if self._value_head is not None:
                item = self._read_value_data()
                if item is None:
                    return NEED_DATA
                self._items.append(item)
                continue
            line = self._read_line()
            if line is None:
                return NEED_DATA
            reply = self._on_line(line)
            if reply is not None:
                self._expected.popleft()
                self._items = []
                return reply

    def _read_line(self) -> bytes | None:
        end = self._buffer.find(b"\r\n", 0, MAX_LINE + 2)
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError(f"reply line longer than {MAX_LINE} bytes")
            return None
        if not self._expected:
            raise ProtocolError(f"unsolicited reply {bytes(self._buffer[:min(end, 60)])!r}")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    def _on_line(self, line: bytes) -> Reply | None:
        request = self._expected[0]
        word, _, rest = line.partition(b" ")
        if word in _ERRORS:
            if word.decode() in DESYNC_ERRORS:
                self._desync = line
            return ErrorReply(word.decode(), rest.decode("utf-8", "replace"))
        match request:
            case Get(keys):
                if line == b"END":
                    return Values(tuple(self._items))
                if word != b"VALUE":
                    raise ProtocolError(f"expected VALUE or END for a get, got {line[:60]!r}")
                self._value_head = self._parse_value_line(rest, keys, cas=request.cas)
                return None
            case Version():
                if word != b"VERSION":
                    raise ProtocolError(f"expected VERSION, got {line[:60]!r}")
                return VersionReply(rest.decode("utf-8", "replace"))
            case _:
                if line not in _STATUS_FOR[type(request)]:
                    raise ProtocolError(f"unexpected reply {line[:60]!r} to {type(request).__name__.lower()}")
                return Status(line.decode())

    def _parse_value_line(
        self, rest: bytes, keys: tuple[bytes, ...], *, cas: bool
    ) -> tuple[bytes, int, int, int | None]:
        tokens = rest.split(b" ")
        if len(tokens) not in (3, 4) or (cas and len(tokens) != 4):
            raise ProtocolError(f"malformed VALUE line {rest[:60]!r}")
        key = tokens[0]
        if key not in keys:
            raise ProtocolError(f"VALUE for {key[:60]!r}, which was not asked for")
        flags = _number(tokens[1], _U32, "flags")
        size = _number(tokens[2], _U64, "length")
        if size > self.max_value:
            raise ProtocolError(f"value of {size} bytes is larger than the {self.max_value}-byte limit")
        cas_unique = _number(tokens[3], _U64, "CAS value") if len(tokens) == 4 else None
        return key, flags, size, cas_unique

    def _read_value_data(self) -> Value | None:
        assert self._value_head is not None
        key, flags, size, cas_unique = self._value_head
        if len(self._buffer) < size + 2:
            return None
        if self._buffer[size : size + 2] != b"\r\n":
            raise ProtocolError(f"value of {key[:60]!r} is not followed by CRLF")
        value = bytes(self._buffer[:size])
        del self._buffer[: size + 2]
        self._value_head = None
        return Value(key, flags, value, cas_unique)
