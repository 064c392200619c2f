"""The promise sesh makes over the classic stack, end to end with real processes: behind a non-sticky
balancer, with default msm settings, twenty browsers keep every session while a node and then a store
node are killed (SIGKILL) under them.

Each browser is sequential, as a person reloading a page is: it holds one cookie, sends one request at a
time, and retries a request that failed because a process died under it. Its session must keep its id
base and its hit count must never go back or skip more than the retried request could explain.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import trio

from tests.http_client import HTTPTestClient
from tests.procs import SeshProcess

BROWSERS = 20
ROUNDS = 12
KILL_NODE_AFTER = 4
KILL_STORE_AFTER = 8


class Browser:
    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie: str | None = None
        self.base: str | None = None
        self.hits = 0
        self.nodes: set[str] = set()
        self.retries = 0
        self.problems: list[str] = []

    async def reload(self) -> None:
        for _attempt in range(5):
            client = await HTTPTestClient.connect(self.port)
            try:
                headers = [("Accept", "application/json")]
                if self.cookie:
                    headers.append(("Cookie", self.cookie))
                reply = await client.request("GET", "/", headers)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, AssertionError):
                self.retries += 1
                continue
            finally:
                await client.aclose()
            if reply.status != 200:
                self.retries += 1
                await trio.sleep(0.05)
                continue
            self._check(reply.body, reply.headers_named(b"set-cookie"))
            return
        self.problems.append("no answer after 5 attempts")

    def _check(self, body: bytes, cookies: list[bytes]) -> None:
        data = json.loads(body)
        base = data["session_id"][:32]
        if self.base is None:
            self.base = base
        elif base != self.base:
            self.problems.append(f"session lost: {self.base} became {base} at hit {data['hits']}")
            self.base = base
        # A retried request may have been applied by a node that died before answering: at most one
        # unseen hit per retry, never a step back.
        if not self.hits + 1 <= data["hits"] <= self.hits + 1 + self.retries:
            self.problems.append(f"hits went from {self.hits} to {data['hits']} ({self.retries} retries)")
        self.hits = data["hits"]
        self.nodes.add(data["node"])
        for cookie in cookies:
            self.cookie = cookie.split(b";")[0].decode()


async def test_twenty_browsers_lose_nothing_while_a_node_and_a_store_die(
    sesh: Callable[..., SeshProcess],
) -> None:
    stores = [sesh("store", "--port", "0") for _ in range(2)]
    memcached_nodes = ",".join(f"n{i}:127.0.0.1:{store.port}" for i, store in enumerate(stores, 1))
    nodes = [
        sesh("node", "--mode", "msm", "--name", name, "--port", "0", "--memcached-nodes", memcached_nodes,
             "--no-sticky", "--operation-timeout", "0.5")
        for name in ("node1", "node2")
    ]
    balancer = sesh(
        "balancer", "--port", "0", "--lbmethod", "bytraffic",
        *(f"--member=http://127.0.0.1:{node.port}" for node in nodes),
    )
    browsers = [Browser(balancer.port) for _ in range(BROWSERS)]
    for round_number in range(1, ROUNDS + 1):
        if round_number == KILL_NODE_AFTER + 1:
            nodes[1].kill()
        if round_number == KILL_STORE_AFTER + 1:
            stores[0].kill()
        async with trio.open_nursery() as nursery:
            for browser in browsers:
                nursery.start_soon(browser.reload)
    problems = [f"browser {i}: {p}" for i, b in enumerate(browsers) for p in b.problems]
    assert problems == []
    assert all(b.hits >= ROUNDS for b in browsers)
    assert {"node1", "node2"} <= set().union(*(b.nodes for b in browsers))
    assert len({b.base for b in browsers}) == BROWSERS
