"""The warm-restart state file: every live item with its flags, exptime and CAS.

Layout (all integers big-endian)::

    header   b"SESHSTORE" version:u8 last_cas:u64
    item*    key_len:u16 value_len:u32 flags:u32 exptime:i64 cas:u64 bits:u16 key value
    trailer  b"END!" count:u64 crc32:u32        (crc32 of everything before the trailer)

Items are written coldest first so loading them in order rebuilds the LRU. The file is written to a
temporary name in the same directory, flushed to disk and renamed over the old one, so a crash during
the write leaves the previous state intact. Loading checks the magic, the version, the count and the
checksum: a truncated or corrupt file is refused as a whole with a message saying what is wrong.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from sesh.store.storage import BINARY_KEY, FETCHED, STALE, TOKEN_SENT, Item, Storage

MAGIC = b"SESHSTORE"
VERSION = 1
_HEADER = struct.Struct(">9sBQ")
_ITEM = struct.Struct(">HIIqQH")
_TRAILER = struct.Struct(">4sQI")
_TRAILER_MAGIC = b"END!"
# Bits worth keeping across a restart; the LRU's "active" mark is not.
_KEPT_BITS = BINARY_KEY | FETCHED | STALE | TOKEN_SENT


class StateFileError(Exception):
    """The state file cannot be used; the message names the file and the problem."""


def save_state(path: str, items: list[tuple[bytes, Item]], last_cas: int) -> None:
    """Write ``items`` (coldest first) atomically to ``path``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    crc = 0
    try:
        with tmp.open("wb") as f:
            header = _HEADER.pack(MAGIC, VERSION, last_cas)
            f.write(header)
            crc = zlib.crc32(header, crc)
            for key, item in items:
                record = _ITEM.pack(
                    len(key), len(item.value), item.flags, item.exptime, item.cas, item.bits & _KEPT_BITS
                )
                for part in (record, key, item.value):
                    f.write(part)
                    crc = zlib.crc32(part, crc)
            f.write(_TRAILER.pack(_TRAILER_MAGIC, len(items), crc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state(path: str, storage: Storage, now: int) -> int | None:
    """Load ``path`` into ``storage``; the number of live items loaded, None if there is no file.

    Raises StateFileError, before changing the storage, when the file is unreadable or damaged.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"cannot read state file {path}: {exc.strerror or exc}") from None
    last_cas, records = parse_state(data, path)
    loaded = 0
    for key, item in records:
        if item.exptime and item.exptime <= now:
            continue
        item.time = now
        if storage.restore(key, item, now):
            loaded += 1
    storage.last_cas = max(storage.last_cas, last_cas)
    return loaded


def parse_state(data: bytes, path: str = "state file") -> tuple[int, list[tuple[bytes, Item]]]:
    if len(data) < _HEADER.size + _TRAILER.size:
        raise StateFileError(f"{path} is truncated ({len(data)} bytes)")
    magic, version, last_cas = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise StateFileError(f"{path} is not a sesh store state file")
    if version != VERSION:
        raise StateFileError(f"{path} has format version {version}; this sesh reads version {VERSION}")
    body_end = len(data) - _TRAILER.size
    trailer, count, crc = _TRAILER.unpack_from(data, body_end)
    if trailer != _TRAILER_MAGIC:
        raise StateFileError(f"{path} is truncated (no end marker)")
    if zlib.crc32(data[:body_end]) != crc:
        raise StateFileError(f"{path} is corrupt (checksum mismatch)")
    records: list[tuple[bytes, Item]] = []
    offset = _HEADER.size
    while offset < body_end:
        if offset + _ITEM.size > body_end:
            raise StateFileError(f"{path} is corrupt (item {len(records) + 1} is cut short)")
        key_len, value_len, flags, exptime, cas, bits = _ITEM.unpack_from(data, offset)
        offset += _ITEM.size
        end = offset + key_len + value_len
        if end > body_end or key_len == 0:
            raise StateFileError(f"{path} is corrupt (item {len(records) + 1} is cut short)")
        key = data[offset : offset + key_len]
        value = data[offset + key_len : end]
        offset = end
        records.append((key, Item(value, flags, exptime, cas, 0, bits & _KEPT_BITS)))
    if len(records) != count:
        raise StateFileError(f"{path} is corrupt (holds {len(records)} items, trailer says {count})")
    return last_cas, records
