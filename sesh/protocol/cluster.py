"""The cluster wire format: length-framed, optionally authenticated messages (sans-IO).

Theory of operation. Every message between cluster nodes, over TCP or as a multicast heartbeat, is one
*frame*::

    magic "SC" | version (1) | flags (1) | kind (1) | seq (8) | ref (8) | length (4) | payload | mac

(big-endian). ``ref`` correlates a reply with its request (0: no reply wanted), so the transport can
route replies without looking into payloads.

``payload`` is opaque bytes: the node encodes it with ``sesh.core.serializer`` (the only cbor2 user), so
this module never looks inside. ``mac`` is present (flag bit 0) when the cluster has a secret: 32 bytes
of HMAC-SHA256 over a *context* followed by header and payload, so no byte of a frame can be changed,
and a frame cannot be moved to another context.

**Streams** (TCP). Each side's first frame is a HELLO whose payload is a fresh random nonce. Every later
frame one side sends is authenticated under the *peer's* nonce and carries the next sequence number
(1, 2, 3...): a frame recorded from another connection fails the MAC, and a frame replayed, dropped or
reordered inside one connection fails the sequence check. Without a secret the sequence is still
checked (it catches framing bugs for free) but anyone who can reach the port can talk to the node.

**Datagrams** (heartbeats). There is no connection, so the MAC's context is a fixed label; replay
protection (sequence per sender and a timestamp window) is the membership's job, fed the ``seq``
decoded here.

Errors are the peer's fault and raise :class:`ClusterProtocolError` with a short ``reason`` the node
counts under (``bad-mac``, ``replay``, ``oversized``...); the transport then closes the connection.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"SC"
VERSION: Final = 1
FLAG_MAC: Final = 0x01
_HEADER = struct.Struct(">2sBBBQQI")
HEADER_SIZE: Final = _HEADER.size
MAC_SIZE: Final = 32
NONCE_SIZE: Final = 16
# The largest payload a peer may send: a state-transfer chunk is cut well below this (see the node),
# and a delta is bounded by the node's --max-body; anything bigger is a broken or hostile peer, and
# this is what bounds the receive buffer of every cluster connection.
MAX_PAYLOAD: Final = 8 * 1024 * 1024
_DATAGRAM_CONTEXT: Final = b"sesh-cluster-datagram"

# Frame kinds. The transport needs to know only HELLO and the two reply kinds; the node gives the rest
# their meaning (sesh/node/cluster/messages.py).
KIND_HELLO: Final = 0
KIND_HEARTBEAT: Final = 1
KIND_FORWARD: Final = 2
KIND_PROPOSE: Final = 3
KIND_ACCESSED: Final = 4
KIND_TRANSFER: Final = 5
KIND_REPLY: Final = 6  # the (last) reply to request ``ref``
KIND_REPLY_PART: Final = 7  # one of several replies to request ``ref``; a KIND_REPLY ends them


class ClusterProtocolError(Exception):
    """A peer sent something that is not a valid frame; ``reason`` is the counter it goes under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Hello:
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    seq: int
    payload: bytes
    ref: int = 0


class NeedData:
    """More bytes are needed before the next event."""


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer ended the stream cleanly, between frames."""


CLOSED: Final = Closed()


def _mac(secret: bytes, context: bytes, header: bytes, payload: bytes) -> bytes:
    mac = hmac.new(secret, context, hashlib.sha256)
    mac.update(header)
    mac.update(payload)
    return mac.digest()


def _encode(kind: int, seq: int, payload: bytes, secret: bytes | None, context: bytes, ref: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"cluster frame payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit")
    header = _HEADER.pack(MAGIC, VERSION, FLAG_MAC if secret else 0, kind, seq, ref, len(payload))
    if secret:
        return header + payload + _mac(secret, context, header, payload)
    return header + payload


def _parse_header(data: bytes | bytearray, max_payload: int) -> tuple[int, int, int, int, int]:
    """(flags, kind, seq, ref, length) of the header at the start of ``data`` (>= HEADER_SIZE bytes)."""
    magic, version, flags, kind, seq, ref, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ClusterProtocolError("bad-magic", f"frame starts with {bytes(magic)!r}")
    if version != VERSION:
        raise ClusterProtocolError("bad-version", f"frame version {version}, this sesh speaks {VERSION}")
    if flags & ~FLAG_MAC:
        raise ClusterProtocolError("bad-flags", f"unknown flags {flags:#x}")
    if length > max_payload:
        raise ClusterProtocolError("oversized", f"{length}-byte payload, limit {max_payload}")
    return flags, kind, seq, ref, length


def _check_mac(
    secret: bytes | None, flags: int, context: bytes, header: bytes, payload: bytes, mac: bytes
) -> None:
    if secret is None:
        if flags & FLAG_MAC:
            raise ClusterProtocolError("unexpected-mac", "peer authenticates frames but this node has no secret")
        return
    if not flags & FLAG_MAC:
        raise ClusterProtocolError("missing-mac", "peer sends unauthenticated frames")
    if not hmac.compare_digest(mac, _mac(secret, context, header, payload)):
        raise ClusterProtocolError("bad-mac", "frame authentication failed (wrong --cluster-secret?)")


class StreamCodec:
    """One TCP connection's framing: feed received bytes, take events; encode frames to send.

    Call :meth:`hello` once and send it first; frames other than HELLO can be encoded only after the
    peer's HELLO arrived (its nonce keys our MACs).
    """

    def __init__(self, secret: bytes | None, nonce: bytes, *, max_payload: int = MAX_PAYLOAD) -> None:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        self.secret = secret or None
        self.nonce = nonce
        self.peer_nonce: bytes | None = None
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._eof = False
        self._sent = 0
        self._received = 0

    # --- sending ------------------------------------------------------------------------------------

    def hello(self) -> bytes:
        return _encode(KIND_HELLO, 0, self.nonce, self.secret, b"hello")

    def encode(self, kind: int, payload: bytes, ref: int = 0) -> bytes:
        if kind == KIND_HELLO:
            raise ValueError("HELLO is sent once, through hello()")
        if self.peer_nonce is None:
            raise RuntimeError("the peer's HELLO has not arrived yet")
        self._sent += 1
        return _encode(kind, self._sent, payload, self.secret, self.peer_nonce, ref)

    @property
    def ready(self) -> bool:
        return self.peer_nonce is not None

    # --- receiving ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means the peer closed its side.

        The buffer is bounded by the caller's loop: it reads again only after :meth:`next_event` said
        NEED_DATA, so it holds at most one partial frame (<= MAX_PAYLOAD + header + MAC) plus one read.
        """
        if not data:
            self._eof = True
            return
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_event(self) -> Hello | Frame | NeedData | Closed:
        buf = self._buffer
        if len(buf) < HEADER_SIZE:
            if self._eof:
                if buf:
                    raise ClusterProtocolError("truncated", f"stream ended inside a frame header ({len(buf)} bytes)")
                return CLOSED
            seen = min(len(buf), len(MAGIC))
            if buf[:seen] != MAGIC[:seen]:  # fail garbage at its first byte, not after 25 of them
                raise ClusterProtocolError("bad-magic", f"frame starts with {bytes(buf[:2])!r}")
            return NEED_DATA
        flags, kind, seq, ref, length = _parse_header(buf, self.max_payload)
        total = HEADER_SIZE + length + (MAC_SIZE if flags & FLAG_MAC else 0)
        if len(buf) < total:
            if self._eof:
                raise ClusterProtocolError("truncated", f"stream ended inside a {total}-byte frame")
            return NEED_DATA
        header = bytes(buf[:HEADER_SIZE])
        payload = bytes(buf[HEADER_SIZE : HEADER_SIZE + length])
        mac = bytes(buf[HEADER_SIZE + length : total])
        del buf[:total]
        if kind == KIND_HELLO:
            if self.peer_nonce is not None:
                raise ClusterProtocolError("duplicate-hello")
            if len(payload) != NONCE_SIZE or seq != 0:
                raise ClusterProtocolError("bad-hello", f"{len(payload)}-byte nonce")
            _check_mac(self.secret, flags, b"hello", header, payload, mac)
            self.peer_nonce = payload
            return Hello(payload)
        if self.peer_nonce is None:
            raise ClusterProtocolError("no-hello", f"frame of kind {kind} before HELLO")
        # Our nonce is the context: only frames made for this very connection verify.
        _check_mac(self.secret, flags, self.nonce, header, payload, mac)
        if seq != self._received + 1:
            raise ClusterProtocolError("replay", f"sequence {seq} after {self._received}")
        self._received = seq
        return Frame(kind, seq, payload, ref)


def encode_datagram(kind: int, seq: int, payload: bytes, secret: bytes | None) -> bytes:
    """One heartbeat datagram."""
    return _encode(kind, seq, payload, secret or None, _DATAGRAM_CONTEXT)


def decode_datagram(data: bytes, secret: bytes | None, *, max_payload: int = 64 * 1024) -> Frame:
    """The frame in one whole datagram; :class:`ClusterProtocolError` if it is not exactly one valid frame.

    Heartbeats are small; 64 KiB (the largest UDP payload) is the natural bound.
    """
    secret = secret or None
    if len(data) < HEADER_SIZE:
        raise ClusterProtocolError("truncated", f"{len(data)}-byte datagram")
    flags, kind, seq, _ref, length = _parse_header(data, max_payload)
    total = HEADER_SIZE + length + (MAC_SIZE if flags & FLAG_MAC else 0)
    if len(data) != total:
        reason = "truncated" if len(data) < total else "trailing-data"
        raise ClusterProtocolError(reason, f"{len(data)}-byte datagram, frame is {total}")
    header, payload, mac = data[:HEADER_SIZE], data[HEADER_SIZE : HEADER_SIZE + length], data[HEADER_SIZE + length :]
    _check_mac(secret, flags, _DATAGRAM_CONTEXT, header, payload, mac)
    return Frame(kind, seq, payload)
