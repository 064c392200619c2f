"""Real redis-server processes for the Redis suites (no tests here): one server, or a local Redis Cluster
of 3 primaries and 3 replicas made with ``redis-cli --cluster create ... --cluster-replicas 1``.

Everything runs without root in a temporary directory, on random free loopback ports whose cluster bus
port (port + 10000) is free too. ``cluster-node-timeout`` is short (1 s) so a failover takes a couple
of seconds on loopback. The helpers talk to the servers with ``redis-cli`` only, never through sesh.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tests.references import reference

NODE_TIMEOUT_MS = 1000


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_with_bus() -> int:
    """A free port below 55535 whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port < 55535 and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def cli(port: int, *args: str, password: str | None = None, timeout: float = 5.0) -> str:
    command = [reference("redis-cli"), "-h", "127.0.0.1", "-p", str(port)]
    if password is not None:
        command += ["--no-auth-warning", "-a", password]
    done = subprocess.run([*command, *args], capture_output=True, timeout=timeout, check=False)
    return done.stdout.decode("utf-8", "replace")  # values may be CBOR


class RedisServer:
    """One redis-server on a fixed port (kept across restarts), its files under ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, *, cluster: bool = False,
                 extra: Sequence[str] = (), password: str | None = None) -> None:
        self.port = port or free_port_with_bus()
        self.directory = directory / str(self.port)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.password = password
        self.extra = list(extra)
        if password is not None:
            self.extra += ["--requirepass", password, "--masterauth", password]
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [reference("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", str(self.directory),
                "--logfile", "redis.log",
                "--daemonize", "no"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        self.proc = subprocess.Popen([*args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on {self.port} exited: {log}")
            if "PONG" in cli(self.port, "ping", password=self.password) or "NOAUTH" in cli(self.port, "ping"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not answer")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        return cli(self.port, *args, password=self.password)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisCluster:
    """3 primaries + 3 replicas on loopback; ``primary_for(key)`` finds the node owning a key's slot."""

    def __init__(self, directory: Path, *, nodes: int = 6, replicas: int = 1) -> None:
        self.servers = [RedisServer(directory, cluster=True) for _ in range(nodes)]
        started = time.monotonic()
        addresses = [f"127.0.0.1:{s.port}" for s in self.servers]
        done = subprocess.run(
            [reference("redis-cli"), "--cluster", "create", *addresses, "--cluster-replicas", str(replicas),
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        self.wait_healthy()
        self.startup_seconds = time.monotonic() - started

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def nodes_info(self) -> list[list[str]]:
        """CLUSTER NODES lines (split) as one live node sees them."""
        for server in self.servers:
            if server.running:
                text = server.cli("cluster", "nodes")
                if text.strip():
                    return [line.split() for line in text.strip().splitlines()]
        return []

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every live node says cluster_state:ok, every slot has a live primary, every live replica is in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [s for s in self.servers if s.running]
            states = ["cluster_state:ok" in s.cli("cluster", "info") for s in live]
            synced = all(
                "master_link_status:up" in info or "role:master" in info
                for info in (s.cli("info", "replication") for s in live)
            )
            if all(states) and synced and self.slot_owners_live() and self.slots_list(len(live)):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not become healthy")

    def slots_list(self, nodes: int) -> bool:
        """CLUSTER SLOTS names ``nodes`` nodes (it lists a replica only once gossip has made it one)."""
        live = next(s for s in self.servers if s.running)
        ids = [line for line in live.cli("cluster", "slots").split() if re.fullmatch(r"[0-9a-f]{40}", line)]
        return len(ids) == nodes

    def slot_owners_live(self) -> bool:
        owners = [n for n in self.nodes_info() if "master" in n[2] and "fail" not in n[2] and len(n) > 8]
        return len(owners) == 3

    def primary_for(self, key: str) -> RedisServer:
        slot = int(self.servers[0].cli("cluster", "keyslot", key).strip()
                   if self.servers[0].running else next(s for s in self.servers if s.running)
                   .cli("cluster", "keyslot", key).strip())
        for node in self.nodes_info():
            if "master" not in node[2] or "fail" in node[2]:
                continue
            for spec in node[8:]:
                if spec.startswith("["):
                    continue
                lo, _, hi = spec.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    port = int(node[1].split("@")[0].rsplit(":", 1)[1])
                    return next(s for s in self.servers if s.port == port)
        raise RuntimeError(f"no live primary owns slot {slot}")

    def primaries(self) -> list[RedisServer]:
        ports = {int(n[1].split("@")[0].rsplit(":", 1)[1]) for n in self.nodes_info()
                 if "master" in n[2] and "fail" not in n[2]}
        return [s for s in self.servers if s.port in ports]

    def migrate_slot(self, slot: int, source: RedisServer, target: RedisServer,
                     pause: Callable[[str], None] = lambda phase: None) -> None:
        """Move ``slot`` from ``source`` to ``target`` as ``redis-cli --cluster reshard`` does (the Redis
        Cluster spec's live resharding), calling ``pause("migrating")`` once the slot is MIGRATING and
        IMPORTING and ``pause("moved")`` once its keys are on the target but the slot still the source's."""
        source_id, target_id = source.cli("cluster", "myid").strip(), target.cli("cluster", "myid").strip()
        assert target.cli("cluster", "setslot", str(slot), "importing", source_id).strip() == "OK"
        assert source.cli("cluster", "setslot", str(slot), "migrating", target_id).strip() == "OK"
        pause("migrating")
        while keys := source.cli("cluster", "getkeysinslot", str(slot), "100").split():
            moved = source.cli("migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys", *keys).strip()
            assert moved == "OK", moved
        pause("moved")
        for server in [target, source, *(p for p in self.primaries() if p not in (source, target))]:
            assert server.cli("cluster", "setslot", str(slot), "node", target_id).strip() == "OK"

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.kill()


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(directory)
    try:
        yield cluster
    finally:
        cluster.stop()
