"""Pure tests of the memcached codec: bytes in (whole, one at a time, with trailing data), events out."""

from __future__ import annotations

import pytest

from sesh.protocol.memcache import (
    GET_KEYS_WINDOW,
    MAX_COMMAND_LINE,
    MAX_GET_LINE,
    MemcacheParser,
    get_keys,
    item_size,
)
from sesh.protocol.memcache_events import (
    NEED_DATA,
    Arithmetic,
    BadDataChunk,
    Close,
    Delete,
    ErrorReply,
    Event,
    Get,
    MetaArithmetic,
    MetaGet,
    MetaNoop,
    MetaSet,
    NoMemory,
    Quit,
    Store,
    TooLarge,
)
from sesh.protocol.memcache_numbers import b64decode_key, strtol32, strtoul32, strtoull


def events(data: bytes, *, one_byte_at_a_time: bool = False, max_item_size: int = 1024 * 1024) -> list[Event]:
    parser = MemcacheParser(max_item_size)
    out: list[Event] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if one_byte_at_a_time else [data]
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            out.append(event)
            if isinstance(event, Close):
                return out
    return out


SAMPLE = (
    b"set k 5 10 3\r\nabc\r\nget a b\r\ngets a\r\ndelete k noreply\r\nincr n 7\r\n"
    b"ms m 2 T5 F3 c\r\nhi\r\nmg m v k O1\r\nma n MD D2\r\nquit\r\n"
)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
def test_commands_whole_and_split(split: bool) -> None:
    got = events(SAMPLE, one_byte_at_a_time=split)
    assert got[0] == Store("set", b"k", 5, 10, b"abc", False)
    assert got[1] == Get((b"a", b"b"), False)
    assert got[2] == Get((b"a",), True)
    assert got[3] == Delete(b"k", True)
    assert got[4] == Arithmetic(b"n", 7, True, False)
    assert isinstance(got[5], MetaSet) and got[5].value == b"hi" and got[5].flags.ttl == 5
    assert got[5].flags.client_flags == 3 and got[5].flags.tokens == (b"T5", b"F3", b"c")
    assert isinstance(got[6], MetaGet) and got[6].flags.value and got[6].flags.tokens == (b"v", b"k", b"O1")
    assert isinstance(got[7], MetaArithmetic) and got[7].flags.mode == ord("D") and got[7].flags.delta == 2
    assert isinstance(got[8], Quit)
    assert len(got) == 9


def test_trailing_partial_command_waits() -> None:
    parser = MemcacheParser()
    parser.receive_data(b"get a\r\nset b 0 0 5\r\nab")
    assert parser.next_event() == Get((b"a",), False)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"cde\r\nget")
    assert parser.next_event() == Store("set", b"b", 0, 0, b"abcde", False)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b" c\n")
    assert parser.next_event() == Get((b"c",), False)


def test_value_may_contain_newlines() -> None:
    assert events(b"set a 0 0 4\r\n\r\n\r\n\r\n") == [Store("set", b"a", 0, 0, b"\r\n\r\n", False)]


def test_bad_data_chunk_and_noreply_suppression() -> None:
    assert events(b"set a 0 0 1\r\nxy\r\n") == [
        BadDataChunk(b"CLIENT_ERROR bad data chunk\r\n"),
        ErrorReply(b"ERROR\r\n"),
    ]
    assert events(b"set a 0 0 1 noreply\r\nxyz") == [BadDataChunk(b"")]
    # An error that noreply suppresses produces no event at all.
    assert events(b"incr a x noreply\r\nget a\r\n") == [Get((b"a",), False)]


def test_too_large_value_is_swallowed_without_buffering() -> None:
    parser = MemcacheParser(max_item_size=2048)
    parser.receive_data(b"set big 0 0 5000\r\n")
    event = parser.next_event()
    assert event == TooLarge(b"big", True, b"SERVER_ERROR object too large for cache\r\n")
    for _ in range(5):
        parser.receive_data(b"x" * 1000)
        assert parser.next_event() is NEED_DATA
        assert parser.buffered <= 1000
    parser.receive_data(b"\r\nget a\r\n")
    assert parser.next_event() == Get((b"a",), False)


def test_item_size_matches_memcached() -> None:
    # `stats` on memcached 1.6.18: "set a 0 0 3" is 63 bytes, "set bb 5 0 1" is 66.
    assert item_size(1, 0, 3) == 63
    assert item_size(2, 5, 1) == 66


def test_line_without_newline_is_closed_after_limit() -> None:
    parser = MemcacheParser()
    parser.receive_data(b"x" * MAX_COMMAND_LINE)
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"x")
    assert isinstance(parser.next_event(), Close)


def test_long_get_line_is_allowed() -> None:
    keys = b" ".join(b"k%d" % i for i in range(1000))
    parser = MemcacheParser()
    parser.receive_data(b"get " + keys[:3000])
    assert parser.next_event() is NEED_DATA
    parser.receive_data(keys[3000:] + b"\r\n")
    event = parser.next_event()
    assert isinstance(event, Get)
    assert list(get_keys(event)) == [b"k%d" % i for i in range(1000)]


@pytest.mark.parametrize("name", [b"get", b"gets", b"gat 30", b"gats 30", b"bget"])
def test_long_get_line_keys_are_split_lazily_and_match_the_short_form(name: bytes) -> None:
    """Spaces anywhere (runs of them, across window edges) and keys of every length up to 250."""
    keys = [b"%d" % i + b"x" * (i % 248) for i in range(1, 400)]
    spaces = [b" " * (1 + i % 3) for i in range(len(keys))]
    line = b"  " + name + b"".join(sp + key for sp, key in zip(spaces, keys, strict=True)) + b"   "
    assert len(line) > 8 * GET_KEYS_WINDOW
    (event,) = events(line + b"\r\n")
    assert isinstance(event, Get) and event.keys == () and not event.key_too_long
    assert list(get_keys(event)) == keys
    short = events(b"get a b\r\n")[0]
    assert isinstance(short, Get) and list(get_keys(short)) == [b"a", b"b"]


def test_long_get_line_with_a_key_too_long_stops_before_it() -> None:
    keys = b" ".join(b"k%d" % i for i in range(1000))
    (event,) = events(b"get " + keys + b" " + b"x" * 251 + b" after\r\n")
    assert isinstance(event, Get) and event.key_too_long
    assert list(get_keys(event)) == [b"k%d" % i for i in range(1000)]
    assert events(b"gat nope " + keys + b"\r\n") == [ErrorReply(b"CLIENT_ERROR invalid exptime argument\r\n")]
    assert events(b"get" + b" " * 3000 + b"\r\n") == [ErrorReply(b"ERROR\r\n")]


def test_value_in_many_pieces_is_collected_once() -> None:
    parser = MemcacheParser()
    value = bytes(range(256)) * 400
    parser.receive_data(b"set k 0 0 %d\r\n" % len(value) + value[:10])
    assert parser.next_event() is NEED_DATA
    assert parser.awaiting_value == (b"k", len(value) + 2)
    for start in range(10, len(value), 997):
        parser.receive_data(value[start : start + 997])
        assert parser.next_event() is NEED_DATA
        assert parser.buffered == min(start + 997, len(value))
    parser.receive_data(b"\r\nget k\r\n")
    assert parser.next_event() == Store("set", b"k", 0, 0, value, False)
    assert parser.next_event() == Get((b"k",), False)
    assert parser.awaiting_value is None and not parser.mid_command


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"set k 0 0 100\r\n", NoMemory(b"k", True, b"SERVER_ERROR out of memory storing object\r\n")),
        (b"set k 0 0 100 noreply\r\n", NoMemory(b"k", True, b"")),
        (b"add k 0 0 100\r\n", NoMemory(b"k", False, b"SERVER_ERROR out of memory storing object\r\n")),
        (b"ms k 100 q\r\n", NoMemory(b"k", True, b"SERVER_ERROR out of memory storing object\r\n")),
    ],
)
def test_refused_value_is_skipped_as_it_arrives(line: bytes, expected: NoMemory) -> None:
    parser = MemcacheParser()
    parser.receive_data(line + b"x" * 30)
    assert parser.next_event() is NEED_DATA
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"x" * 30)
    assert parser.refuse_value() == expected
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 0 and parser.mid_command
    parser.receive_data(b"x" * 40 + b"\r\nmn\r\n")
    assert parser.next_event() == MetaNoop()
    assert not parser.mid_command


def test_partial_line_after_a_large_receive_does_not_keep_the_receive() -> None:
    parser = MemcacheParser()
    parser.receive_data(b"mn\r\n" * 10000 + b"get par")
    while parser.next_event() is not NEED_DATA:
        pass
    assert parser.buffered == 7
    assert len(parser._buf) == 7


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"mg k \xff\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
        (b"mg k !\r\n", b"CLIENT_ERROR invalid flag\r\n"),
        (b"mg k v v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
        (b"mg k y\r\n", b"CLIENT_ERROR invalid flag\r\n"),
        (b"mg k Tx\r\n", b"CLIENT_ERROR bad token in command line format\r\n"),
        (b"md k y\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
        (b"ma k Dx\r\n", b"CLIENT_ERROR invalid or duplicate flag\r\n"),
        (b"mz k\r\n", b"ERROR\r\n"),
        (b"mg\r\n", b"ERROR\r\n"),
    ],
)
def test_meta_flag_errors(line: bytes, reply: bytes) -> None:
    assert events(line) == [ErrorReply(reply)]


def test_meta_set_error_swallows_its_data() -> None:
    assert events(b"ms k 2 MX\r\nhi\r\nmn\r\n")[0] == ErrorReply(b"CLIENT_ERROR invalid mode for ms M token\r\n")
    assert len(events(b"ms k 2 MX\r\nhi\r\nmn\r\n")) == 2


def test_binary_protocol_and_http_are_closed() -> None:
    assert isinstance(events(b"\x80\x00\x00")[0], Close)
    assert isinstance(events(b"GET / HTTP/1.1\r\n")[0], Close)


def test_c_number_parsing() -> None:
    assert strtol32(b"12") == 12
    assert strtol32(b"+12") == 12
    assert strtol32(b"-12") == -12
    assert strtol32(b"4294967297") == 1  # memcached truncates a long into an int32
    assert strtol32(b"12x") is None
    assert strtol32(b"") is None
    assert strtol32(b"12\t") == 12
    assert strtoul32(b"-1") is None
    assert strtoul32(b"-0") == 0
    assert strtoul32(b"4294967296") == 0
    assert strtoull(b"18446744073709551615") == 2**64 - 1
    assert strtoull(b"18446744073709551616") is None


def test_base64_keys_decode_leniently() -> None:
    assert b64decode_key(b"Zm9vYmFy") == b"foobar"
    assert b64decode_key(b"YQ==") == b"a"
    assert b64decode_key(b"Zm9") is None
    assert b64decode_key(b"!!!!") is None


def test_long_get_line_in_small_pieces_is_gathered_and_still_limited() -> None:
    keys = b" ".join(b"key%06d" % i for i in range(100_000))  # ~1 MB, under MAX_GET_LINE
    payload = b"gets " + keys + b"\r\nmn\r\n"
    parser = MemcacheParser()
    got: list[Event] = []
    for start in range(0, len(payload), 1000):
        parser.receive_data(payload[start : start + 1000])
        while (event := parser.next_event()) is not NEED_DATA:
            got.append(event)
        if not got:
            assert parser.mid_command and parser.buffered == min(start + 1000, len(payload))
    assert len(got) == 2 and isinstance(got[0], Get) and got[0].with_cas and got[1] == MetaNoop()
    assert list(get_keys(got[0])) == keys.split(b" ")
    assert not parser.mid_command and parser.buffered == 0

    parser = MemcacheParser()
    parser.receive_data(b"get ")
    for _ in range(MAX_GET_LINE // 4096 + 1):
        parser.receive_data(b"k" * 4095 + b" ")
        event = parser.next_event()
        if event is not NEED_DATA:
            break
    assert event == Close(f"get line longer than {MAX_GET_LINE} bytes")
