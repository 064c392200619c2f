"""End to end: real ``python sesh.py node --mode cluster`` processes on loopback (multicast on 127.0.0.1,
TTL 0, a random group port per test), killed with SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import trio

from sesh.core.serializer import encode_value
from sesh.protocol.cluster import (
    KIND_ACCESSED,
    KIND_HEARTBEAT,
    NEED_DATA,
    NONCE_SIZE,
    Hello,
    StreamCodec,
    encode_datagram,
)
from tests.cluster_helpers import cluster_args, hit, mcast_port, member_states, status, try_hit, wait_for
from tests.http_client import HTTPTestClient
from tests.procs import SeshProcess, free_port

Start = Callable[..., SeshProcess]


async def test_three_nodes_replicate_and_alternating_requests_count_exactly(sesh: Start) -> None:
    group = mcast_port()
    nodes = [sesh(*cluster_args(f"n{i}", group)) for i in (1, 2, 3)]
    assert "trusts its network" in "\n".join(nodes[0].stderr_lines)  # no secret: said loudly
    first = await hit(nodes[0].port)
    sid = first.session_id
    assert first.hits == 1 and first.set_cookie == sid
    for i in range(1, 10):
        reply = await hit(nodes[i % 3].port, sid)
        assert reply.status == 200
        assert reply.session_id == sid and reply.hits == i + 1, (i, reply.body)
        assert reply.set_cookie is None  # no route: the id stays as it is
    # A session written on any node is on every node.
    other = await hit(nodes[2].port)
    assert (await hit(nodes[1].port, other.session_id)).hits == 2
    assert (await hit(nodes[0].port, other.session_id)).hits == 3
    backend = await status(nodes[1].port)
    assert member_states(backend) == {"n1": "alive", "n3": "alive"}
    assert backend["coordinator"] == "n1" and backend["sessions"]["active"] == 2
    assert backend["send_options"] == "ack"
    seen = await status(nodes[0].port)
    lags = [p for p in seen["peers"] if p["lag_samples"]]
    assert lags and all(p["lag_p99_ms"] is not None for p in lags)
    # Membership (state, heartbeat age), queue depths and message counts are there for sesh top.
    assert member_states(seen) == {"n2": "alive", "n3": "alive"}
    assert all(0 <= m["heartbeat_age"] < 5 for m in seen["members"])
    assert {p["name"] for p in seen["peers"]} == {"n2", "n3"}
    assert all(p["connected"] and p["queue"] >= 0 and p["dropped"] == 0 for p in seen["peers"])
    assert seen["messages_sent"] > 0 and seen["messages_received"] > 0 and seen["messages_dropped"] == 0
    assert seen["conflicts"] == seen["counters"]["conflicts"] == 0 and seen["rejected"] == {}


async def test_sigkill_loses_no_acknowledged_update_and_members_are_dropped(sesh: Start) -> None:
    group = mcast_port()
    n1, n2, n3 = (sesh(*cluster_args(f"n{i}", group)) for i in (1, 2, 3))
    ports = {"n1": n1.port, "n2": n2.port, "n3": n3.port}
    browsers: dict[str, int] = {}  # session id -> hits of its last 200 answer
    for i in range(6):
        reply = await hit(list(ports.values())[i % 3])
        browsers[reply.session_id] = reply.hits
    problems: list[str] = []

    async def reload(sid: str, order: list[str]) -> None:
        for attempt in range(6):
            name = order[attempt % len(order)]
            reply = await try_hit(ports[name], sid)
            if reply is None or reply.status != 200:
                await trio.sleep(0.05)
                continue
            if reply.hits <= browsers[sid]:
                problems.append(f"{sid}: {reply.hits} after acknowledged {browsers[sid]} (on {name})")
            browsers[sid] = reply.hits
            return
        problems.append(f"{sid}: no answer")

    for rnd in range(8):
        if rnd == 3:
            n1.kill()  # the coordinator, with no warning
            del ports["n1"]
        async with trio.open_nursery() as nursery:
            for j, sid in enumerate(browsers):
                names = sorted(ports)
                nursery.start_soon(reload, sid, names[(rnd + j) % len(names):] + names[: (rnd + j) % len(names)])
    assert problems == []
    # The writes found n1 dead (connection refused): it is gone without waiting for drop-time.
    assert member_states(await status(n2.port))["n1"] == "gone"
    assert (await status(n2.port))["coordinator"] == "n2"

    # A member that dies silently is dropped after drop-time and the TCP check.
    n3.kill()

    async def n3_gone() -> bool:
        return member_states(await status(n2.port)).get("n3") == "gone"

    await wait_for(n3_gone, 15, "n3 dropped")
    for sid, hits in browsers.items():
        assert (await hit(n2.port, sid)).hits == hits + 1


async def test_joining_node_has_every_session_before_it_serves_even_under_writes(sesh: Start) -> None:
    group = mcast_port()
    n1 = sesh(*cluster_args("n1", group))
    acked: dict[str, int] = {}
    for _ in range(150):
        reply = await hit(n1.port)
        acked[reply.session_id] = reply.hits
    ids = list(acked)
    stop = trio.Event()
    writes = 0

    async def writer(seed: int) -> None:
        nonlocal writes
        rng = random.Random(seed)
        while not stop.is_set() and writes < 3000:  # bounded in count as well as by the join
            sid = rng.choice(ids)
            reply = await try_hit(n1.port, sid)
            if reply is not None and reply.status == 200:
                acked[sid] = max(acked[sid], reply.hits)
                writes += 1

    async with trio.open_nursery() as nursery:
        for seed in range(3):
            nursery.start_soon(writer, seed)
        await trio.sleep(0.2)
        before = writes
        n2 = await trio.to_thread.run_sync(lambda: sesh(*cluster_args("n2", group)))
        # Every update acknowledged up to now is on n2 from its first request on.
        snapshot = dict(acked)
        during = writes - before
        stop.set()
    missing = []
    for sid, hits in snapshot.items():
        reply = await hit(n2.port, sid)
        if reply.status != 200 or reply.hits <= hits:
            missing.append((sid, hits, reply.body))
    assert missing == []
    assert during > 0  # the transfer really ran under writes
    backend = await status(n2.port)
    assert backend["counters"]["state_transfers"] == 1
    assert backend["sessions"]["active"] == len(ids)


async def test_route_binding_rewrites_the_cookie_and_replicates_it(sesh: Start) -> None:
    group = mcast_port()
    a = sesh(*cluster_args("na", group, "--route", "a"))
    b = sesh(*cluster_args("nb", group, "--route", "b"))
    first = await hit(a.port)
    assert first.session_id.endswith(".a")
    base = first.session_id.split(".")[0]
    moved = await hit(b.port, first.session_id)  # the balancer failed the client over to b
    assert moved.status == 200 and moved.hits == 2
    assert moved.set_cookie == f"{base}.b" and moved.session_id == f"{base}.b"
    back = await hit(a.port, moved.set_cookie)
    assert back.hits == 3 and back.set_cookie == f"{base}.a"
    assert (await status(b.port))["counters"]["route_rebinds"] == 1


def _raw_connect(port: int, secret: bytes) -> tuple[socket.socket, StreamCodec]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    codec = StreamCodec(secret, os.urandom(NONCE_SIZE))
    sock.sendall(codec.hello())
    while True:
        event = codec.next_event()
        if isinstance(event, Hello):
            return sock, codec
        assert event is NEED_DATA
        codec.receive_data(sock.recv(65536))


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
        return True
    except OSError:
        return True


async def test_wrong_secret_garbage_and_replayed_frames_are_rejected(sesh: Start, tmp_path: Path) -> None:
    group = mcast_port()
    secret_file = str(tmp_path / "secret")
    (tmp_path / "secret").write_text("right-secret\n")
    n1 = sesh(*cluster_args("n1", group, "--cluster-secret-file", secret_file))
    n2 = sesh(*cluster_args("n2", group, "--cluster-secret", "right-secret"))
    intruder = sesh(*cluster_args("evil", group, "--cluster-secret", "wrong-secret"))
    sid = (await hit(n1.port)).session_id
    assert (await hit(n2.port, sid)).hits == 2
    assert (await hit(intruder.port, sid)).set_cookie not in (None, sid)  # it never got the session
    backend = await status(n1.port)
    assert set(member_states(backend)) == {"n2"}
    assert backend["rejected"].get("heartbeat-bad-mac", 0) > 0
    receiver = int(backend["receiver"].rsplit(":", 1)[1])

    def attack() -> None:
        sock, codec = _raw_connect(receiver, b"right-secret")
        frame = codec.encode(KIND_ACCESSED, encode_value({"id": sid, "at": 1.0}))
        sock.sendall(frame)
        sock.sendall(frame)  # replayed on the same connection
        assert _closed_by_peer(sock)
        sock.close()
        for junk in [b"GET / HTTP/1.1\r\n\r\n", b"SC\x01\x00\x00" + b"\xff" * 40]:
            with socket.create_connection(("127.0.0.1", receiver), timeout=5) as raw:
                raw.sendall(junk)
                assert _closed_by_peer(raw)
        with socket.create_connection(("127.0.0.1", receiver), timeout=5) as raw:
            raw.sendall(StreamCodec(b"wrong-secret", os.urandom(NONCE_SIZE)).hello())
            assert _closed_by_peer(raw)

    n2_member = next(m for m in backend["members"] if m["name"] == "n2")
    host, port = n2_member["address"].rsplit(":", 1)

    def heartbeat_attack() -> None:
        """An old heartbeat of n2 (sequence 1, correctly signed: as if recorded) and garbage datagrams."""
        forged = {"uid": n2_member["uid"], "name": "n2", "route": "", "host": host, "port": int(port),
                  "domain": "", "start": 1.0, "ts": time.time(), "seq": 1}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            for datagram in [encode_datagram(KIND_HEARTBEAT, 1, encode_value(forged), b"right-secret"),
                             b"garbage", b"SC" + bytes(40)]:
                udp.sendto(datagram, ("228.0.0.4", group))

    await trio.to_thread.run_sync(attack)
    await trio.to_thread.run_sync(heartbeat_attack)
    await trio.sleep(0.3)
    rejected = (await status(n1.port))["rejected"]
    assert rejected.get("frame-replay") == 1, rejected
    assert rejected.get("frame-bad-magic", 0) >= 1 and rejected.get("frame-bad-mac", 0) >= 1, rejected
    assert rejected.get("replayed-heartbeat") == 1, rejected
    assert rejected.get("heartbeat-truncated") == 1 and rejected.get("heartbeat-bad-version") == 1, rejected
    assert member_states(await status(n1.port)) == {"n2": "alive"}
    # Still serving and replicating.
    assert (await hit(n2.port, sid)).hits == 3


async def test_concurrent_requests_on_one_session_across_two_nodes_lose_nothing(sesh: Start) -> None:
    group = mcast_port()
    n1 = sesh(*cluster_args("n1", group))
    n2 = sesh(*cluster_args("n2", group))
    sid = (await hit(n1.port)).session_id
    answered: list[int] = []
    errors = 0

    async def client(port: int) -> None:
        nonlocal errors
        for _ in range(8):
            reply = await try_hit(port, sid)
            if reply is not None and reply.status == 200:
                answered.append(reply.hits)
            else:
                errors += 1

    async with trio.open_nursery() as nursery:
        for i in range(12):
            nursery.start_soon(client, (n1.port, n2.port)[i % 2])
    assert len(answered) == len(set(answered)), sorted(answered)  # no update acknowledged twice
    final = (await hit(n1.port, sid)).hits
    assert final == (await hit(n2.port, sid)).hits - 1
    assert final > max(answered) and final - 1 >= len(answered)  # every acknowledged update is in it
    assert len(answered) >= 12  # most requests succeed; the rest were refused, not lost
    conflicts = [(await status(n.port))["conflicts"] for n in (n1, n2)]
    assert sum(conflicts) >= errors  # every refused request is counted as a conflict where it ran


async def test_static_membership_replicates_and_drops_a_killed_member(sesh: Start) -> None:
    p1, p2 = free_port(), free_port()
    common = ["--membership", "static"]

    def args(name: str, own: int, peer: int) -> list[str]:
        a = cluster_args(name, 1, *common, "--member", f"127.0.0.1:{peer}")
        a[a.index("--receiver-port") + 1] = str(own)
        return a

    n1 = sesh(*args("s1", p1, p2))
    n2 = sesh(*args("s2", p2, p1))
    sid = (await hit(n1.port)).session_id
    assert (await hit(n2.port, sid)).hits == 2
    assert (await hit(n1.port, sid)).hits == 3
    assert member_states(await status(n1.port)) == {"s2": "alive"}
    n2.kill()

    async def s2_gone() -> bool:
        return member_states(await status(n1.port)).get("s2") == "gone"

    await wait_for(s2_gone, 15, "s2 dropped")
    assert (await hit(n1.port, sid)).hits == 4
    # It comes back (a new process at the same receiver): it rejoins and has the session before it serves.
    n2 = sesh(*args("s2", p2, p1))
    assert (await hit(n2.port, sid)).hits == 5
    assert member_states(await status(n1.port)) == {"s2": "alive"}
    assert (await hit(n1.port, sid)).hits == 6


async def test_two_domains_share_a_group_without_mixing(sesh: Start) -> None:
    group = mcast_port()
    x = sesh(*cluster_args("x1", group, "--domain", "shop"))
    y = sesh(*cluster_args("y1", group, "--domain", "blog"))
    sid = (await hit(x.port)).session_id
    assert (await hit(y.port, sid)).session_id != sid
    backend = await status(x.port)
    assert backend["members"] == [] and backend["rejected"].get("other-domain", 0) > 0


async def test_replication_filter_and_expire_sessions_on_shutdown(sesh: Start) -> None:
    group = mcast_port()
    n1 = sesh(*cluster_args("n1", group, "--replication-filter", "^/static/", "--expire-sessions-on-shutdown"))
    n2 = sesh(*cluster_args("n2", group))
    sid = (await hit(n2.port)).session_id
    client = await HTTPTestClient.connect(n1.port)
    try:
        reply = await client.request("GET", "/static/app.css", [("Cookie", f"JSESSIONID={sid}")])
    finally:
        await client.aclose()
    assert reply.status == 200
    # The filtered request was assumed not to change the session: its hit was not kept anywhere.
    assert (await hit(n1.port, sid)).hits == 2
    assert (await hit(n2.port, sid)).hits == 3
    assert (await status(n1.port))["counters"]["filtered"] == 1
    # A graceful stop with --expire-sessions-on-shutdown ends its sessions on every member.
    assert await trio.to_thread.run_sync(n1.terminate) == 0
    fresh = await hit(n2.port, sid)
    assert fresh.set_cookie is not None and fresh.session_id != sid and fresh.hits == 1, n1.output()


async def test_expiry_on_the_coordinator_replicates(sesh: Start) -> None:
    group = mcast_port()
    n1 = sesh(*cluster_args("n1", group, "--max-inactive", "1", "--expire-interval", "0.2"))
    n2 = sesh(*cluster_args("n2", group, "--max-inactive", "1", "--expire-interval", "3600"))  # never sweeps
    sid = (await hit(n2.port)).session_id
    assert (await status(n2.port))["sessions"]["active"] == 1
    assert (await status(n1.port))["coordinator"] == "n1"

    async def gone_on_n2() -> bool:
        sessions = (await status(n2.port))["sessions"]
        return bool(sessions["active"] == 0 and sessions["invalidated"] == 1)

    await wait_for(gone_on_n2, 10, "expiry replicated")
    assert (await hit(n2.port, sid)).session_id != sid


async def test_a_member_dropped_while_stalled_is_brought_up_to_date_when_it_returns(sesh: Start) -> None:
    group = mcast_port()
    n1 = sesh(*cluster_args("n1", group))
    n2 = sesh(*cluster_args("n2", group))
    sid = (await hit(n1.port)).session_id
    assert (await hit(n2.port, sid)).hits == 2
    n2.signal(signal.SIGSTOP)  # alive to TCP (the kernel still accepts), deaf to everything else
    try:
        # The write waits for n2's acknowledgement, gives up, drops n2 and succeeds without it.
        assert (await hit(n1.port, sid)).hits == 3
        assert (await hit(n1.port, sid)).hits == 4
        backend = await status(n1.port)
        assert member_states(backend)["n2"] == "gone" and backend["counters"]["members_dropped_unacked"] == 1
    finally:
        n2.signal(signal.SIGCONT)

    async def resynced() -> bool:
        return bool((await status(n1.port))["counters"]["resyncs"] == 1)

    await wait_for(resynced, 15, "n2 resynchronized")
    # n2 missed two writes while it was out; it has them now, so its answer continues the count.
    reply = await hit(n2.port, sid)
    assert reply.status == 200 and reply.hits == 5
