"""memcached's slab classes, computed as slabs_init() does with the default settings (48-byte minimum
chunk, growth factor 1.25, 512 KiB largest chunk), so ``me`` (cls=) and ``stats items``/``stats slabs``
group items the way memcached would. sesh does not allocate in slabs; this is only for reporting."""

from __future__ import annotations

import bisect

ITEM_STRUCT_SIZE = 48
CHUNK_SIZE = 48
GROWTH_FACTOR = 1.25
SLAB_PAGE_SIZE = 1024 * 1024
SLAB_CHUNK_MAX = SLAB_PAGE_SIZE // 2
CHUNK_ALIGN = 8
MAX_CLASSES = 64


def _chunk_sizes() -> list[int]:
    sizes: list[int] = []
    size = ITEM_STRUCT_SIZE + CHUNK_SIZE
    while len(sizes) < MAX_CLASSES - 2 and size < SLAB_CHUNK_MAX / GROWTH_FACTOR:
        if size % CHUNK_ALIGN:
            size += CHUNK_ALIGN - size % CHUNK_ALIGN
        sizes.append(size)
        size = int(size * GROWTH_FACTOR)
    sizes.append(SLAB_CHUNK_MAX)
    return sizes


CHUNK_SIZES = _chunk_sizes()


def slab_class(total_size: int) -> int:
    """The 1-based slab class of an item of ``total_size`` bytes (items above the largest chunk are
    chunked by memcached and reported in the largest class)."""
    index = bisect.bisect_left(CHUNK_SIZES, total_size)
    return min(index, len(CHUNK_SIZES) - 1) + 1


def chunk_size(cls: int) -> int:
    return CHUNK_SIZES[cls - 1]


def chunks_per_page(cls: int) -> int:
    return SLAB_PAGE_SIZE // CHUNK_SIZES[cls - 1]
