"""Pure tests of the client-side memcached codec: fed whole, byte by byte, and with trailing data."""

from __future__ import annotations

import pytest

from sesh.protocol.memcache_client import (
    MAX_LINE,
    NEED_DATA,
    ClientCodec,
    Delete,
    ErrorReply,
    Get,
    LocalProtocolError,
    NeedData,
    ProtocolError,
    Reply,
    Request,
    Status,
    Store,
    Touch,
    Value,
    Values,
    Version,
    VersionReply,
    encode_request,
)


def drain(codec: ClientCodec) -> list[Reply]:
    replies: list[Reply] = []
    while not isinstance(event := codec.next_event(), NeedData):
        replies.append(event)
    return replies


def feed(requests: list[Request], data: bytes, *, step: int | None = None) -> list[Reply]:
    codec = ClientCodec()
    for request in requests:
        codec.send(request)
    replies: list[Reply] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        codec.receive_data(chunk)
        replies += drain(codec)
    assert codec.pending == len(requests) - len(replies)
    return replies


PIPELINE: list[Request] = [
    Get((b"a", b"b")),
    Store("cas", b"a", b"xyz", 30, 0, 7),
    Store("add", b"lock:a", b"t", 5),
    Delete(b"lock:a"),
    Touch(b"a", 60),
    Version(),
    Get((b"missing",)),
]
REPLIES = (
    b"VALUE a 3 5 17\r\nhe\r\nl\r\nVALUE b 0 0 18\r\n\r\nEND\r\n"
    b"EXISTS\r\nNOT_STORED\r\nDELETED\r\nTOUCHED\r\nVERSION 1.6.18\r\nEND\r\n"
)
EXPECTED: list[Reply] = [
    Values((Value(b"a", 3, b"he\r\nl", 17), Value(b"b", 0, b"", 18))),
    Status("EXISTS"),
    Status("NOT_STORED"),
    Status("DELETED"),
    Status("TOUCHED"),
    VersionReply("1.6.18"),
    Values(()),
]


@pytest.mark.parametrize("step", [None, 1, 2, 7])
def test_pipelined_replies_whole_and_in_pieces(step: int | None) -> None:
    assert feed(PIPELINE, REPLIES, step=step) == EXPECTED


def test_trailing_data_waits_for_its_request_reply() -> None:
    codec = ClientCodec()
    codec.send(Version())
    codec.receive_data(b"VERSION 1\r\nSTORED\r\n")
    assert codec.next_event() == VersionReply("1")
    # STORED with no request outstanding is a broken server, and is refused rather than kept.
    with pytest.raises(ProtocolError, match="unsolicited"):
        codec.next_event()


def test_partial_value_needs_data() -> None:
    codec = ClientCodec()
    codec.send(Get((b"k",)))
    codec.receive_data(b"VALUE k 0 10 1\r\n01234")
    assert codec.next_event() is NEED_DATA
    codec.receive_data(b"56789\r\nEN")
    assert codec.next_event() is NEED_DATA
    codec.receive_data(b"D\r\n")
    assert codec.next_event() == Values((Value(b"k", 0, b"0123456789", 1),))
    assert codec.pending == 0


def test_get_without_cas_has_no_cas_value() -> None:
    assert feed([Get((b"k",), cas=False)], b"VALUE k 1 2\r\nhi\r\nEND\r\n") == [
        Values((Value(b"k", 1, b"hi", None),))
    ]


def test_error_replies_end_the_request() -> None:
    # SERVER_ERROR (too large, out of memory): memcached swallowed the value, the connection is in step.
    replies = feed(
        [Store("set", b"k", b"v" * 10), Get((b"k",)), Delete(b"k")],
        b"SERVER_ERROR object too large for cache\r\nEND\r\nERROR\r\n",
    )
    assert replies == [
        ErrorReply("SERVER_ERROR", "object too large for cache"),
        Values(()),
        ErrorReply("ERROR", ""),
    ]


@pytest.mark.parametrize("step", [None, 1, 3])
@pytest.mark.parametrize("word", [b"CLIENT_ERROR bad command line format", b"ERROR"])
def test_a_request_the_server_could_not_parse_puts_the_connection_out_of_step(word: bytes, step: int | None) -> None:
    """What memcached answers to ``cas K 0 1000000000000000019884624838656 5``: CLIENT_ERROR, then ERROR
    for the value's bytes read as a command. Nothing after the first error may reach another request."""
    codec = ClientCodec()
    codec.send_batch([Store("set", b"k", b"blob!"), Get((b"other",))])
    data = word + b"\r\nERROR\r\nEND\r\n"
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    replies: list[Reply] = []
    with pytest.raises(ProtocolError, match="out of step"):
        for chunk in chunks:
            codec.receive_data(chunk)
            while not isinstance(event := codec.next_event(), NeedData):
                replies.append(event)
    assert replies == [ErrorReply(*word.decode().partition(" ")[::2])]
    assert codec.desynchronized
    with pytest.raises(ProtocolError, match="out of step"):
        codec.check_idle()


def test_check_idle_refuses_bytes_nobody_asked_for() -> None:
    codec = ClientCodec()
    codec.send(Delete(b"k"))
    codec.receive_data(b"DELETED\r\n")
    assert codec.next_event() == Status("DELETED")
    codec.check_idle()  # exactly in step
    codec.receive_data(b"STORED\r\n")
    with pytest.raises(ProtocolError, match="unsolicited"):
        codec.check_idle()


@pytest.mark.parametrize(
    ("request_", "data", "message"),
    [
        (Get((b"k",)), b"STORED\r\n", "expected VALUE or END"),
        (Get((b"k",)), b"VALUE other 0 1 1\r\nx\r\nEND\r\n", "not asked for"),
        (Get((b"k",)), b"VALUE k 0 1\r\nx\r\nEND\r\n", "malformed VALUE"),
        (Get((b"k",)), b"VALUE k x 1 1\r\nx\r\nEND\r\n", "flags"),
        (Get((b"k",)), b"VALUE k 0 -1 1\r\n", "length"),
        (Get((b"k",)), b"VALUE k 4294967296 1 1\r\n", "out of range"),
        (Get((b"k",)), b"VALUE k 0 2 1\r\nabcd\r\n", "not followed by CRLF"),
        (Get((b"k",)), b"VALUE k 0 99999999999 1\r\n", "larger than"),
        (Store("set", b"k", b"v"), b"DELETED\r\n", "unexpected reply"),
        (Delete(b"k"), b"STORED\r\n", "unexpected reply"),
        (Touch(b"k", 1), b"EXISTS\r\n", "unexpected reply"),
        (Version(), b"END\r\n", "expected VERSION"),
        (Version(), b"X" * (MAX_LINE + 10), "longer than"),
    ],
)
def test_broken_replies_are_protocol_errors(request_: Request, data: bytes, message: str) -> None:
    codec = ClientCodec()
    codec.send(request_)
    codec.receive_data(data)
    with pytest.raises(ProtocolError, match=message):
        drain(codec)


def test_encoding() -> None:
    assert encode_request(Get((b"a", b"b"))) == b"gets a b\r\n"
    assert encode_request(Store("set", b"k", b"v\r\n", 60, 3)) == b"set k 3 60 3\r\nv\r\n\r\n"
    assert encode_request(Store("cas", b"k", b"v", 0, 0, 42)) == b"cas k 0 0 1 42\r\nv\r\n"
    assert encode_request(Delete(b"k")) == b"delete k\r\n"
    assert encode_request(Touch(b"k", 5)) == b"touch k 5\r\n"
    assert encode_request(Version()) == b"version\r\n"


@pytest.mark.parametrize(
    "request_",
    [
        Get(()),
        Get((b"",)),
        Get((b"a b",)),
        Get((b"a\x00",)),
        Get((b"k" * 251,)),
        Store("cas", b"k", b"v"),
        Store("set", b"k", b"v", cas_unique=1),
        Store("set", b"k", b"v", flags=1 << 32),
        Store("set", b"k", b"v", flags=-1),
        Delete(b"\x7f"),
        # exptimes memcached's 32-bit safe_strtol refuses with CLIENT_ERROR, then reads the value as commands
        Store("cas", b"k", b"v", 1000000000000000019884624838656, 0, 7),
        Store("set", b"k", b"v", 1 << 31),
        Store("set", b"k", b"v", -(1 << 31) - 1),
        Store("set", b"k", b"v", True),
        Store("set", b"k", b"v", 1.5),  # type: ignore[arg-type]
        Touch(b"k", 1 << 40),
        Touch(b"k", 10**6000),
        Store("cas", b"k", b"v", 0, 0, 1 << 64),
        Store("cas", b"k", b"v", 0, 0, -1),
        Store("set", b"k", "text"),  # type: ignore[arg-type]
        Store("set", b"k", b"v" * (16 * 1024 * 1024 + 1)),
        Store("incr", b"k", b"v"),  # type: ignore[arg-type]
        Get(("k",)),  # type: ignore[arg-type]
    ],
)
def test_requests_memcached_would_refuse_are_refused_locally(request_: Request) -> None:
    codec = ClientCodec()
    with pytest.raises(LocalProtocolError):
        codec.send(request_)
    assert codec.pending == 0


def test_longest_key_is_accepted() -> None:
    assert encode_request(Get((b"k" * 250,))).startswith(b"gets kkk")


def test_extreme_numbers_memcached_accepts_are_sent() -> None:
    top = (1 << 31) - 1
    assert encode_request(Store("set", b"k", b"v", top, (1 << 32) - 1)) == b"set k 4294967295 %d 1\r\nv\r\n" % top
    assert encode_request(Store("set", b"k", b"v", -1)) == b"set k 0 -1 1\r\nv\r\n"
    assert encode_request(Store("cas", b"k", b"", 0, 0, (1 << 64) - 1)).endswith(b" 18446744073709551615\r\n\r\n")
    assert encode_request(Touch(b"k", top)) == b"touch k %d\r\n" % top


def test_a_batch_with_one_bad_request_queues_nothing() -> None:
    codec = ClientCodec()
    with pytest.raises(LocalProtocolError):
        codec.send_batch([Version(), Get((b"bad key",))])
    assert codec.pending == 0
    assert codec.send_batch([Version(), Delete(b"k")]) == b"version\r\ndelete k\r\n"
    assert codec.pending == 2
