"""End to end across network namespaces: three "hosts" on a bridge that each test creates itself, one
real ``sesh node --mode cluster`` process per host, on non-loopback addresses.

The hosts ``<run>-h1..h3`` each have one veth (``eth0``, 10.<a>.<b>.1-3/24) whose peer sits on a bridge
in a fourth namespace ``<run>-sw``, so nothing is added to the namespace the tests run in. Each node's
HTTP port stays on its own host's 127.0.0.1; the tests reach it (and its loopback-only /sesh/status)
with a small client run inside that namespace. Needs root and iproute2's ``ip``; skipped, with the
reason, otherwise. The namespaces are deleted after every test, whatever happened."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.procs import ROOT, SeshProcess

SECRET = "netns-cluster-secret"

# One request from inside a host's namespace: prints {"status", "body", "set_cookie"} as JSON.
CLIENT = """
import http.client, json, sys
port, path, cookie = int(sys.argv[1]), sys.argv[2], sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
headers = {"Accept": "application/json"}
if cookie:
    headers["Cookie"] = "JSESSIONID=" + cookie
conn.request("GET", path, headers=headers)
reply = conn.getresponse()
body = reply.read()
cookie = reply.getheader("Set-Cookie")
print(json.dumps({"status": reply.status, "body": json.loads(body) if reply.status == 200 else None,
                  "set_cookie": cookie.split(";")[0].split("=", 1)[1] if cookie else None}))
"""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Hosts:
    run: str
    subnet: str  # "10.a.b"
    names: list[str] = field(default_factory=list)
    procs: list[SeshProcess] = field(default_factory=list)

    def ns(self, i: int) -> str:
        return f"{self.run}-h{i}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{i}"

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    def node(self, i: int, *args: str) -> SeshProcess:
        proc = SeshProcess(["node", "--mode", "cluster", "--name", f"n{i}", "--port", "0",
                            "--mcast-bind", self.address(i), *args], prefix=self.prefix(i))
        self.procs.append(proc)
        return proc

    def request(self, i: int, port: int, path: str = "/", cookie: str = "") -> dict[str, Any]:
        result = subprocess.run([*self.prefix(i), sys.executable, "-c", CLIENT, str(port), path, cookie],
                                capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        reply: dict[str, Any] = json.loads(result.stdout)
        return reply

    def status(self, i: int, port: int) -> dict[str, Any]:
        result = subprocess.run([*self.prefix(i), sys.executable, "-c",
                                 "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                                 f"'http://127.0.0.1:{port}/sesh/status', timeout=10).read().decode())"],
                                capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        backend: dict[str, Any] = json.loads(result.stdout)["backend"]
        return backend


def _teardown(hosts: Hosts) -> None:
    for proc in hosts.procs:  # deleting a namespace does not end the processes in it
        proc.close()
    for name in hosts.names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("network namespace tests need iproute2's ip")
    made = Hosts(run=f"sesh{os.getpid()}-{secrets.token_hex(3)}",
                 subnet=f"10.{random.randint(100, 250)}.{random.randint(0, 255)}")
    try:
        switch = f"{made.run}-sw"
        _ip("netns", "add", switch)
        made.names.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        # No IGMP querier on this bridge: without snooping it floods the group to every port.
        _ip("-n", switch, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i in (1, 2, 3):
            ns = made.ns(i)
            _ip("netns", "add", ns)
            made.names.append(ns)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}", "netns", switch)
            _ip("-n", switch, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", switch, "link", "set", f"p{i}", "up")
            _ip("-n", ns, "addr", "add", f"{made.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except OSError as exc:
        _teardown(made)
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        yield made
    finally:
        _teardown(made)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    """Poll; the timeout is a hang guard, not a speed assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _states(backend: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["state"] for m in backend["members"]}


def test_three_hosts_replicate_over_multicast_membership_with_a_secret(hosts: Hosts) -> None:
    group = str(random.randint(20000, 60000))
    common = ("--mcast-port", group, "--mcast-ttl", "1", "--frequency", "100", "--drop-time", "1000",
              "--ack-timeout", "2", "--cluster-secret", SECRET)
    nodes = {i: hosts.node(i, *common) for i in (1, 2, 3)}
    assert "trusts its network" not in "\n".join(nodes[1].stderr_lines)

    def everyone_joined() -> bool:
        return all(len(_states(hosts.status(i, n.port))) == 2 for i, n in nodes.items())

    _wait(everyone_joined, 15, "every host to see the others")
    backend = hosts.status(2, nodes[2].port)
    assert backend["receiver"].startswith(hosts.address(2) + ":") and backend["secret"] is True
    addresses = {m["name"]: m["address"].rsplit(":", 1)[0] for m in backend["members"]}
    assert addresses == {"n1": hosts.address(1), "n3": hosts.address(3)}

    first = hosts.request(1, nodes[1].port)
    sid = first["body"]["session_id"]
    assert first["body"]["hits"] == 1
    for n in range(2, 8):  # a session written on any host is on every host, counted exactly
        i = (n - 1) % 3 + 1
        reply = hosts.request(i, nodes[i].port, cookie=sid)
        assert reply["status"] == 200 and reply["body"]["session_id"] == sid, reply
        assert reply["body"]["hits"] == n, (i, reply)
    assert all(p["lag_samples"] > 0 for p in hosts.status(1, nodes[1].port)["peers"])

    # A host's node dies: its kernel resets the connections across the bridge, the others drop it.
    nodes[3].kill()
    assert hosts.request(1, nodes[1].port, cookie=sid)["body"]["hits"] == 8
    assert hosts.request(2, nodes[2].port, cookie=sid)["body"]["hits"] == 9
    _wait(lambda: _states(hosts.status(1, nodes[1].port)).get("n3") == "gone", 15, "n3 to be dropped")


def test_static_members_across_hosts(hosts: Hosts) -> None:
    """--membership static: each node names the others' receivers (networks without multicast)."""
    port = 4000 + random.randint(0, 999)
    nodes = {}
    for i in (1, 2):
        peer = hosts.address(3 - i)
        nodes[i] = hosts.node(i, "--membership", "static", "--member", f"{peer}:{port}",
                              "--receiver-port", str(port), "--frequency", "100", "--drop-time", "1000",
                              "--cluster-secret", SECRET)
    sid = hosts.request(1, nodes[1].port)["body"]["session_id"]
    assert hosts.request(2, nodes[2].port, cookie=sid)["body"]["hits"] == 2
    assert hosts.request(1, nodes[1].port, cookie=sid)["body"]["hits"] == 3
    assert _states(hosts.status(2, nodes[2].port)) == {"n1": "alive"}


def test_a_non_loopback_cluster_without_a_secret_needs_insecure_cluster(hosts: Hosts) -> None:
    args = ["node", "--mode", "cluster", "--name", "open", "--port", "0", "--mcast-bind", hosts.address(1)]
    refused = subprocess.run([*hosts.prefix(1), sys.executable, str(ROOT / "sesh.py"), *args],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert refused.returncode != 0
    assert "--cluster-secret" in refused.stderr and "--insecure-cluster" in refused.stderr, refused.stderr
    assert "listening on" not in refused.stdout

    group = str(random.randint(20000, 60000))
    insecure = ("--insecure-cluster", "--mcast-port", group, "--mcast-ttl", "1", "--frequency", "100")
    n1 = hosts.node(1, *insecure)
    n2 = hosts.node(2, *insecure)
    assert n1.wait_for_line("trusts its network")  # said loudly
    assert hosts.status(1, n1.port)["secret"] is False
    _wait(lambda: _states(hosts.status(2, n2.port)) == {"n1": "alive"}, 15, "n2 to see n1")
    sid = hosts.request(1, n1.port)["body"]["session_id"]
    assert hosts.request(2, n2.port, cookie=sid)["body"]["hits"] == 2
