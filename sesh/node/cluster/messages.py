"""The payloads of cluster frames: small maps encoded by the serializer (the frame itself is opaque).

Sessions and deltas travel as the serializer's own envelopes (``encode_session`` / ``encode_delta``
blobs) inside these maps, so the cluster never has a second encoding of either.
"""

from __future__ import annotations

from typing import Any

from sesh.core.serializer import SerializationError, decode_value, encode_value

# Reply statuses.
OK = "ok"
NEED = "need"  # a replica lacks the base version of a forwarded delta: send it the whole session
CONFLICT = "conflict"  # the coordinator's copy is at another version than the proposal's base
MISSING = "missing"  # the coordinator does not hold the session at all
NOT_COORDINATOR = "not-coordinator"

# A state-transfer chunk stops growing past this many bytes (or sessions): well under the frame
# limit, and small enough that the joining node installs one chunk quickly.
CHUNK_BYTES = 1024 * 1024
CHUNK_SESSIONS = 1000


def encode(message: dict[str, Any]) -> bytes:
    return encode_value(message)


# The reply nearly every forward gets, encoded once: replicas send these bytes and the coordinator
# recognises them without decoding (the hot path of every acknowledged write).
OK_REPLY = encode({"status": OK})


def decode(payload: bytes) -> dict[str, Any]:
    """The map in a frame's payload; :class:`SerializationError` if it is anything else."""
    value = decode_value(payload)
    if not isinstance(value, dict):
        raise SerializationError(f"cluster message is a {type(value).__name__}, not a map")
    return value


def field(message: dict[str, Any], key: str, kind: type) -> Any:
    value = message.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise SerializationError(f"cluster message field {key!r} is missing or not a {kind.__name__}")
    return value
