"""memcached's number and key-token parsing, reproduced exactly (sans-IO helpers for the codec).

memcached parses every number with C's ``strtol``/``strtoul``/``strtoull`` wrapped in ``safe_strto*``
(util.c): leading whitespace and a sign are accepted, the number must end at the token's end or at a
whitespace character, ``long`` is 64-bit and the result is then *truncated* to 32 bits for flags,
exptimes and lengths. A negative number is refused by the unsigned parsers only when it wraps past
2**63 (so ``-0`` is 0). Clients never send such tokens on purpose, but answering exactly as memcached
does is what makes the differential tests meaningful.
"""

from __future__ import annotations

import base64

# C's isspace(): the characters strtol skips before a number and accepts right after it.
_C_SPACE = b" \t\n\v\f\r"
_U64 = 1 << 64
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


def _c_integer(token: bytes) -> int | None:
    """The integer strtol would read from ``token``, or None when no digits lead or junk follows."""
    if token.isdigit():
        return int(token)
    text = token.lstrip(_C_SPACE)
    start = 0
    if text[:1] in (b"+", b"-"):
        start = 1
    end = start
    size = len(text)
    while end < size and 48 <= text[end] <= 57:
        end += 1
    if end == start:
        return None
    if end < size and text[end] not in _C_SPACE:
        return None
    number = int(text[start:end])
    return -number if text[:1] == b"-" else number


def strtol32(token: bytes) -> int | None:
    """safe_strtol: a 64-bit long (ERANGE outside it), then truncated to int32 as memcached stores it."""
    if len(token) < 10 and token.isdigit():
        return int(token)  # the usual token: plain digits, below 2**31
    number = _c_integer(token)
    if number is None or not _I64_MIN <= number <= _I64_MAX:
        return None
    return ((number + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def strtoull(token: bytes) -> int | None:
    """safe_strtoull: unsigned 64-bit; a '-' that wraps the value negative is refused."""
    number = _c_integer(token)
    if number is None or abs(number) >= _U64:
        return None
    value = number % _U64
    if value > _I64_MAX and b"-" in token:
        return None
    return value


def strtoul32(token: bytes) -> int | None:
    """safe_strtoul into a uint32: parsed as 64-bit unsigned, then truncated (client flags, levels)."""
    if len(token) < 10 and token.isdigit():
        return int(token)
    value = strtoull(token)
    return None if value is None else value & 0xFFFFFFFF


# base64 as memcached's base64.c decodes it: characters outside the alphabet are skipped, the count
# of alphabet characters must be a multiple of four, '=' pads.
_B64_VALUES = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_B64_VALUES[ord("=")] = 0


def b64decode_key(data: bytes) -> bytes | None:
    """Decode a base64 key leniently, as memcached does; None (memcached's 0) on failure or empty."""
    symbols = [(c, _B64_VALUES[c]) for c in data if c in _B64_VALUES]
    if not symbols or len(symbols) % 4:
        return None
    out = bytearray()
    pad = 0
    for index in range(0, len(symbols), 4):
        block = symbols[index : index + 4]
        pad = sum(1 for c, _ in block if c == 61)
        a, b, c, d = (v for _, v in block)
        out += bytes((((a << 2) | (b >> 4)) & 0xFF, ((b << 4) | (c >> 2)) & 0xFF, ((c << 6) | d) & 0xFF))
        if pad:
            if pad > 2:
                return None
            del out[-pad:]
            break
    return bytes(out) or None


def b64encode_key(key: bytes) -> bytes:
    return base64.b64encode(key)
