"""The membership's UDP multicast socket (Tomcat's McastService): join a group on one interface, send
and receive heartbeat datagrams.

The interface is always pinned (``IP_MULTICAST_IF`` and the group join both name it): letting the kernel
pick one would send heartbeats out of whatever interface the default route uses, which is both a leak
and, on a host without one, a silent failure. With the default interface 127.0.0.1, TTL 0 and loopback
delivery on, heartbeats never leave the host.
"""

from __future__ import annotations

import contextlib
import socket

import trio

# The largest UDP payload; a heartbeat is a few hundred bytes, so anything near this is not ours.
MAX_DATAGRAM = 65535


async def open_multicast(group: str, port: int, interface: str, ttl: int) -> trio.socket.SocketType:
    """A UDP socket bound to ``group:port`` that has joined ``group`` on ``interface``."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # several nodes on one host share the group port
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Bound to the group address, the socket receives only this group's datagrams on the port.
        await sock.bind((group, port))
        membership = socket.inet_aton(group) + socket.inet_aton(interface)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    except OSError:
        sock.close()
        raise
    return sock


async def send_datagram(sock: trio.socket.SocketType, data: bytes, group: str, port: int) -> bool:
    """Send one datagram; False if the kernel refused it (a heartbeat lost is the next one's job)."""
    try:
        await sock.sendto(data, (group, port))
        return True
    except OSError:
        return False


async def receive_datagram(sock: trio.socket.SocketType) -> tuple[bytes, tuple[str, int]]:
    data, address = await sock.recvfrom(MAX_DATAGRAM)
    return data, (str(address[0]), int(address[1]))
