"""Blocking wire helpers shared by the store's interop tests (no tests here): send raw protocol bytes,
read the answer."""

from __future__ import annotations

import re
import socket
import time

# `mn` is answered `MN` once everything before it was processed: a deterministic end of any answer.
_SENTINEL = b"mn\r\n"
_SENTINEL_REPLY = b"MN\r\n"
READ_TIMEOUT = 3.0


class Wire:
    """One client connection that sends raw bytes and returns the complete answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ask(self, payload: bytes) -> bytes:
        """Send ``payload`` then ``mn``; the answer to ``payload`` (b"<closed>" appended on EOF)."""
        self.sock.sendall(payload + _SENTINEL)
        data = b""
        deadline = time.monotonic() + READ_TIMEOUT
        while not data.endswith(_SENTINEL_REPLY):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer to {payload[:80]!r}; got {data[:200]!r}")
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return data + b"<closed>"
            data += chunk
        return data[: -len(_SENTINEL_REPLY)]

    def ask_until(self, payload: bytes, marker: bytes) -> bytes:
        """Send ``payload`` and read until ``marker`` and the line it starts have arrived."""
        self.sock.sendall(payload)
        data = b""
        while marker not in data or not data.endswith(b"\r\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def send_raw(self, payload: bytes) -> None:
        self.sock.sendall(payload)

    def read_until_closed(self, timeout: float = READ_TIMEOUT) -> bytes:
        self.sock.settimeout(timeout)
        data = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()


def stats_of(wire: Wire, sub: bytes = b"") -> list[tuple[str, str]]:
    answer = wire.ask(b"stats" + (b" " + sub if sub else b"") + b"\r\n").decode()
    lines = answer.split("\r\n")
    assert lines[-2:] == ["END", ""], answer
    pairs = []
    for line in lines[:-2]:
        _, name, value = line.split(" ", 2)
        pairs.append((name, value))
    return pairs


_TIMING = re.compile(rb"la=\d+")


def normalise(answer: bytes) -> bytes:
    """Blank what legitimately differs between two servers: seconds since last access."""
    return _TIMING.sub(b"la=?", answer)


def stall_sets(port: int, count: int, value_size: int, sent_of_each: int) -> None:
    """The unfinished-sets attacker, run as its own process (``python -m tests.store_helpers stall ...``)
    so its sending does not slow the test's own measurements: ``count`` connections each send most of
    a ``value_size`` set and stall. Prints ``sent``, waits for a line on stdin, prints what the
    connections were answered (``answers refused=N silent=M other=K``), closes them, prints ``closed``."""
    import sys

    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    # Round-robin in 64 KiB pieces, as many clients sending at once would: the store receives every
    # value a piece at a time, interleaved with all the others.
    payloads = [
        b"set stalled%d 0 0 %d\r\n" % (index, value_size) + b"s" * sent_of_each for index in range(count)
    ]
    piece = 64 * 1024
    for start in range(0, max(len(p) for p in payloads), piece):
        for sock, payload in zip(socks, payloads, strict=True):
            if start < len(payload):
                sock.sendall(payload[start : start + piece])
    print("sent", flush=True)
    sys.stdin.readline()
    refused = silent = other = 0
    for sock in socks:
        sock.settimeout(0.01)
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            answer = b""
        if answer == b"SERVER_ERROR out of memory storing object\r\n":
            refused += 1
        elif answer == b"":
            silent += 1
        else:
            other += 1
    print(f"answers refused={refused} silent={silent} other={other}", flush=True)
    for sock in socks:
        sock.close()
    print("closed", flush=True)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["stall"]:
        stall_sets(*(int(arg) for arg in sys.argv[2:6]))
