"""Storage and command tests with a fake clock: expiry, eviction, CAS, flush, warm-restart files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sesh.net.server import ConnectionCounter
from sesh.protocol.memcache import MemcacheParser
from sesh.protocol.memcache_events import NEED_DATA
from sesh.store.commands import CommandHandler
from sesh.store.statefile import StateFileError, load_state, parse_state, save_state
from sesh.store.stats import ServerInfo
from sesh.store.storage import ITEM_OVERHEAD, REALTIME_MAXDELTA, Storage, StoreResult

T0 = 1_700_000_000


class Session:
    """A storage, a command handler and a parser: text in, reply out, time set by the test."""

    def __init__(self, memory: int = 64 * 1024 * 1024) -> None:
        self.storage = Storage(memory, now=T0)
        info = ServerInfo(11211, "127.0.0.1", 1024, 1024 * 1024, T0, ConnectionCounter())
        self.handler = CommandHandler(self.storage, info)
        self.now = T0

    def __call__(self, text: bytes) -> bytes:
        parser = MemcacheParser()
        parser.receive_data(text)
        out = b""
        while (event := parser.next_event()) is not NEED_DATA:
            out += self.handler.handle(event, self.now)  # type: ignore[arg-type]
        return out


@pytest.fixture
def mc() -> Session:
    return Session()


def test_relative_expiry(mc: Session) -> None:
    assert mc(b"set a 0 10 1\r\nx\r\n") == b"STORED\r\n"
    mc.now += 9
    assert mc(b"get a\r\n") == b"VALUE a 0 1\r\nx\r\nEND\r\n"
    mc.now += 1
    assert mc(b"get a\r\n") == b"END\r\n"
    assert mc.storage.statistics().get_expired == 1


def test_absolute_and_negative_expiry(mc: Session) -> None:
    mc(b"set abs 0 %d 1\r\nx\r\n" % (T0 + 100))
    mc(b"set past 0 %d 1\r\nx\r\n" % (T0 - 100))
    mc(b"set neg 0 -1 1\r\nx\r\n")
    assert mc(b"get abs past neg\r\n") == b"VALUE abs 0 1\r\nx\r\nEND\r\n"
    mc.now += 100
    assert mc(b"get abs\r\n") == b"END\r\n"
    # exactly 30 days is still relative
    mc(b"set month 0 %d 1\r\nx\r\n" % REALTIME_MAXDELTA)
    mc.now += REALTIME_MAXDELTA - 1
    assert mc(b"get month\r\n") == b"VALUE month 0 1\r\nx\r\nEND\r\n"


def test_touch_and_gat_extend_life(mc: Session) -> None:
    mc(b"set a 0 5 1\r\nx\r\n")
    assert mc(b"touch a 100\r\n") == b"TOUCHED\r\n"
    mc.now += 50
    assert mc(b"gat 10 a\r\n") == b"VALUE a 0 1\r\nx\r\nEND\r\n"
    assert mc(b"mg a t\r\n") == b"HD t10\r\n"
    mc.now += 10
    assert mc(b"get a\r\n") == b"END\r\n"


def test_meta_ttl_flags_follow_request_order(mc: Session) -> None:
    mc(b"ms a 1 T100\r\nx\r\n")
    mc.now += 40
    assert mc(b"mg a t T30\r\n") == b"HD t60\r\n"
    assert mc(b"mg a T20 t\r\n") == b"HD t20\r\n"
    assert mc(b"ma b N50 t\r\n") == b"HD t50\r\n"
    assert mc(b"ma c t N50\r\n") == b"HD t-1\r\n"
    assert mc(b"mg c t\r\n") == b"HD t50\r\n"


def test_lru_eviction_keeps_recently_used(mc: Session) -> None:
    value = b"v" * 1000
    per_item = len(value) + 4 + ITEM_OVERHEAD
    small = Session(memory=per_item * 10 + 1)
    for i in range(10):
        assert small(b"set key%d 0 0 1000\r\n%s\r\n" % (i, value)) == b"STORED\r\n"
    small(b"get key0\r\n")  # key0 becomes most recently used
    small(b"set key10 0 0 1000\r\n%s\r\n" % value)
    assert small(b"get key1\r\n") == b"END\r\n"  # the least recently used went
    assert small(b"get key0\r\n").startswith(b"VALUE key0")
    stats = small.storage.statistics()
    assert stats.evictions == 1 and stats.curr_items == 10
    assert stats.memory_used <= small.storage.memory_limit


def test_eviction_reclaims_expired_first_and_counts_it() -> None:
    value = b"v" * 1000
    per_item = len(value) + 4 + ITEM_OVERHEAD
    small = Session(memory=per_item * 2)
    small(b"set key0 0 5 1000\r\n%s\r\n" % value)
    small(b"set key1 0 0 1000\r\n%s\r\n" % value)
    small.now += 10
    small(b"set key2 0 0 1000\r\n%s\r\n" % value)
    stats = small.storage.statistics()
    assert stats.evictions == 0 and stats.reclaimed == 1 and stats.expired_unfetched == 1


def test_item_larger_than_memory_is_refused() -> None:
    small = Session(memory=2000)
    assert small(b"set a 0 0 3000\r\n%s\r\n" % (b"x" * 3000)) == b"SERVER_ERROR out of memory storing object\r\n"


def test_cas_race_between_two_clients(mc: Session) -> None:
    mc(b"set s 0 0 1\r\n0\r\n")
    unique = int(mc(b"gets s\r\n").split(b"\r\n")[0].split()[-1])
    # Both clients read the same unique; the first write wins, the second sees EXISTS.
    assert mc(b"cas s 0 0 1 %d\r\nA\r\n" % unique) == b"STORED\r\n"
    assert mc(b"cas s 0 0 1 %d\r\nB\r\n" % unique) == b"EXISTS\r\n"
    assert mc(b"get s\r\n") == b"VALUE s 0 1\r\nA\r\nEND\r\n"


def test_incr_wraps_at_64_bits_and_decr_stops_at_zero(mc: Session) -> None:
    mc(b"set n 0 0 20\r\n18446744073709551615\r\n")
    assert mc(b"incr n 1\r\n") == b"0\r\n"
    assert mc(b"get n\r\n") == b"VALUE n 0 20\r\n0                   \r\nEND\r\n"
    assert mc(b"decr n 5\r\n") == b"0\r\n"
    assert mc(b"incr n 1234\r\n") == b"1234\r\n"


def test_flush_all_with_delay(mc: Session) -> None:
    mc(b"set a 0 0 1\r\nx\r\n")
    assert mc(b"flush_all 10\r\n") == b"OK\r\n"
    mc.now += 5
    mc(b"set b 0 0 1\r\ny\r\n")
    assert mc(b"get a b\r\n") == b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n"
    mc.now += 5
    assert mc(b"get a b\r\n") == b"END\r\n"
    mc(b"set c 0 0 1\r\nz\r\n")
    assert mc(b"get c\r\n") == b"VALUE c 0 1\r\nz\r\nEND\r\n"


def test_stale_and_win_flags(mc: Session) -> None:
    mc(b"ms a 1\r\nx\r\n")
    assert mc(b"md a I\r\n") == b"HD\r\n"
    assert mc(b"mg a v\r\n") == b"VA 1 X W\r\nx\r\n"
    assert mc(b"mg a v\r\n") == b"VA 1 Z X\r\nx\r\n"


def test_store_result_codes(mc: Session) -> None:
    storage = mc.storage
    assert storage.store("add", b"k", b"1", 0, 0, T0) == (StoreResult.STORED, 1)
    assert storage.store("add", b"k", b"2", 0, 0, T0)[0] is StoreResult.NOT_STORED
    assert storage.store("cas", b"k", b"2", 0, 0, T0, 99)[0] is StoreResult.EXISTS
    assert storage.store("cas", b"k", b"2", 0, 0, T0, 1) == (StoreResult.STORED, 2)
    assert storage.store("cas", b"nope", b"2", 0, 0, T0, 1)[0] is StoreResult.NOT_FOUND
    assert storage.statistics().cas_misses == 1


def test_state_file_round_trip(tmp_path: Path, mc: Session) -> None:
    mc(b"set a 7 0 3\r\nabc\r\nset b 0 100 2\r\nhi\r\nset gone 0 1 1\r\nx\r\nms Zm9v 1 b\r\nz\r\n")
    mc(b"get a\r\n")  # a becomes most recently used
    path = tmp_path / "store.state"
    save_state(str(path), mc.storage.live_items(mc.now), mc.storage.last_cas)
    fresh = Storage(64 * 1024 * 1024, now=T0 + 2)
    assert load_state(str(path), fresh, T0 + 2) == 3  # "gone" expired in between
    assert list(fresh.items) == [b"b", b"foo", b"a"]
    item = fresh.items[b"a"]
    assert (item.value, item.flags, item.cas) == (b"abc", 7, mc.storage.items[b"a"].cas)
    assert fresh.items[b"b"].exptime == T0 + 100
    assert fresh.last_cas == mc.storage.last_cas


def test_state_file_damage_is_reported(tmp_path: Path, mc: Session) -> None:
    mc(b"set a 0 0 3\r\nabc\r\n")
    path = tmp_path / "store.state"
    save_state(str(path), mc.storage.live_items(mc.now), mc.storage.last_cas)
    data = path.read_bytes()
    with pytest.raises(StateFileError, match="truncated"):
        parse_state(data[:-5], "f")
    with pytest.raises(StateFileError, match="corrupt"):
        parse_state(data[:20] + b"X" + data[21:], "f")
    with pytest.raises(StateFileError, match="not a sesh store state file"):
        parse_state(b"hello" * 20, "f")
    assert load_state(str(tmp_path / "missing"), Storage(1024 * 1024), T0) is None
