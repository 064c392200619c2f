"""The cluster wire codec and the membership state machine: pure, no sockets, no clock."""

from __future__ import annotations

import contextlib
import os
import random

import pytest

from sesh.core.serializer import encode_value
from sesh.node.cluster.membership import MemberInfo, Membership, State
from sesh.protocol.cluster import (
    HEADER_SIZE,
    KIND_FORWARD,
    KIND_HEARTBEAT,
    MAX_PAYLOAD,
    NEED_DATA,
    NONCE_SIZE,
    Closed,
    ClusterProtocolError,
    Frame,
    Hello,
    StreamCodec,
    decode_datagram,
    encode_datagram,
)

SECRET = b"s3cret"


def pair(secret_a: bytes | None = SECRET, secret_b: bytes | None = SECRET) -> tuple[StreamCodec, StreamCodec]:
    """Two codecs that exchanged HELLOs, as the two ends of one connection."""
    a = StreamCodec(secret_a, os.urandom(NONCE_SIZE))
    b = StreamCodec(secret_b, os.urandom(NONCE_SIZE))
    a.receive_data(b.hello())
    b.receive_data(a.hello())
    assert isinstance(a.next_event(), Hello) and isinstance(b.next_event(), Hello)
    return a, b


def events(codec: StreamCodec) -> list[object]:
    out: list[object] = []
    while True:
        event = codec.next_event()
        if event is NEED_DATA or isinstance(event, Closed):
            return out
        out.append(event)


@pytest.mark.parametrize("secret", [SECRET, None])
def test_frames_fed_whole_byte_by_byte_and_back_to_back(secret: bytes | None) -> None:
    a, b = pair(secret, secret)
    data = a.encode(KIND_FORWARD, b"one", ref=7) + a.encode(KIND_FORWARD, b"") + a.encode(5, b"x" * 70000)
    whole = events(b)
    assert whole == []
    b.receive_data(data)
    got = events(b)
    assert got == [Frame(KIND_FORWARD, 1, b"one", 7), Frame(KIND_FORWARD, 2, b"", 0), Frame(5, 3, b"x" * 70000, 0)]

    a2, b2 = pair(secret, secret)
    data2 = a2.encode(KIND_FORWARD, b"one", ref=7) + a2.encode(KIND_FORWARD, b"two")
    seen: list[object] = []
    for i in range(len(data2)):
        b2.receive_data(data2[i : i + 1])
        seen += events(b2)
    assert [f.payload for f in seen if isinstance(f, Frame)] == [b"one", b"two"]


def test_garbage_is_refused_at_the_first_byte() -> None:
    _a, b = pair()
    b.receive_data(b"G")
    with pytest.raises(ClusterProtocolError) as err:
        b.next_event()
    assert err.value.reason == "bad-magic"


def test_truncated_stream_is_reported_not_waited_for() -> None:
    a, b = pair()
    frame = a.encode(KIND_FORWARD, b"payload")
    b.receive_data(frame[:-3])
    assert b.next_event() is NEED_DATA
    b.receive_data(b"")
    with pytest.raises(ClusterProtocolError) as err:
        b.next_event()
    assert err.value.reason == "truncated"
    _a, c = pair()
    c.receive_data(b"")
    assert isinstance(c.next_event(), Closed)


def test_oversized_frame_is_refused_from_its_header() -> None:
    a, b = pair()
    header = bytearray(a.encode(KIND_FORWARD, b"")[:HEADER_SIZE])
    header[HEADER_SIZE - 4 : HEADER_SIZE] = (MAX_PAYLOAD + 1).to_bytes(4, "big")
    b.receive_data(bytes(header))
    with pytest.raises(ClusterProtocolError) as err:
        b.next_event()
    assert err.value.reason == "oversized"
    with pytest.raises(ValueError):
        a.encode(KIND_FORWARD, b"x" * (MAX_PAYLOAD + 1))


def test_wrong_secret_tampering_and_missing_mac_are_refused() -> None:
    # A peer with another secret fails at its very first frame, the HELLO.
    a = StreamCodec(b"one", os.urandom(NONCE_SIZE))
    b = StreamCodec(b"two", os.urandom(NONCE_SIZE))
    b.receive_data(a.hello())
    with pytest.raises(ClusterProtocolError) as err:
        b.next_event()
    assert err.value.reason == "bad-mac"

    a, b = pair()
    frame = bytearray(a.encode(KIND_FORWARD, b"hits=5"))
    frame[HEADER_SIZE + 5] ^= 1  # one bit of the payload
    b.receive_data(bytes(frame))
    with pytest.raises(ClusterProtocolError) as err:
        b.next_event()
    assert err.value.reason == "bad-mac"

    plain = StreamCodec(None, os.urandom(NONCE_SIZE))
    guarded = StreamCodec(SECRET, os.urandom(NONCE_SIZE))
    guarded.receive_data(plain.hello())
    with pytest.raises(ClusterProtocolError) as err:
        guarded.next_event()
    assert err.value.reason == "missing-mac"
    plain.receive_data(StreamCodec(SECRET, os.urandom(NONCE_SIZE)).hello())
    with pytest.raises(ClusterProtocolError) as err:
        plain.next_event()
    assert err.value.reason == "unexpected-mac"


def test_replayed_frame_and_frame_from_another_connection_are_refused() -> None:
    a, b = pair()
    frame = a.encode(KIND_FORWARD, b"hits=5")
    b.receive_data(frame)
    assert isinstance(b.next_event(), Frame)
    b.receive_data(frame)  # the same bytes again
    with pytest.raises(ClusterProtocolError) as err:
        b.next_event()
    assert err.value.reason == "replay"

    _c, d = pair()  # a second connection to the same node: its nonce differs
    d.receive_data(frame)
    with pytest.raises(ClusterProtocolError) as err:
        d.next_event()
    assert err.value.reason == "bad-mac"


def test_frames_before_hello_and_a_second_hello_are_refused() -> None:
    a = StreamCodec(None, os.urandom(NONCE_SIZE))
    with pytest.raises(RuntimeError):
        a.encode(KIND_FORWARD, b"x")
    a2, b2 = pair(None, None)
    b2.receive_data(a2.hello())
    with pytest.raises(ClusterProtocolError) as err:
        b2.next_event()
    assert err.value.reason == "duplicate-hello"


def test_datagrams_whole_truncated_trailing_and_wrong_secret() -> None:
    data = encode_datagram(KIND_HEARTBEAT, 9, b"beat", SECRET)
    assert decode_datagram(data, SECRET) == Frame(KIND_HEARTBEAT, 9, b"beat")
    for bad, reason in [
        (data[:-1], "truncated"),
        (data + b"x", "trailing-data"),
        (data[:5], "truncated"),
        (b"\x00" * 40, "bad-magic"),
    ]:
        with pytest.raises(ClusterProtocolError) as err:
            decode_datagram(bad, SECRET)
        assert err.value.reason == reason
    with pytest.raises(ClusterProtocolError) as err:
        decode_datagram(data, b"other")
    assert err.value.reason == "bad-mac"
    with pytest.raises(ClusterProtocolError) as err:
        decode_datagram(encode_datagram(KIND_HEARTBEAT, 1, b"b", None), SECRET)
    assert err.value.reason == "missing-mac"


def test_random_garbage_never_raises_anything_but_protocol_errors() -> None:
    rng = random.Random(11)
    for _ in range(300):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        if rng.random() < 0.5:
            blob = b"SC\x01" + blob
        codec = StreamCodec(SECRET, os.urandom(NONCE_SIZE))
        codec.receive_data(blob)
        codec.receive_data(b"")
        with contextlib.suppress(ClusterProtocolError):
            events(codec)
        with contextlib.suppress(ClusterProtocolError):
            decode_datagram(blob, SECRET)


# --- membership ---------------------------------------------------------------------------------------


def info(uid: str, start: float = 100.0, port: int = 4001, domain: str = "") -> MemberInfo:
    return MemberInfo(uid, f"node-{uid}", "", "127.0.0.1", port, domain, start)


def test_heartbeat_wire_round_trip_and_bad_fields() -> None:
    me = info("b", start=50.0)
    back, ts = MemberInfo.from_wire(me.to_wire(123.0))
    assert back == me and ts == 123.0
    for bad in [{}, {**me.to_wire(1.0), "port": "4000"}, {**me.to_wire(1.0), "port": 0}, []]:
        with pytest.raises(ValueError):
            MemberInfo.from_wire(bad)
    assert isinstance(encode_value(me.to_wire(1.0)), bytes)


def test_membership_join_suspect_check_drop_and_rejoin() -> None:
    m = Membership(info("me", start=10.0, port=4000), drop_time=3.0)
    assert m.heartbeat(info("x"), 1, 1000.0, now=1000.0)
    assert [i.uid for i in m.live()] == ["x"]
    assert m.tick(1002.0) == []
    due = m.tick(1003.5)
    assert [i.uid for i in due] == ["x"]
    entry = m.get("x")
    assert entry is not None and entry.state is State.SUSPECT
    assert m.tick(1003.6) == []  # one check at a time
    m.checked("x", True, 1003.7)  # answers on TCP: kept
    assert entry.state is State.ALIVE
    m.tick(1007.0)
    m.checked("x", False, 1007.1)
    assert entry.state is State.GONE and m.live() == []
    assert m.heartbeat(info("x"), 2, 1008.0, now=1008.0)  # back again: rejoins
    assert entry.state is State.ALIVE and m.joins == 2


def test_a_lost_connection_makes_a_member_suspect_without_waiting_for_drop_time() -> None:
    m = Membership(info("me", port=4000), drop_time=3.0)
    assert m.heartbeat(info("x"), 1, 1000.0, now=1000.0)
    assert m.suspect("x") and not m.suspect("nobody")
    entry = m.get("x")
    assert entry is not None and entry.state is State.SUSPECT
    assert [i.uid for i in m.live()] == ["x"]  # suspect is still live until the TCP check says otherwise
    assert m.fail("x", 1000.1) and m.live() == []
    assert not m.suspect("x")  # gone stays gone


def test_membership_refuses_replays_other_domains_and_stale_heartbeats() -> None:
    m = Membership(info("me", port=4000), drop_time=3.0)
    assert m.heartbeat(info("x"), 5, 1000.0, now=1000.0)
    assert not m.heartbeat(info("x"), 5, 1000.0, now=1000.5)
    assert not m.heartbeat(info("x"), 4, 1000.0, now=1000.5)
    assert not m.heartbeat(info("y", domain="other"), 1, 1000.0, now=1000.0)
    assert not m.heartbeat(info("z", port=4005), 1, 900.0, now=1000.0)
    assert m.rejected == {"replayed-heartbeat": 2, "other-domain": 1, "stale-heartbeat": 1}
    m.fail("x", 1001.0)
    # A gone member's old heartbeats replayed within the window do not bring it back.
    assert not m.heartbeat(info("x"), 5, 1001.0, now=1001.0)


def test_restart_at_the_same_address_replaces_the_member_and_coordinator_is_the_oldest() -> None:
    me = info("me", start=200.0, port=4000)
    m = Membership(me, drop_time=3.0)
    assert m.coordinator() == me
    m.heartbeat(info("old", start=100.0), 1, 1000.0, now=1000.0)
    assert m.coordinator().uid == "old"
    m.heartbeat(info("new", start=300.0), 1, 1000.0, now=1000.5)  # restarted at the same receiver
    assert [i.uid for i in m.live()] == ["new"]
    assert m.coordinator() == me
