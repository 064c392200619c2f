"""The serializer: exact round trips, forward compatibility, and nothing but SerializationError on junk."""

from __future__ import annotations

import contextlib
import copy
import math
import random
from typing import Any

import cbor2
import pytest

from sesh.core.delta import ChangeId, Delta, Invalidate, RemoveAttribute, SetAttribute, SetMaxInactive, SetPrincipal
from sesh.core.ids import SessionId
from sesh.core.serializer import (
    DELTA_MAGIC,
    FORMAT_VERSION,
    MAX_DEPTH,
    SESSION_MAGIC,
    SerializationError,
    UnencodableValue,
    check_encodable,
    decode_delta,
    decode_session,
    decode_value,
    encode_delta,
    encode_session,
    encode_value,
)
from sesh.core.session import Session

SID = SessionId("0123456789ABCDEF0123456789ABCDEF", "n1", "node1")
RICH_VALUE: dict[str, Any] = {
    "float": 0.1,
    "negative zero": -0.0,
    "huge": 1e308,
    "tiny": 5e-324,
    "big int": 2**200,
    "negative big int": -(2**100) - 1,
    "nested": {"a": [1, [2, [3, {"b": None}]]], 7: "int key", b"k": "bytes key"},
    "bytes": bytes(range(256)),
    "unicode": "h\u00e9llo \u2603 \U0001f600 \u0000",
    "bools": [True, False],
    "empty": [{}, [], "", b""],
}


def rich_session() -> Session:
    session = Session(
        id=SID,
        created=1_700_000_000.123456,
        last_accessed=1_700_000_001.5,
        this_accessed=1_700_000_002.25,
        max_inactive=1800,
        attributes={"cart": copy.deepcopy(RICH_VALUE), "user": "ann", "none": None},
        principal={"name": "ann", "roles": ["admin"]},
        version=42,
    )
    return session


def envelope(**fields: Any) -> dict[str, Any]:
    body = cbor2.loads(encode_session(rich_session())[len(SESSION_MAGIC) :])
    assert isinstance(body, dict)
    body.update(fields)
    return body


def session_blob(body: Any) -> bytes:
    return SESSION_MAGIC + cbor2.dumps(body)


# --- round trips ------------------------------------------------------------------------------------


def test_session_round_trip_is_exact() -> None:
    session = rich_session()
    copy = decode_session(encode_session(session))
    assert copy == session
    assert math.copysign(1, copy.attributes["cart"]["negative zero"]) == -1
    assert encode_session(copy) == encode_session(session)


def test_invalid_session_and_odd_intervals_round_trip() -> None:
    session = rich_session()
    session.valid = False
    session.max_inactive = -1
    session.principal = None
    session.attributes = {}
    assert decode_session(encode_session(session)) == session


def test_nan_round_trips() -> None:
    blob = encode_value([math.nan, math.inf, -math.inf])
    nan, inf, minus_inf = decode_value(blob)
    assert math.isnan(nan) and inf == math.inf and minus_inf == -math.inf


def test_tuples_come_back_as_lists() -> None:
    assert decode_value(encode_value((1, (2, 3)))) == [1, [2, 3]]


def test_unknown_fields_survive_a_round_trip() -> None:
    blob = session_blob(envelope(owner_node="node7", lease={"until": 12.5, "by": [1, 2]}))
    session = decode_session(blob)
    assert session.extra == {"owner_node": "node7", "lease": {"until": 12.5, "by": [1, 2]}}
    again = cbor2.loads(encode_session(session)[len(SESSION_MAGIC) :])
    assert again["owner_node"] == "node7"
    assert again["lease"] == {"until": 12.5, "by": [1, 2]}
    assert decode_session(encode_session(session)) == session


def test_integer_times_from_another_writer_are_accepted() -> None:
    session = decode_session(session_blob(envelope(created=1_700_000_000)))
    assert session.created == 1_700_000_000.0
    assert type(session.created) is float


def test_delta_round_trip() -> None:
    delta = Delta(
        str(SID),
        7,
        (
            SetAttribute("cart", RICH_VALUE),
            RemoveAttribute("old"),
            SetMaxInactive(0),
            SetPrincipal({"name": "ann"}),
            SetPrincipal(None),
            ChangeId(str(SID.with_route("node2"))),
            Invalidate(),
        ),
        accessed=1_700_000_000.5,
    )
    assert decode_delta(encode_delta(delta)) == delta
    empty = Delta(str(SID), 0, ())
    assert decode_delta(encode_delta(empty)) == empty


def test_value_round_trip() -> None:
    assert decode_value(encode_value(RICH_VALUE)) == RICH_VALUE
    values: list[Any] = [None, 0, -1, 2**64, 1.5, "", b"", [], {}]
    for value in values:
        assert decode_value(encode_value(value)) == value


# --- refusing values at set time --------------------------------------------------------------------


class Color(int):
    pass


@pytest.mark.parametrize(
    "value",
    [
        object(),
        lambda: 1,
        {1, 2},
        frozenset(),
        bytearray(b"x"),
        Color(1),
        [1, {"deep": object()}],
        {(1, 2): "tuple key"},
        {None: 1},
        1j,
    ],
)
def test_unencodable_value_names_the_attribute(value: Any) -> None:
    with pytest.raises(UnencodableValue, match="'my_attr'"):
        check_encodable("my_attr", value)


def test_unencodable_value_says_where() -> None:
    with pytest.raises(UnencodableValue) as info:
        check_encodable("cart", {"items": [1, object()]})
    assert "['items'][1]" in str(info.value)
    assert "builtins.object" in str(info.value)


def test_too_deep_and_cyclic_values_are_refused() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(UnencodableValue, match="deep"):
        check_encodable("deep", deep)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(UnencodableValue, match="cyclic"):
        check_encodable("loop", cyclic)
    fine: Any = "leaf"
    for _ in range(MAX_DEPTH - 1):
        fine = [fine]
    assert decode_value(encode_value(fine)) == fine


def test_shared_values_encode_as_copies() -> None:
    shared = [1, 2]
    value = decode_value(encode_value({"a": shared, "b": shared}))
    assert value == {"a": [1, 2], "b": [1, 2]}
    assert value["a"] is not value["b"]


def test_encode_refuses_values_mutated_after_set() -> None:
    session = rich_session()
    session.attributes["cart"]["later"] = object()
    with pytest.raises(UnencodableValue, match="'cart'"):
        encode_session(session)
    with pytest.raises(UnencodableValue):
        encode_delta(Delta(str(SID), 0, (SetAttribute("x", object()),)))
    with pytest.raises(UnencodableValue):
        encode_value(object())


# --- refusing blobs ---------------------------------------------------------------------------------


def assert_refused(blob: bytes, match: str | None = None) -> None:
    for decode in (decode_session, decode_delta, decode_value):
        with pytest.raises(SerializationError, match=match if decode is decode_session else None):
            decode(blob)


def test_empty_blob() -> None:
    assert_refused(b"")
    assert_refused(SESSION_MAGIC, "0 bytes|premature|end")


def test_random_bytes_only_raise_serialization_error() -> None:
    magics = {decode_session: SESSION_MAGIC, decode_delta: DELTA_MAGIC}
    # Per decoder entry point: [refused, accepted].
    counts = {decode: [0, 0] for decode in (decode_session, decode_delta, decode_value)}
    for seed in range(2000):
        rng = random.Random(seed)
        junk = rng.randbytes(rng.randrange(1, 64))
        for blob in (junk, SESSION_MAGIC + junk, DELTA_MAGIC + junk):
            for decode, count in counts.items():
                try:
                    decoded = decode(blob)
                except SerializationError:
                    count[0] += 1
                    continue
                count[1] += 1
                # A blob without a decoder's own magic is never its value.
                assert decode not in magics or blob.startswith(magics[decode]), (decode.__name__, blob)
                # What is accepted is a real value: it encodes again and decodes to the same thing.
                if decode is decode_session:
                    assert decode_session(encode_session(decoded)) == decoded
                elif decode is decode_delta:
                    assert decode_delta(encode_delta(decoded)) == decoded
                else:
                    again = decode_value(encode_value(decoded))
                    assert again == decoded or again != again  # NaN is not equal to itself
    # Each decoder refuses junk, most of it: one that accepted everything would fail here.
    for decode, (refused, accepted) in counts.items():
        assert refused > accepted, (decode.__name__, refused, accepted)


def test_mutated_real_blobs_only_raise_serialization_error() -> None:
    originals = [
        encode_session(rich_session()),
        encode_delta(Delta(str(SID), 3, (SetAttribute("cart", RICH_VALUE), Invalidate()), 1.5)),
    ]
    for seed in range(1500):
        rng = random.Random(seed)
        blob = bytearray(rng.choice(originals))
        for _ in range(rng.randrange(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        for decode in (decode_session, decode_delta):
            with contextlib.suppress(SerializationError):
                decode(bytes(blob))


def test_truncated_at_every_length() -> None:
    blob = encode_session(rich_session())
    for length in range(len(blob)):
        with pytest.raises(SerializationError):
            decode_session(blob[:length])
    delta_blob = encode_delta(Delta(str(SID), 1, (SetAttribute("cart", RICH_VALUE),), 2.0))
    for length in range(len(delta_blob)):
        with pytest.raises(SerializationError):
            decode_delta(delta_blob[:length])
    value_blob = encode_value(RICH_VALUE)
    for length in range(len(value_blob)):
        with pytest.raises(SerializationError):
            decode_value(value_blob[:length])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(SerializationError, match="after"):
        decode_session(encode_session(rich_session()) + b"\x00")
    with pytest.raises(SerializationError, match="after"):
        decode_value(encode_value(1) + b"\x01")


def test_error_names_the_blob_size() -> None:
    with pytest.raises(SerializationError, match="blob of 7 bytes"):
        decode_session(b"sesh\x82\x01\x02")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([1, 2, 3], "not a map"),
        ({}, "format version"),
        ({"v": 1}, "missing field"),
        ({"v": 0}, "format version"),
        ({"v": "1"}, "format version"),
        ({"v": True}, "format version"),
        ({"v": FORMAT_VERSION + 1, "id": "whatever"}, "newer"),
        ("just a string", "not a map"),
    ],
)
def test_valid_cbor_that_is_not_our_envelope(body: Any, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        decode_session(session_blob(body))


def test_foreign_magic() -> None:
    with pytest.raises(SerializationError, match="does not start with"):
        decode_session(cbor2.dumps(envelope()))
    with pytest.raises(SerializationError, match="a delta, not session"):
        decode_session(encode_delta(Delta(str(SID), 0, ())))
    with pytest.raises(SerializationError, match="a session, not delta"):
        decode_delta(encode_session(rich_session()))


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"id": 5}, "'id'"),
        ({"id": "not-an-id"}, "base"),
        ({"created": "yesterday"}, "'created'"),
        ({"created": None}, "'created'"),
        ({"last_accessed": True}, "'last_accessed'"),
        ({"max_inactive": 1.5}, "'max_inactive'"),
        ({"max_inactive": False}, "'max_inactive'"),
        ({"attributes": []}, "'attributes'"),
        ({"attributes": {1: "x"}}, "attribute name"),
        ({"version": -1}, "outside 0"),
        ({"version": "7"}, "'version'"),
        ({"valid": 1}, "'valid'"),
        ({"attributes": {"a": cbor2.CBORTag(1, 0)}}, "tag"),
        ({"attributes": {"a": {1, 2}}}, "tag"),
        ({"attributes": {"a": cbor2.CBORTag(999, 0)}}, "tag"),
        ({"attributes": {"a": cbor2.undefined}}, "not plain data"),
        ({"principal": cbor2.CBORSimpleValue(99)}, "principal"),
    ],
)
def test_wrong_field_types(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        decode_session(session_blob(envelope(**fields)))


def test_missing_each_field() -> None:
    for key in ("id", "created", "last_accessed", "this_accessed", "max_inactive", "attributes", "version", "valid"):
        body = envelope()
        del body[key]
        with pytest.raises(SerializationError, match=f"missing field '{key}'"):
            decode_session(session_blob(body))
    body = envelope()
    del body["principal"]  # absent principal reads as None
    assert decode_session(session_blob(body)).principal is None


def test_shared_and_cyclic_structures_are_refused() -> None:
    # Tag 28 marks a shareable value and tag 29 refers back to it: a list that contains itself.
    cyclic = bytes.fromhex("d81c81d81d00")
    with pytest.raises(SerializationError, match="tag"):
        decode_value(cyclic)


def test_too_deep_blob_is_refused() -> None:
    deep = b"\x81" * 1000 + b"\x01"
    with pytest.raises(SerializationError):
        decode_value(deep)


def test_duplicate_keys_are_refused() -> None:
    body = cbor2.dumps(envelope())
    # A map with one more entry than its header claims is not what we want; build a real duplicate.
    duplicated = b"\xa2" + cbor2.dumps("v") + cbor2.dumps(1) + cbor2.dumps("v") + cbor2.dumps(1)
    with pytest.raises(SerializationError):
        decode_session(SESSION_MAGIC + duplicated)
    assert decode_session(SESSION_MAGIC + body) == rich_session()


@pytest.mark.parametrize(
    "changes",
    [
        [["explode", 1]],
        [["set", 1, 2]],
        [["set", "a"]],
        [["remove"]],
        [["max_inactive", 1.5]],
        [["max_inactive", True]],
        [["change_id", "nope"]],
        [["max_inactive", 10**30]],
        [["set", "hits", 10**6000]],
        [[]],
        ["set"],
        [["set", "a", cbor2.CBORTag(0, "2020-01-01T00:00:00Z")]],
    ],
)
def test_malformed_deltas(changes: Any) -> None:
    body = {"v": 1, "session_id": str(SID), "base_version": 0, "changes": changes, "accessed": None}
    with pytest.raises(SerializationError):
        decode_delta(DELTA_MAGIC + cbor2.dumps(body))


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": "x"},
        {"base_version": -1},
        {"base_version": 1.0},
        {"changes": {}},
        {"accessed": "now"},
        {"accessed": math.inf},
        {"accessed": -1.0},
        {"accessed": 10**6000},
        {"base_version": 2**63},
        {"v": 2},
    ],
)
def test_malformed_delta_fields(fields: dict[str, Any]) -> None:
    body = {"v": 1, "session_id": str(SID), "base_version": 0, "changes": [], "accessed": None} | fields
    with pytest.raises(SerializationError):
        decode_delta(DELTA_MAGIC + cbor2.dumps(body))


def test_non_bytes_input() -> None:
    for decode in (decode_session, decode_delta, decode_value):
        with pytest.raises(SerializationError):
            decode("sesh")  # type: ignore[arg-type]
    assert decode_session(bytearray(encode_session(rich_session()))) == rich_session()  # type: ignore[arg-type]


# --- out of range: what a planted store value may not make a node do ---------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        # The exptime: the session's max_inactive became "cas KEY 0 1000000000000000019884624838656".
        ({"max_inactive": int(1e30)}, "max_inactive 1000000000000000019884624838656 is outside"),
        ({"max_inactive": 10**6000}, "max_inactive a 19932-bit number is outside"),
        ({"max_inactive": -(10**6000)}, "outside"),
        ({"max_inactive": 365 * 24 * 3600 + 1}, "outside"),
        ({"created": math.inf}, "'created' inf is not a time"),
        ({"last_accessed": math.nan}, "'last_accessed' nan"),
        ({"this_accessed": -1.0}, "not a time"),
        ({"this_accessed": 1e300}, "not a time"),
        ({"created": 10**6000}, "'created' is a 19932-bit number"),
        ({"version": 2**63}, "version 9223372036854775808 is outside"),
        ({"version": 10**6000}, "version a 19932-bit number is outside"),
        # The hits=10**6000: str() of it raises, so every page of the session failed.
        ({"attributes": {"hits": 10**6000}}, r"\['hits'\]: an int of 19932 bits"),
        ({"attributes": {"cart": [1, {"n": -(2**1025)}]}}, r"\['cart'\]\[1\]\['n'\]: an int of 1026 bits"),
        ({"principal": 2**2000}, "principal"),
        ({"future_field": [2**5000]}, "future_field"),
    ],
)
def test_out_of_range_fields_are_corrupt(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        decode_session(session_blob(envelope(**fields)))


def test_widest_values_in_range_round_trip() -> None:
    session = rich_session()
    session.max_inactive = 365 * 24 * 3600
    session.created, session.last_accessed, session.this_accessed = 0.0, 0, float(2**33)
    session.version = 2**63 - 1
    session.attributes = {"wide": [2**1024 - 1, -(2**1024) + 1], "never": -(2**31)}
    copy = decode_session(encode_session(session))
    assert copy == session
    session.max_inactive = -(2**31)
    assert decode_session(encode_session(session)).max_inactive == -(2**31)


def test_out_of_range_values_are_refused_when_set_and_when_encoded() -> None:
    with pytest.raises(UnencodableValue, match="'hits' cannot be stored: an int of 1025 bits"):
        check_encodable("hits", 2**1024)
    for field, value in [("max_inactive", 10**30), ("this_accessed", math.inf), ("version", -1)]:
        session = rich_session()
        setattr(session, field, value)
        with pytest.raises(UnencodableValue, match="cannot be stored"):
            encode_session(session)
    with pytest.raises(UnencodableValue):
        encode_value({"n": 10**400})
