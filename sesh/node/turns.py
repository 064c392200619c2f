"""Per-key FIFO locks: one request (or one replicated write) per session at a time.

Like ``trio.Lock``, FIFO and safe to cancel, but without its owner checks and ownership bookkeeping,
which cost more than the rest of a request's turn, and an uncontended acquire is no schedule point
(the awaits around it are schedule points enough). A releasing holder hands the lock straight to the
first waiter. The table holds only keys in use, so it is bounded by the tasks holding or waiting; the
entries of keys no longer in use are kept for reuse (a few).
"""

from __future__ import annotations

from trio.lowlevel import ParkingLot

SPARE_ENTRIES = 64


class _Entry:
    __slots__ = ("held", "users", "waiting")

    def __init__(self) -> None:
        self.held = False  # never False while someone waits
        self.users = 0  # the holder plus the waiters
        self.waiting = ParkingLot()


class KeyedLocks:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._spare: list[_Entry] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        """Whether ``key``'s lock is held (or waited for)."""
        return key in self._entries

    def users(self, key: str) -> int:
        """The holder of ``key``'s lock plus those waiting for it."""
        entry = self._entries.get(key)
        return entry.users if entry is not None else 0

    async def acquire(self, key: str) -> bool:
        """Take ``key``'s lock, in arrival order; True when it was held and had to be waited for."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = self._spare.pop() if self._spare else _Entry()
        entry.users += 1
        if not entry.held:
            entry.held = True
            return False
        try:
            await entry.waiting.park()  # woken holding it: the holder before hands it over
        except BaseException:
            self._leave(key, entry)
            raise
        return True

    def release(self, key: str) -> None:
        entry = self._entries[key]
        if entry.waiting:
            entry.waiting.unpark()  # still held: the next waiter owns it now
        else:
            entry.held = False
        self._leave(key, entry)

    def _leave(self, key: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:  # nobody holds or waits: as new
            del self._entries[key]
            if len(self._spare) < SPARE_ENTRIES:
                self._spare.append(entry)
