"""The store's items: an LRU dict with a memory limit, memcached's expiry and flush rules, CAS uniques
and the counters that ``stats`` reports. Plain synchronous Python; the current time (whole Unix
seconds, as memcached's clock ticks) is passed into every call, so tests drive it with a fake clock.

Theory of operation. Items live in an ``OrderedDict`` whose order is the LRU: a hit moves the key to
the end, eviction takes from the front. Expired and flushed items are removed lazily when touched
(as memcached does), and eagerly when eviction meets them at the LRU's cold end. Memory is counted
per item as key + value + :data:`ITEM_OVERHEAD` (the Python objects and dict slot around them), so
``-m`` bounds what the process really holds; ``bytes`` in ``stats`` is memcached's own item size so
clients see the numbers memcached would show. Values still arriving are reserved (:meth:`Storage.reserve`)
against the same limit (memcached allocates the item when its command line is read), so unfinished
sets cannot hold memory beyond ``-m`` either.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from sesh.protocol.memcache import DEFAULT_MAX_ITEM_SIZE, item_size

# Python's cost of one stored item beyond its key and value bytes: the Item object with its slots
# (~80 bytes), the headers of the key and value bytes objects (2 x 33), the OrderedDict's hash slot
# and linked-list node (~100). Measured with tracemalloc over 100k items (see tests).
ITEM_OVERHEAD = 240
# Data still arriving (a value whose command line came first) may hold at most this share of -m:
# memcached reserves the item when the line arrives, evicting for it, so a flood of unfinished sets
# can empty its cache; here it can take half of it at most, and the rest is refused.
IN_FLIGHT_SHARE = 2
# memcached treats an exptime up to 30 days as relative, anything larger as a Unix time.
REALTIME_MAXDELTA = 60 * 60 * 24 * 30
# memcached's do_item_update only refreshes an item's access time this often (ITEM_UPDATE_INTERVAL).
UINT64 = (1 << 64) - 1

FETCHED = 1
ACTIVE = 2
TOKEN_SENT = 4
STALE = 8
BINARY_KEY = 16


class Item:
    """One stored value. ``exptime`` is an absolute Unix time (0: never); ``time`` the last access."""

    __slots__ = ("bits", "cas", "exptime", "flags", "time", "value")

    def __init__(self, value: bytes, flags: int, exptime: int, cas: int, time: int, bits: int = 0) -> None:
        self.value = value
        self.flags = flags
        self.exptime = exptime
        self.cas = cas
        self.time = time
        self.bits = bits


class StoreResult(enum.Enum):
    STORED = "STORED"
    NOT_STORED = "NOT_STORED"
    EXISTS = "EXISTS"
    NOT_FOUND = "NOT_FOUND"
    NO_MEMORY = "NO_MEMORY"


class DeltaResult(enum.Enum):
    OK = "OK"
    NON_NUMERIC = "NON_NUMERIC"
    NOT_FOUND = "NOT_FOUND"
    CAS_MISMATCH = "CAS_MISMATCH"
    NO_MEMORY = "NO_MEMORY"


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    curr_items: int
    total_items: int
    bytes: int
    memory_used: int
    # Held for values (and long get lines) still arriving; with memory_used, what -m bounds.
    memory_reserved: int
    limit_maxbytes: int
    evictions: int
    evicted_unfetched: int
    evicted_active: int
    reclaimed: int
    expired_unfetched: int
    cmd_get: int
    cmd_set: int
    cmd_flush: int
    cmd_touch: int
    cmd_meta: int
    get_hits: int
    get_misses: int
    get_expired: int
    get_flushed: int
    delete_misses: int
    delete_hits: int
    incr_misses: int
    incr_hits: int
    decr_misses: int
    decr_hits: int
    cas_misses: int
    cas_hits: int
    cas_badval: int
    touch_hits: int
    touch_misses: int
    store_too_large: int
    store_no_memory: int
    oldest_live: int


@dataclass(slots=True)
class Counters:
    """The mutable command counters, named as memcached's ``stats`` names them."""

    cas_badval: int = 0
    cas_hits: int = 0
    cas_misses: int = 0
    cmd_flush: int = 0
    cmd_get: int = 0
    cmd_meta: int = 0
    cmd_set: int = 0
    cmd_touch: int = 0
    decr_hits: int = 0
    decr_misses: int = 0
    delete_hits: int = 0
    delete_misses: int = 0
    evicted_active: int = 0
    evicted_unfetched: int = 0
    evictions: int = 0
    expired_unfetched: int = 0
    get_expired: int = 0
    get_flushed: int = 0
    get_hits: int = 0
    get_misses: int = 0
    incr_hits: int = 0
    incr_misses: int = 0
    reclaimed: int = 0
    store_no_memory: int = 0
    store_too_large: int = 0
    total_items: int = 0
    touch_hits: int = 0
    touch_misses: int = 0


def expiry(exptime: int, now: int) -> int:
    """memcached's realtime(): a client exptime as an absolute Unix time; 0 never expires.

    Negative exptimes mean "already expired" (memcached maps them into the past, never to 0).
    """
    if exptime == 0:
        return 0
    if exptime < 0:
        return 1
    if exptime > REALTIME_MAXDELTA:
        return exptime
    return now + exptime


class Storage:
    def __init__(self, memory_limit: int, *, now: int = 0, max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> None:
        self.memory_limit = memory_limit
        # -I: the parser refuses larger values before they arrive; append and prepend are checked here,
        # as memcached refuses to grow an item past it (so no reply is ever larger than one -I item).
        self.max_item_size = max_item_size
        self.items: OrderedDict[bytes, Item] = OrderedDict()
        self.memory_used = 0
        # Memory held for data in flight (see reserve); counted with memory_used against the limit.
        self.reserved = 0
        self.bytes = 0
        self.counters = Counters()
        self.last_cas = 0
        # flush_all: items last touched at or before oldest_live, or older than oldest_cas, are gone
        # once oldest_live is reached (memcached's settings.oldest_live / oldest_cas).
        self.oldest_live = 0
        self.oldest_cas = 0
        self.started = now

    # -- lookups -----------------------------------------------------------------------------------

    def fetch(self, key: bytes, now: int) -> Item | None:
        """The live item under ``key``, without bumping it; expired or flushed items are dropped."""
        item = self.items.get(key)
        if item is None:
            return None
        if self.oldest_live and self.oldest_live <= now and (
            item.time <= self.oldest_live or item.cas < self.oldest_cas
        ):
            self.unlink(key)
            self.counters.get_flushed += 1
            return None
        if item.exptime and item.exptime <= now:
            self.unlink(key)
            self.counters.get_expired += 1
            return None
        return item

    def get(self, key: bytes, now: int) -> Item | None:
        """A counted, bumping fetch: what ``get`` does for one key."""
        item = self.fetch(key, now)
        counters = self.counters
        counters.cmd_get += 1
        if item is None:
            counters.get_misses += 1
            return None
        counters.get_hits += 1
        self.bump(key, item, now)
        return item

    def bump(self, key: bytes, item: Item, now: int) -> None:
        """A hit: most recently used, and memcached's fetched/active marks (for mg's h and l flags)."""
        self.items.move_to_end(key)
        bits = item.bits
        if not bits & ACTIVE:
            if not bits & FETCHED:
                item.bits = bits | FETCHED
            else:
                item.bits = bits | ACTIVE
                item.time = now

    def is_live(self, item: Item, now: int) -> bool:
        if item.exptime and item.exptime <= now:
            return False
        return not (
            self.oldest_live and self.oldest_live <= now and (
                item.time <= self.oldest_live or item.cas < self.oldest_cas
            )
        )

    # -- changes -----------------------------------------------------------------------------------

    def next_cas(self) -> int:
        self.last_cas += 1
        return self.last_cas

    def unlink(self, key: bytes) -> Item | None:
        item = self.items.pop(key, None)
        if item is not None:
            self.memory_used -= len(key) + len(item.value) + ITEM_OVERHEAD
            self.bytes -= item_size(len(key), item.flags, len(item.value))
        return item

    def reserve(self, cost: int, now: int) -> bool:
        """Hold ``cost`` bytes of the limit for a value still arriving, evicting to make room, as
        memcached allocates an item as soon as its command line is read. False (memcached's out of
        memory) when the data in flight would pass its share of the limit. Give it back with
        :meth:`release` whatever happens to the value."""
        if self.reserved + cost > self.memory_limit // IN_FLIGHT_SHARE:
            return False
        if self.memory_used + self.reserved + cost > self.memory_limit:
            self._evict(cost, now)
        self.reserved += cost
        return True

    def release(self, cost: int) -> None:
        self.reserved -= cost

    def link(self, key: bytes, item: Item, now: int) -> bool:
        """Insert ``item`` (replacing any old one), evicting from the LRU's cold end to make room.

        False when the item does not fit beside the data in flight even with every other item evicted
        (memcached's out of memory).
        """
        cost = len(key) + len(item.value) + ITEM_OVERHEAD
        if cost + self.reserved > self.memory_limit:
            return False
        self.unlink(key)
        if self.memory_used + self.reserved + cost > self.memory_limit:
            self._evict(cost, now)
        self.items[key] = item
        self.memory_used += cost
        self.bytes += item_size(len(key), item.flags, len(item.value))
        self.counters.total_items += 1
        return True

    def _evict(self, cost: int, now: int) -> None:
        counters = self.counters
        items = self.items
        while items and self.memory_used + self.reserved + cost > self.memory_limit:
            key, item = next(iter(items.items()))
            self.unlink(key)
            if not self.is_live(item, now):
                counters.reclaimed += 1
                if not item.bits & FETCHED:
                    counters.expired_unfetched += 1
                continue
            counters.evictions += 1
            if not item.bits & FETCHED:
                counters.evicted_unfetched += 1
            if item.bits & ACTIVE:
                counters.evicted_active += 1

    def store(
        self,
        mode: str,
        key: bytes,
        value: bytes,
        flags: int,
        exptime: int,
        now: int,
        compare_cas: int = 0,
        *,
        allow_stale: bool = False,
        binary_key: bool = False,
    ) -> tuple[StoreResult, int]:
        """memcached's do_store_item for set/add/replace/append/prepend/cas; returns (result, new cas).

        ``exptime`` is the client's value (see :func:`expiry`). ``compare_cas`` 0 means no CAS check.
        """
        counters = self.counters
        counters.cmd_set += 1
        old = self.fetch(key, now)
        bits = BINARY_KEY if binary_key else 0
        new: Item | None = None
        if old is not None:
            if compare_cas == 0:
                cas_result = "none"
            elif compare_cas == old.cas:
                cas_result = "match"
            elif allow_stale and compare_cas < old.cas:
                cas_result = "stale"
            else:
                cas_result = "badval"
            if mode == "add":
                old.time = now  # add promotes the existing item (do_item_update)
                self.items.move_to_end(key)
                return StoreResult.NOT_STORED, 0
            if mode == "cas":
                if cas_result == "match":
                    counters.cas_hits += 1
                    new = Item(value, flags, expiry(exptime, now), 0, now, bits)
                elif cas_result == "stale":
                    counters.cas_hits += 1
                    new = Item(value, flags, old.exptime, 0, now, bits | STALE | (old.bits & TOKEN_SENT))
                else:
                    counters.cas_badval += 1
                    return StoreResult.EXISTS, 0
            elif mode in ("append", "prepend"):
                if cas_result not in ("none", "match"):
                    return StoreResult.EXISTS, 0
                if item_size(len(key), old.flags, len(old.value) + len(value)) > self.max_item_size:
                    return StoreResult.NOT_STORED, 0
                joined = old.value + value if mode == "append" else value + old.value
                new = Item(joined, old.flags, old.exptime, 0, now, old.bits & BINARY_KEY)
            else:  # set, replace
                new = Item(value, flags, expiry(exptime, now), 0, now, bits)
        else:
            if mode == "cas":
                counters.cas_misses += 1
                return StoreResult.NOT_FOUND, 0
            if mode not in ("set", "add"):
                return StoreResult.NOT_STORED, 0
            new = Item(value, flags, expiry(exptime, now), 0, now, bits)
        new.cas = self.next_cas()
        if not self.link(key, new, now):
            counters.store_no_memory += 1
            if mode == "set":
                self.unlink(key)  # as memcached: a failed set must not leave the old value readable
            return StoreResult.NO_MEMORY, 0
        return StoreResult.STORED, new.cas

    def delete(self, key: bytes, now: int) -> bool:
        if self.fetch(key, now) is None:
            self.counters.delete_misses += 1
            return False
        self.unlink(key)
        self.counters.delete_hits += 1
        return True

    def touch(self, key: bytes, exptime: int, now: int) -> Item | None:
        """touch/gat: a bumping fetch that sets a new exptime; counted as memcached counts touches."""
        item = self.fetch(key, now)
        counters = self.counters
        counters.cmd_touch += 1
        if item is None:
            counters.touch_misses += 1
            return None
        counters.touch_hits += 1
        self.bump(key, item, now)
        item.exptime = expiry(exptime, now)
        return item

    def add_delta(
        self, key: bytes, incr: bool, delta: int, now: int, compare_cas: int = 0
    ) -> tuple[DeltaResult, Item | None, bytes]:
        """memcached's do_add_delta: (result, the changed item, the new number as digits).

        A result that fits in the old value's length is written in place, padded with spaces (and
        keeps the item); a longer one replaces the item, exactly as memcached does.
        """
        item = self.fetch(key, now)
        if item is None:
            return DeltaResult.NOT_FOUND, None, b""
        if not item.value:
            return DeltaResult.NON_NUMERIC, None, b""
        if compare_cas and item.cas != compare_cas:
            return DeltaResult.CAS_MISMATCH, None, b""
        current = _stored_number(item.value)
        if current is None:
            return DeltaResult.NON_NUMERIC, None, b""
        counters = self.counters
        if incr:
            number = (current + delta) & UINT64
            counters.incr_hits += 1
        else:
            number = 0 if delta > current else current - delta
            counters.decr_hits += 1
        digits = b"%d" % number
        if len(digits) <= len(item.value):
            value = digits + b" " * (len(item.value) - len(digits))
            self.memory_used += len(value) - len(item.value)
            item.value = value
            item.cas = self.next_cas()
            item.time = now
            return DeltaResult.OK, item, digits
        new = Item(digits, item.flags, item.exptime, self.next_cas(), now, item.bits & BINARY_KEY)
        if not self.link(key, new, now):
            return DeltaResult.NO_MEMORY, None, b""
        return DeltaResult.OK, new, digits

    def flush_all(self, delay: int, now: int) -> None:
        """flush_all [delay]: everything stored until then is invalid from then on."""
        self.counters.cmd_flush += 1
        deadline = expiry(delay, now) if delay > 0 else now
        self.oldest_live = deadline - 1
        if self.oldest_live <= now:
            self.oldest_cas = self.next_cas()

    def restore(self, key: bytes, item: Item, now: int) -> bool:
        """Put back an item read from a state file, keeping its CAS (the counter stays above it).

        Items arrive coldest first; if -m shrank since they were saved, the coldest are evicted.
        """
        if not self.link(key, item, now):
            return False
        self.last_cas = max(self.last_cas, item.cas)
        return True

    def live_items(self, now: int) -> list[tuple[bytes, Item]]:
        """Every live item, coldest first (the order a restart must restore them in)."""
        return [(key, item) for key, item in self.items.items() if self.is_live(item, now)]

    def reset_counters(self) -> None:
        """``stats reset``: the command counters start again (item totals too, as memcached's)."""
        self.counters = Counters()

    def statistics(self) -> StoreStatistics:
        c = self.counters
        return StoreStatistics(
            curr_items=len(self.items),
            total_items=c.total_items,
            bytes=self.bytes,
            memory_used=self.memory_used,
            memory_reserved=self.reserved,
            limit_maxbytes=self.memory_limit,
            evictions=c.evictions,
            evicted_unfetched=c.evicted_unfetched,
            evicted_active=c.evicted_active,
            reclaimed=c.reclaimed,
            expired_unfetched=c.expired_unfetched,
            cmd_get=c.cmd_get,
            cmd_set=c.cmd_set,
            cmd_flush=c.cmd_flush,
            cmd_touch=c.cmd_touch,
            cmd_meta=c.cmd_meta,
            get_hits=c.get_hits,
            get_misses=c.get_misses,
            get_expired=c.get_expired,
            get_flushed=c.get_flushed,
            delete_misses=c.delete_misses,
            delete_hits=c.delete_hits,
            incr_misses=c.incr_misses,
            incr_hits=c.incr_hits,
            decr_misses=c.decr_misses,
            decr_hits=c.decr_hits,
            cas_misses=c.cas_misses,
            cas_hits=c.cas_hits,
            cas_badval=c.cas_badval,
            touch_hits=c.touch_hits,
            touch_misses=c.touch_misses,
            store_too_large=c.store_too_large,
            store_no_memory=c.store_no_memory,
            oldest_live=self.oldest_live,
        )


_C_SPACE = b" \t\n\v\f\r"


def _stored_number(value: bytes) -> int | None:
    """strtoull over an item's data as memcached does: the data is followed by \\r\\n there, so a
    number may be padded with spaces (an earlier in-place decr) or end the value."""
    if value.isdigit():
        number = int(value)
        return number if number <= UINT64 else None
    text = value.lstrip(_C_SPACE)
    start = 1 if text[:1] in (b"+", b"-") else 0
    end = start
    while end < len(text) and 48 <= text[end] <= 57:
        end += 1
    if end == start or (end < len(text) and text[end] not in _C_SPACE):
        return None
    number = int(text[start:end])
    if number > UINT64:
        return None
    if text[:1] == b"-":
        number = (-number) & UINT64
        if number > UINT64 >> 1:
            return None
    return number
