"""Turning sessions, deltas and cluster values into bytes and back; the only module that imports cbor2.

**What a value may be.** Attributes, the principal and cluster values are *plain data*: None, bool, int
(up to :data:`MAX_INT_BITS` bits), float, str, bytes, lists and tuples of plain data, and dicts whose
keys are str, int or bytes and whose values are plain data, nested at most :data:`MAX_DEPTH` deep.
Exactly these types, not subclasses: an ``IntEnum`` or a ``defaultdict`` would come back on another node
as a plain int or dict, and code that works on the node that set the value and breaks on the one that
reads it is the failure this rule exists to prevent. For the same reason sets, datetimes, Decimals and
custom objects are refused even though cbor2 could tag some of them: store a sorted list or an ISO
string instead, which any other language (and a future Redis backend) can read too. Tuples are accepted
for convenience and **come back as lists**, since CBOR has only arrays. :func:`check_encodable` applies
the rule when a value is set, so the error names the attribute and happens on the node whose code set
it.

**Envelopes.** A session is ``b"sesh"`` followed by one CBOR map; a delta is ``b"sesd"`` followed by one
CBOR map. Each map has ``"v"``: the format version. Adding a field does not change the version: a reader
keeps fields it does not know (``Session.extra``) and writes them back. A blob whose version is newer than
:data:`FORMAT_VERSION` is refused with a message that says so, because guessing would corrupt it.
:func:`encode_value` output has no envelope; the cluster wire protocol frames and versions its messages.

**In range.** A session's own fields are checked against the bounds in :mod:`sesh.core.session`: times
finite and between 1970 and :data:`~sesh.core.session.MAX_TIME`, ``max_inactive`` within
:data:`~sesh.core.session.MIN_INACTIVE_LIMIT`..:data:`~sesh.core.session.MAX_INACTIVE_LIMIT`, ``version``
from 0 to :data:`~sesh.core.session.MAX_VERSION`; ints anywhere in a value have at most
:data:`MAX_INT_BITS` bits. memcached has no authentication, so a store value may have been planted: a
``max_inactive`` of 10**30 once became an exptime memcached could not parse and broke the store
connection for every user, and a ``hits`` of 10**6000 made every page of its session fail (Python
refuses to print an int that long). Out of range is corrupt: decoding raises :class:`SerializationError`
(the backend counts it and starts a fresh session), encoding raises :class:`UnencodableValue`.

**Decoding is defensive.** Blobs come from stores and peers, so anything wrong (truncated, trailing
bytes, foreign, wrong types, CBOR tags other than big integers, shared or cyclic structures) raises
:class:`SerializationError` naming the blob's size and the reason, never another exception type and
never a half-empty session.
"""

from __future__ import annotations

import io
from typing import Any, NoReturn

import cbor2

from sesh.core.delta import (
    Change,
    ChangeId,
    Delta,
    Invalidate,
    RemoveAttribute,
    SetAttribute,
    SetMaxInactive,
    SetPrincipal,
)
from sesh.core.ids import InvalidSessionId, SessionId
from sesh.core.session import MAX_VERSION, Session, max_inactive_problem, time_problem

FORMAT_VERSION = 1
SESSION_MAGIC = b"sesh"
DELTA_MAGIC = b"sesd"
# Deep enough for any real session value, shallow enough that checking and decoding never come near
# Python's recursion limit; the decoder allows a few more levels for the envelope around the value.
MAX_DEPTH = 100
_ENVELOPE_DEPTH = 4
# The widest int a value may hold: 2**1024 prints as 309 digits and every language's bignum reads it, while
# Python refuses to print an int of more than 4300 digits, so a larger one in a session would break every
# page that shows it. Twice CBOR's own 64-bit range covers ids, hashes and counters of any real app.
MAX_INT_BITS = 1024

_SCALARS = (type(None), bool, int, float, str, bytes)
_KEYS = (str, int, bytes)
# Big integers are CBOR tags 2 and 3; every other tag cbor2 knows is refused on decode.
_REFUSED_TAGS = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004, 55799)


class SerializationError(ValueError):
    """A blob that is not a readable sesh session, delta or value (corrupt, truncated, foreign, newer)."""


class UnencodableValue(TypeError):
    """A value that is not plain data; the message names the attribute (or field) it was meant for."""


# --- plain data -------------------------------------------------------------------------------------


def _plain_problem(value: Any, depth: int, seen: set[int] | None) -> tuple[str, str] | None:
    """Why ``value`` is not plain data, as (where, reason) with where like ``['cart'][0]``; None if it is.

    ``seen`` (decode side only) holds the containers met so far: cbor2 never makes shared containers from
    our own output, so one met twice is a crafted blob, which could otherwise be cyclic or expand
    exponentially while being checked.
    """
    kind = type(value)
    if kind is int and value.bit_length() > MAX_INT_BITS:
        return "", f"an int of {value.bit_length()} bits is wider than {MAX_INT_BITS} bits"
    if kind in _SCALARS:
        return None
    if kind is not list and kind is not tuple and kind is not dict:
        return "", f"{kind.__module__}.{kind.__qualname__} is not plain data"
    if depth >= MAX_DEPTH:
        return "", f"nested more than {MAX_DEPTH} levels deep (or cyclic)"
    if seen is not None:
        if id(value) in seen:
            return "", "shared or cyclic container"
        seen.add(id(value))
    items = value.items() if kind is dict else enumerate(value)
    for key, item in items:
        if kind is dict and type(key) not in _KEYS:
            return "", f"dict key {key!r:.40} of type {type(key).__qualname__} is not str, int or bytes"
        problem = _plain_problem(item, depth + 1, seen)
        if problem is not None:
            return f"[{key!r:.40}]{problem[0]}", problem[1]
    return None


def _check(subject: str, value: Any) -> None:
    problem = _plain_problem(value, 0, None)
    if problem is not None:
        _refuse(subject, problem)


def _refuse(subject: str, problem: tuple[str, str]) -> NoReturn:
    where, reason = problem
    at = f" at {where}" if where else ""
    raise UnencodableValue(f"{subject} cannot be stored{at}: {reason}")


def check_encodable(name: str, value: Any) -> None:
    """Raise :class:`UnencodableValue` naming attribute ``name`` unless ``value`` is plain data.

    Called when an attribute is set, before anything changes, so a bad value fails in the request that
    set it instead of on another node later.
    """
    problem = _plain_problem(value, 0, None)
    if problem is not None:  # the subject is formatted only then: attributes are set on every request
        _refuse(f"session attribute {name!r}", problem)


def check_principal(principal: Any) -> None:
    """Like :func:`check_encodable`, for the session's principal."""
    _check("session principal", principal)


# --- the CBOR layer ---------------------------------------------------------------------------------


def _refuse_tag(*_args: Any) -> NoReturn:
    raise SerializationError("CBOR tags other than big integers are not plain data")


def _unknown_tag(tag: Any, _immutable: bool) -> NoReturn:
    raise SerializationError(f"unknown CBOR tag {getattr(tag, 'tag', '?')}")


_SEMANTIC_DECODERS: dict[int, Any] = {tag: _refuse_tag for tag in _REFUSED_TAGS}
# What a malformed blob can make cbor2 or our field checks raise; all become SerializationError.
_DECODE_FAILURES = (
    cbor2.CBORError,
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    KeyError,
    IndexError,
    EOFError,
    ArithmeticError,
)


def _dumps(obj: Any) -> bytes:
    return cbor2.dumps(obj)


def _loads(blob: bytes, what: str) -> Any:
    """Decode exactly one CBOR item filling ``blob``; trailing bytes mean corruption, not padding."""
    stream = io.BytesIO(blob)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_unknown_tag,
        semantic_decoders=_SEMANTIC_DECODERS,
        max_depth=MAX_DEPTH + _ENVELOPE_DEPTH,
        allow_duplicate_keys=False,
    )
    obj = decoder.decode()
    if stream.tell() != len(blob):
        raise SerializationError(f"{len(blob) - stream.tell()} bytes after the {what}")
    return obj


def _fail(what: str, blob: bytes, reason: BaseException | str) -> NoReturn:
    text = str(reason)
    # cbor2 wraps what our tag hooks raise ("error decoding semantic tag 1"); the hook says why.
    if isinstance(reason, BaseException) and isinstance(reason.__cause__, SerializationError):
        text += f" ({reason.__cause__})"
    raise SerializationError(f"cannot decode {what} blob of {len(blob)} bytes: {text}") from None


def _open_envelope(blob: bytes, magic: bytes, what: str) -> dict[str, Any]:
    """Check magic and format version; return the envelope's map."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise SerializationError(f"cannot decode {what}: expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if not blob.startswith(magic):
        other = {SESSION_MAGIC: "a session", DELTA_MAGIC: "a delta"}.get(blob[: len(magic)])
        reason = f"this is {other}, not {what}" if other else f"does not start with {magic!r}"
        _fail(what, blob, reason)
    try:
        body = _loads(blob[len(magic) :], what)
        if type(body) is not dict:
            raise SerializationError(f"envelope is a {type(body).__name__}, not a map")
        version = body.get("v")
        if type(version) is not int or version < 1:
            raise SerializationError(f"format version {version!r} is not a positive integer")
        if version > FORMAT_VERSION:
            raise SerializationError(
                f"format version {version} is newer than this sesh reads ({FORMAT_VERSION}); upgrade it"
            )
        return body
    except _DECODE_FAILURES as exc:
        _fail(what, blob, exc)


# --- field checks -----------------------------------------------------------------------------------


def _field(body: dict[str, Any], key: str, kinds: tuple[type, ...]) -> Any:
    if key not in body:
        raise SerializationError(f"missing field {key!r}")
    value = body[key]
    if type(value) not in kinds:
        names = " or ".join(k.__name__ for k in kinds)
        raise SerializationError(f"field {key!r} is a {type(value).__name__}, expected {names}")
    return value


def _plain_field(key: str, value: Any, seen: set[int]) -> Any:
    problem = _plain_problem(value, 0, seen)
    if problem is not None:
        where, reason = problem
        raise SerializationError(f"field {key!r}{where}: {reason}")
    return value


def _time(body: dict[str, Any], key: str) -> float:
    # Another writer may have stored whole seconds as an int; they are the same instant.
    value = _field(body, key, (float, int))
    if type(value) is int and value.bit_length() > 64:
        raise SerializationError(f"field {key!r} is a {value.bit_length()}-bit number, not a time")
    seconds = float(value)
    problem = time_problem(f"field {key!r}", seconds)
    if problem is not None:
        raise SerializationError(problem)
    return seconds


def _in_range(problem: str | None, value: Any) -> Any:
    if problem is not None:
        raise SerializationError(problem)
    return value


def _version(what: str, value: int) -> int:
    if not 0 <= value <= MAX_VERSION:
        shown = value if value.bit_length() <= 64 else f"a {value.bit_length()}-bit number"
        raise SerializationError(f"{what} {shown} is outside 0..{MAX_VERSION}")
    return value


def _max_inactive(seconds: int) -> int:
    value: int = _in_range(max_inactive_problem(seconds), seconds)
    return value


def _session_id(text: str) -> SessionId:
    try:
        return SessionId.parse(text)
    except InvalidSessionId as exc:
        raise SerializationError(str(exc)) from None


# --- sessions ---------------------------------------------------------------------------------------

_SESSION_FIELDS = (
    "v",
    "id",
    "created",
    "last_accessed",
    "this_accessed",
    "max_inactive",
    "attributes",
    "principal",
    "version",
    "valid",
)


def encode_session(session: Session) -> bytes:
    """The session as ``b"sesh"`` + CBOR map, unknown fields from ``session.extra`` included.

    Raises :class:`UnencodableValue` if an attribute was mutated in place into something that is not plain
    data after it was set.
    """
    for name, value in session.attributes.items():
        check_encodable(name, value)
    check_principal(session.principal)
    # Never write what every reader would refuse as out of range (see "In range" above).
    problems = [
        max_inactive_problem(session.max_inactive),
        *(time_problem(key, getattr(session, key)) for key in ("created", "last_accessed", "this_accessed")),
        None if type(session.version) is int and 0 <= session.version <= MAX_VERSION else "version out of range",
    ]
    for problem in problems:
        if problem is not None:
            raise UnencodableValue(f"session {session.id} cannot be stored: {problem}")
    body: dict[str, Any] = {}
    for key, value in session.extra.items():
        if key not in _SESSION_FIELDS:
            _check(f"session field {key!r}", value)
            body[key] = value
    body |= {
        "v": FORMAT_VERSION,
        "id": str(session.id),
        "created": session.created,
        "last_accessed": session.last_accessed,
        "this_accessed": session.this_accessed,
        "max_inactive": session.max_inactive,
        "attributes": session.attributes,
        "principal": session.principal,
        "version": session.version,
        "valid": session.valid,
    }
    return SESSION_MAGIC + _dumps(body)


def decode_session(blob: bytes) -> Session:
    """The session in ``blob``; :class:`SerializationError` if it is not one this sesh can read."""
    body = _open_envelope(blob, SESSION_MAGIC, "session")
    try:
        seen: set[int] = set()
        attributes = _field(body, "attributes", (dict,))
        for name in attributes:
            if type(name) is not str:
                raise SerializationError(f"attribute name {name!r} is not a string")
        session = Session(
            id=_session_id(_field(body, "id", (str,))),
            created=_time(body, "created"),
            last_accessed=_time(body, "last_accessed"),
            this_accessed=_time(body, "this_accessed"),
            max_inactive=_max_inactive(_field(body, "max_inactive", (int,))),
            attributes=_plain_field("attributes", attributes, seen),
            principal=_plain_field("principal", body.get("principal"), seen),
            version=_version("version", _field(body, "version", (int,))),
            valid=_field(body, "valid", (bool,)),
        )
        for key, value in body.items():
            if key in _SESSION_FIELDS:
                continue
            if type(key) is not str:
                raise SerializationError(f"envelope key {key!r} is not a string")
            session.extra[key] = _plain_field(key, value, seen)
        return session
    except _DECODE_FAILURES as exc:
        _fail("session", blob, exc)


# --- deltas -----------------------------------------------------------------------------------------
# Each change is a short array whose first element names it; a reader refuses a change it does not know,
# because applying part of a request's changes would be worse than applying none.


def _encode_change(change: Change) -> list[Any]:
    match change:
        case SetAttribute(name, value):
            check_encodable(name, value)
            return ["set", name, value]
        case RemoveAttribute(name):
            return ["remove", name]
        case SetMaxInactive(seconds):
            return ["max_inactive", seconds]
        case SetPrincipal(principal):
            check_principal(principal)
            return ["principal", principal]
        case Invalidate():
            return ["invalidate"]
        case ChangeId(session_id):
            return ["change_id", session_id]
    raise TypeError(f"not a change: {change!r}")


def _decode_change(item: Any, seen: set[int]) -> Change:
    if type(item) is not list or not item or type(item[0]) is not str:
        raise SerializationError(f"change {item!r:.60} is not an array starting with its name")
    match item:
        case ["set", str(name), value]:
            return SetAttribute(name, _plain_field(f"changes[{name!r}]", value, seen))
        case ["remove", str(name)]:
            return RemoveAttribute(name)
        case ["max_inactive", int(seconds)] if type(seconds) is int:
            return SetMaxInactive(_max_inactive(seconds))
        case ["principal", principal]:
            return SetPrincipal(_plain_field("principal", principal, seen))
        case ["invalidate"]:
            return Invalidate()
        case ["change_id", str(session_id)]:
            return ChangeId(str(_session_id(session_id)))
    raise SerializationError(f"unknown or malformed change {item[0]!r:.60}")


def encode_delta(delta: Delta) -> bytes:
    """The delta as ``b"sesd"`` + CBOR map."""
    body = {
        "v": FORMAT_VERSION,
        "session_id": delta.session_id,
        "base_version": delta.base_version,
        "changes": [_encode_change(change) for change in delta.changes],
        "accessed": delta.accessed,
    }
    return DELTA_MAGIC + _dumps(body)


def decode_delta(blob: bytes) -> Delta:
    """The delta in ``blob``; fields it does not know are ignored (a delta is applied, never re-sent)."""
    body = _open_envelope(blob, DELTA_MAGIC, "delta")
    try:
        seen: set[int] = set()
        accessed = None if body.get("accessed") is None else _time(body, "accessed")
        base_version = _version("base version", _field(body, "base_version", (int,)))
        return Delta(
            session_id=str(_session_id(_field(body, "session_id", (str,)))),
            base_version=base_version,
            changes=tuple(_decode_change(item, seen) for item in _field(body, "changes", (list,))),
            accessed=accessed,
        )
    except _DECODE_FAILURES as exc:
        _fail("delta", blob, exc)


# --- generic values ---------------------------------------------------------------------------------


def encode_value(obj: Any) -> bytes:
    """Plain CBOR for a plain-data value (cluster messages); :class:`UnencodableValue` otherwise."""
    _check("value", obj)
    return _dumps(obj)


def decode_value(blob: bytes) -> Any:
    """The plain-data value in ``blob``; :class:`SerializationError` if it is anything else."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise SerializationError(f"cannot decode value: expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    try:
        value = _loads(blob, "value")
        return _plain_field("value", value, set())
    except _DECODE_FAILURES as exc:
        _fail("value", blob, exc)
