"""``--mode msm`` on Redis: real redis-server processes (one server, and a 6-node Redis Cluster of 3
primaries and 3 replicas, started once for the module), real node processes, real sockets.

The cluster tests share one cluster: each works on its own sessions, and the failover test, which kills
a primary, runs last (pytest keeps the file's order)."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from tests.http_client import get
from tests.msm_helpers import Browser, status
from tests.procs import SeshProcess, free_port
from tests.redis_helpers import RedisCluster, RedisServer, redis_cluster
from tests.references import reference
from tests.up_procs import UpProcess, run_sesh

KEY = re.compile(r"^\{[0-9A-F]{32}\}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as c:
        yield c


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path)
    yield s
    s.kill()


def nodes(sesh: Callable[..., SeshProcess], store: str, *extra: str, count: int = 2,
          sticky: bool = False) -> list[SeshProcess]:
    mode = ["--sticky", "--route"] if sticky else ["--no-sticky"]
    started = []
    for i in range(count):
        route = [chr(ord("a") + i)] if sticky else []
        started.append(sesh("node", "--mode", "msm", *mode, *route, "--name", f"node{i + 1}", "--port", "0",
                            "--memcached-nodes", store, *extra))
    return started


async def alternate(browser: Browser, ports: list[int], count: int) -> str:
    first = await browser.hit(ports[0])
    assert first["hits"] == 1
    for i in range(2, count + 1):
        page = await browser.hit(ports[i % len(ports)])
        assert page["hits"] == i
        assert page["session_id"].split(".")[0] == first["session_id"].split(".")[0]
    return str(first["session_id"])


# --- one server -------------------------------------------------------------------------------------


async def test_one_server_alternating_nodes_keep_the_session(
    sesh: Callable[..., SeshProcess], server: RedisServer
) -> None:
    node1, node2 = nodes(sesh, server.url, "--max-inactive", "600")
    session_id = await alternate(Browser(), [node1.port, node2.port], 10)
    keys = server.cli("keys", "*").split()
    assert keys == ["{" + session_id + "}"]  # the hash tag is the base; no lock, no bak: copy
    assert 590 <= int(server.cli("ttl", keys[0])) <= 600  # expiry is the key's TTL (max-inactive)
    store = (await status(node1.port))["store_nodes"][0]
    # One server without replicas: nothing to wait for, and it says so.
    assert store["cluster"] is False and store["replica_waits"] == 0 and store["unreplicated_writes"] > 0


async def test_one_server_sticky_takeover_and_prefix(sesh: Callable[..., SeshProcess], server: RedisServer) -> None:
    node1, node2 = nodes(sesh, server.url, "--storage-key-prefix", "static:shop", sticky=True)
    browser = Browser()
    for i in range(1, 4):
        assert (await browser.hit(node1.port))["hits"] == i
    node1.kill()
    page = await browser.hit(node2.port)  # the balancer's failover: node b takes the session over
    assert page["hits"] == 4 and page["session_id"].endswith(".b")
    base = page["session_id"].split(".")[0]
    # The id change (route a -> b) wrote the new key and deleted the old one (no RENAME); polled: the
    # delete runs after the answer, in another process.
    with trio.fail_after(5):
        while server.cli("keys", "*").split() != ["shop_{" + base + "}.b"]:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_one_server_ignore_pattern_attribute_filter_and_locking(
    sesh: Callable[..., SeshProcess], server: RedisServer
) -> None:
    (node,) = nodes(sesh, server.url, "--request-uri-ignore-pattern", "/static/.*", "--session-attribute-filter",
                    "hits", "--locking-mode", "all", count=1)
    browser = Browser()
    await alternate(browser, [node.port], 2)
    key = "{" + browser.cookie + "}"
    assert "hits" in server.cli("hget", key, "d") and "last_node" not in server.cli("hget", key, "d")
    token = server.cli("hget", key, "c")
    reply = await get(node.port, "/static/app.css", [("cookie", f"JSESSIONID={browser.cookie}")])
    assert reply.status == 200 and server.cli("hget", key, "c") == token  # neither loaded nor stored
    assert (await browser.hit(node.port))["hits"] == 3
    backend = await status(node.port)
    assert backend["locks"] >= 2 and backend["lock_timeouts"] == 0
    assert server.cli("keys", "lock:*").split() == []  # every lock released (same slot: lock:{<base>})


async def test_a_value_sesh_did_not_write_is_counted_and_gives_a_fresh_session(
    sesh: Callable[..., SeshProcess], server: RedisServer
) -> None:
    (node,) = nodes(sesh, server.url, count=1)
    base = "0123456789ABCDEF0123456789ABCDEF"
    server.cli("set", "{" + base + "}", "not a session")
    server.cli("rpush", "{FEDCBA9876543210FEDCBA9876543210}", "a list")
    before = (await status(node.port))["bad_blobs"]
    for foreign in (base, "FEDCBA9876543210FEDCBA9876543210"):
        reply = await get(node.port, "/", [("accept", "application/json"), ("cookie", f"JSESSIONID={foreign}")])
        assert reply.status == 200
        page = json.loads(reply.body)
        assert page["hits"] == 1 and page["session_id"] != foreign
    assert (await status(node.port))["bad_blobs"] == before + 2
    assert server.cli("get", "{" + base + "}").strip() == "not a session"  # left alone


def test_a_resent_add_or_cas_lands_once(server: RedisServer) -> None:
    """The store script recognises its own new token: an add or cas sent again after its first send
    landed answers STORED without writing twice; a stale cas is still refused."""
    from sesh.net.redis_client import _SCRIPTS

    script = _SCRIPTS["store"][0]

    def store(command: str, value: str, token: str, expected: str) -> str:
        return server.cli("eval", script, "1", "{k}", command, value, token, expected, "ex", "600").strip()

    for _ in range(2):
        assert store("add", "v1", "11", "0") == "STORED"
    for _ in range(2):
        assert store("cas", "v2", "22", "11") == "STORED"
    assert server.cli("hget", "{k}", "d").strip() == "v2" and server.cli("hget", "{k}", "c").strip() == "22"
    assert store("cas", "v3", "33", "11") == "EXISTS" and store("add", "v3", "33", "0") == "NOT_STORED"
    assert server.cli("hget", "{k}", "d").strip() == "v2"


def test_wrong_or_missing_password_names_the_flag(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    try:
        for url, says in ((f"redis://:wrong@127.0.0.1:{server.port}", "wrong user or password"),
                          (f"redis://127.0.0.1:{server.port}", "no password was given")):
            done = run_sesh("node", "--mode", "msm", "--port", "0", "--memcached-nodes", url, timeout=20)
            assert done.returncode != 0
            assert "--memcached-nodes" in done.stderr and says in done.stderr, done.stderr
            assert "wrong@" not in done.stderr  # the password is never echoed
    finally:
        server.kill()


def _certificates(directory: Path) -> dict[str, Path]:
    files = {name: directory / f"{name}" for name in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt")}
    openssl = ["openssl"]
    subprocess.run([*openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", files["ca.key"],
                    "-out", files["ca.crt"], "-days", "1", "-subj", "/CN=sesh test CA"], check=True,
                   capture_output=True)
    subprocess.run([*openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", files["srv.key"], "-out",
                    files["srv.csr"], "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    subprocess.run([*openssl, "x509", "-req", "-in", files["srv.csr"], "-CA", files["ca.crt"], "-CAkey",
                    files["ca.key"], "-CAcreateserial", "-out", files["srv.crt"], "-days", "1"], check=True,
                   capture_output=True)
    return files


async def test_tls_works_and_its_misconfigurations_name_the_flag(
    sesh: Callable[..., SeshProcess], tmp_path: Path
) -> None:
    try:
        certs = _certificates(tmp_path)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is needed to make test certificates")
    tls_port = free_port()
    server = RedisServer(tmp_path, extra=["--tls-port", str(tls_port), "--tls-cert-file", str(certs["srv.crt"]),
                                          "--tls-key-file", str(certs["srv.key"]), "--tls-ca-cert-file",
                                          str(certs["ca.crt"]), "--tls-auth-clients", "no"])
    try:
        tls_url = f"rediss://127.0.0.1:{tls_port}"
        cases = [
            ((tls_url,), "--redis-tls-ca-file", "CERTIFICATE_VERIFY_FAILED"),  # the server's CA not given
            ((tls_url, "--redis-tls-ca-file", str(tmp_path / "missing.pem")), "--redis-tls-ca-file", "No such file"),
            ((f"rediss://127.0.0.1:{server.port}", "--redis-tls-ca-file", str(certs["ca.crt"])), "--redis-tls-ca-file",
             "use redis://"),  # TLS to a plain port
            ((f"redis://127.0.0.1:{tls_port}",), "--memcached-nodes", "use rediss://"),  # plain to a TLS port
        ]
        for args, flag, says in cases:
            done = run_sesh("node", "--mode", "msm", "--port", "0", "--memcached-nodes", *args, timeout=20)
            assert done.returncode != 0, args
            assert flag in done.stderr and says in done.stderr, done.stderr
        (node,) = nodes(sesh, tls_url, "--redis-tls-ca-file", str(certs["ca.crt"]), count=1)
        await alternate(Browser(), [node.port], 3)
    finally:
        server.kill()


# --- the cluster ------------------------------------------------------------------------------------


async def test_cluster_alternating_nodes_keep_the_session_and_wait_for_a_replica(
    sesh: Callable[..., SeshProcess], cluster: RedisCluster
) -> None:
    node1, node2 = nodes(sesh, ",".join(cluster.urls[:2]))
    bases = []
    for _ in range(3):  # sessions land on different slots and primaries
        session_id = await alternate(Browser(), [node1.port, node2.port], 6)
        bases.append(session_id)
        owner = cluster.primary_for("{" + session_id + "}")
        assert owner.cli("exists", "{" + session_id + "}").strip() == "1"
    store = (await status(node1.port))["store_nodes"][0]
    assert store["cluster"] is True and store["shards"] == 3
    # Every write waited for its replica (WAIT 1 on the script's connection).
    assert store["replica_waits"] > 0 and store["unreplicated_writes"] == 0, json.dumps(store)
    assert store["replica_timeouts"] == 0


async def test_cluster_sticky_nodes(sesh: Callable[..., SeshProcess], cluster: RedisCluster) -> None:
    node1, node2 = nodes(sesh, cluster.urls[3], sticky=True)
    browser = Browser()
    for i in range(1, 4):
        assert (await browser.hit(node1.port))["hits"] == i
    node1.kill()
    assert (await browser.hit(node2.port))["hits"] == 4


CONCURRENT = 40


async def test_cluster_concurrent_increments_through_two_nodes(
    sesh: Callable[..., SeshProcess], cluster: RedisCluster
) -> None:
    node1, node2 = nodes(sesh, ",".join(cluster.urls))
    browser = Browser()
    await browser.hit(node1.port)
    seen: list[int] = []
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        port = (node1, node2)[i % 2].port
        reply = await get(port, "/", [("accept", "application/json"), ("cookie", f"JSESSIONID={browser.cookie}")])
        if reply.status == 200:
            seen.append(json.loads(reply.body)["hits"])
        else:
            assert reply.status == 503
            refused += 1

    async with trio.open_nursery() as nursery:
        for i in range(CONCURRENT):
            nursery.start_soon(one, i)
    assert len(seen) == len(set(seen))  # every success carries a distinct count
    assert len(seen) + refused == CONCURRENT and len(seen) >= CONCURRENT // 2
    final = (await browser.hit(node2.port))["hits"]
    assert final >= len(seen) + 2 and max(seen) < final  # the session holds every acknowledged one
    assert final <= CONCURRENT + 2  # and nothing twice
    backends = [await status(n.port) for n in (node1, node2)]
    assert sum(b["conflicts"] + b["rebased_writes"] for b in backends) > 0  # the two nodes did race: CAS caught it


async def test_cluster_live_resharding_follows_ask_and_loses_nothing(
    sesh: Callable[..., SeshProcess], cluster: RedisCluster
) -> None:
    """The slot of a session is migrated to another primary and back (SETSLOT MIGRATING/IMPORTING,
    MIGRATE, SETSLOT NODE) while one browser keeps alternating between two nodes: while the key is on
    the target but the slot still the source's, every call is answered ASK; each hit is exactly one up."""
    node1, node2 = nodes(sesh, ",".join(cluster.urls))
    browser = Browser()
    session_id = await alternate(browser, [node1.port, node2.port], 2)
    key = "{" + session_id + "}"
    slot = int(cluster.servers[0].cli("cluster", "keyslot", key))
    source = cluster.primary_for(key)
    target = next(p for p in cluster.primaries() if p is not source)
    hits = 2
    migrating = True

    async def keep_hitting() -> None:
        nonlocal hits
        while migrating:
            page = await browser.hit((node1, node2)[hits % 2].port)  # asserts a 200
            assert page["hits"] == hits + 1 and page["session_id"] == session_id
            hits = page["hits"]

    def pause(phase: str) -> None:
        seen = hits
        deadline = time.monotonic() + 10
        while hits < seen + 4 and time.monotonic() < deadline:  # a few requests in each phase
            time.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_hitting)
        await trio.to_thread.run_sync(cluster.migrate_slot, slot, source, target, pause)
        assert cluster.primary_for(key) is target and target.cli("exists", key).strip() == "1"
        await trio.to_thread.run_sync(cluster.migrate_slot, slot, target, source, pause)  # restored
        migrating = False
    assert cluster.primary_for(key) is source and source.cli("exists", key).strip() == "1"
    assert (await browser.hit(node1.port))["hits"] == hits + 1
    stores = [(await status(n.port))["store_nodes"][0] for n in (node1, node2)]
    assert sum(s["asks"] for s in stores) >= 8, stores  # 4+ requests each way while the key had moved
    cluster.wait_healthy()


async def test_cluster_a_write_whose_primary_dies_under_it_is_sent_again(cluster: RedisCluster) -> None:
    """A cas sent on a pooled connection to a primary that dies before answering (CLIENT PAUSE WRITE
    holds it, then SIGKILL) may or may not have landed; it is sent again to the promoted replica, where
    it lands once (idempotent: see the next test), instead of failing (a 503)."""
    from sesh.net.redis_client import RedisStore
    from sesh.net.redis_url import RedisOptions, parse_redis_url

    store = RedisStore([parse_redis_url(u) for u in cluster.urls],
                       RedisOptions(operation_timeout=2.0, failover_timeout=10.0))
    key = b"{" + secrets.token_hex(16).upper().encode() + b"}"
    victim = cluster.primary_for(key.decode())
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        assert await store.store("add", key, b"v1", 600) == "STORED"
        first = await store.get(key)
        assert first is not None
        assert victim.cli("client", "pause", "3000", "write").strip() == "OK"

        async def kill_soon() -> None:
            await trio.sleep(0.3)
            victim.kill()

        nursery.start_soon(kill_soon)
        assert await store.store("cas", key, b"v2", 600, cas_unique=first.cas_unique) == "STORED"
        after = await store.get(key)
        assert after is not None and after.value == b"v2"
        assert store.statistics().resends == 1
        nursery.cancel_scope.cancel()
    victim.start()  # it rejoins as the new primary's replica
    cluster.wait_healthy()


async def test_cluster_during_a_failover_a_session_is_refused_never_replaced(
    sesh: Callable[..., SeshProcess], cluster: RedisCluster
) -> None:
    """A request whose session's slot has no reachable primary gets 503 once --redis-failover-timeout
    is over, never a fresh session (which would land on another slot and be answered 200)."""
    (node,) = nodes(sesh, ",".join(cluster.urls), "--redis-failover-timeout", "0.2", count=1)
    browser = Browser()
    session_id = await alternate(browser, [node.port], 3)
    victim = cluster.primary_for("{" + session_id + "}")
    victim.kill()
    refused, hits = 0, 3
    with trio.fail_after(20):
        while True:
            reply = await get(node.port, "/", [("accept", "application/json"),
                                               ("cookie", f"JSESSIONID={browser.cookie}")])
            if reply.status == 503:
                refused += 1
                await trio.sleep(0.05)
                continue
            assert reply.status == 200
            page = json.loads(reply.body)
            assert page["session_id"] == session_id  # the old session, back after the failover
            assert page["hits"] > hits
            break
    assert refused > 0
    victim.start()  # it rejoins as the new primary's replica
    cluster.wait_healthy()


def test_cluster_primary_killed_under_twenty_browsers_loses_nothing(
    sesh: Callable[..., SeshProcess], cluster: RedisCluster
) -> None:
    node1, node2 = nodes(sesh, ",".join(cluster.urls), "--redis-failover-timeout", "8")
    balancer = sesh("balancer", "--port", "0", "--lbmethod", "byrequests",
                    "--member", f"http://127.0.0.1:{node1.port}", "--member", f"http://127.0.0.1:{node2.port}")
    victim = cluster.primary_for("{0123456789ABCDEF0123456789ABCDEF}")
    assert victim.proc is not None
    done = run_sesh("drill", "--url", f"http://127.0.0.1:{balancer.port}/", "--browsers", "20", "--think", "0.02",
                    "--duration", "8", "--request-timeout", "12", "--kill-cmd", f"kill -9 {victim.proc.pid}@2",
                    "--json", timeout=90)
    report = json.loads(done.stdout)
    fault = report["faults"][0]
    print(f"failover: longest wait of a browser {fault['longest_gap']} s, all served again after "
          f"{fault['all_served_after']} s; {report['acked']} acknowledged, failed {report['failures']}")
    assert fault["error"] == ""
    assert report["sessions_lost"] == 0, report["problems"]
    assert report["updates_lost"] == 0, report["problems"]
    assert report["backwards"] == 0, report["problems"]
    assert fault["all_served_after"] is not None and report["acked"] > 100
    assert done.returncode == 0, done.stderr
    victim.kill()  # reaps it
    cluster.wait_healthy()  # the replica took over


def test_sesh_up_store_redis_loses_nothing_when_a_primary_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sesh up --store redis`: six redis-server members made one cluster before the nodes start; the
    drill SIGKILLs store-r1 (a primary: redis-cli makes the first three primaries) through the control
    socket. The members' data directories (under $TMPDIR) are removed when sesh up stops."""
    reference("redis-server"), reference("redis-cli")  # skips, naming the package, where they are missing
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    topo = UpProcess(tmp_path, "--store", "redis", "--set", "node.redis-failover-timeout=8")
    try:
        members = topo.members()
        assert members["redis-cluster"]["state"] == "running", (members, topo.output()[-3000:])
        [run_dir] = scratch.glob("sesh-up-redis-*")
        assert len(list(run_dir.glob("*/nodes.conf"))) == 6
        code, report, stderr = topo.drill("--browsers", "10", "--think", "0.02", "--duration", "6",
                                          "--request-timeout", "12", "--kill", "store-r1@2")
        fault = report["faults"][0]
        print(f"sesh up --store redis failover: longest wait {fault['longest_gap']} s")
        assert fault["error"] == "" and fault["all_served_after"] is not None
        assert report["sessions_lost"] == 0 and report["updates_lost"] == 0, report["problems"]
        assert report["backwards"] == 0 and code == 0, stderr
    finally:
        if topo.terminate() != 0:
            topo.kill()
    assert list(scratch.glob("sesh-up-redis-*")) == []


def test_sesh_top_reads_a_redis_store_from_info(server: RedisServer) -> None:
    server.cli("set", "a", "1")
    server.cli("get", "a")
    done = run_sesh("top", "--once", "--json", "--store", server.url, timeout=20)
    [store] = json.loads(done.stdout)["stores"]
    assert store["up"] is True and store["role"] == "master"
    assert store["items"] == 1 and store["hit_rate"] == 1.0 and store["connections"] >= 1


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"memcached_nodes": "redis://127.0.0.1:7001,n1:127.0.0.1:11211"}, "redis:// URLs and memcached nodes"),
        ({"memcached_nodes": "redis://127.0.0.1:7001", "failover_nodes": "n1"}, "--failover-nodes: not used"),
        ({"memcached_nodes": "redis://127.0.0.1:7001", "redis_tls_ca_file": "/ca.pem"}, "--redis-tls-ca-file"),
        ({"memcached_nodes": "redis://127.0.0.1:7001/3"}, "only database 0"),
        ({"memcached_nodes": "redis://127.0.0.1:7001,rediss://127.0.0.1:7002"}, "share one scheme"),
    ],
)
def test_redis_misconfigurations_name_the_flag(values: dict[str, str], says: str) -> None:
    from sesh.config import ConfigError, NodeConfig, load
    from sesh.node.msm.settings import msm_settings

    with pytest.raises(ConfigError, match=re.escape(says)):
        msm_settings(load(NodeConfig, {"mode": "msm", **values}))


def test_redis_keys_carry_the_hash_tag_of_the_base() -> None:
    from sesh.core.ids import SessionId
    from sesh.net.redis_client import hash_slot
    from sesh.node.msm.keys import KeyFormat

    keys = KeyFormat("shop", hash_tag=True)
    sid = SessionId.parse("0123456789ABCDEF0123456789ABCDEF-n1.a")
    assert keys.session_key(sid) == b"shop_{0123456789ABCDEF0123456789ABCDEF}-n1.a"
    slots = {hash_slot(k) for k in (keys.session_key(sid), keys.lock_key(sid), keys.session_key(sid.without_route()))}
    assert slots == {hash_slot(b"0123456789ABCDEF0123456789ABCDEF")}
    assert hash_slot(b"foo") == 12182 and hash_slot(b"{user1000}.following") == hash_slot(b"user1000")  # Redis docs


async def test_failed_connects_leave_no_unclosed_streams() -> None:
    """coredis left anyio memory streams open on each failed connect (a ResourceWarning each when
    collected); the client closes them, rather than a process-wide warning filter hiding them."""
    import gc
    import warnings

    from sesh.net.memcache_client import StoreUnavailable
    from sesh.net.redis_client import RedisStore
    from sesh.net.redis_url import RedisOptions, parse_redis_url

    store = RedisStore([parse_redis_url(f"redis://127.0.0.1:{free_port()}")],  # nothing listens there
                       RedisOptions(operation_timeout=0.5))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            for _ in range(3):
                with pytest.raises(StoreUnavailable):
                    await store.get(b"{0123456789ABCDEF0123456789ABCDEF}")
            nursery.cancel_scope.cancel()
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []
    hidden = [f for f in warnings.filters if f[2] is ResourceWarning and f[3] is not None]
    assert hidden == []  # and no module's ResourceWarnings hidden process-wide
