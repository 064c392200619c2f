"""End to end: a cluster member SIGKILLed under sequential load costs the survivors no stall.

The killed process's kernel resets its replication connections and refuses new ones, so its peers
know at once: the member is checked over TCP (refused) and dropped, and the writes waiting for its
acknowledgement go on without it. Nothing may wait for ``--ack-timeout`` (or ``--drop-time``, both set
far longer than a request here), and no acknowledged update may be lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import trio

from tests.cluster_helpers import cluster_args, hit, mcast_port, member_states, status, try_hit, wait_for
from tests.procs import SeshProcess

Start = Callable[..., SeshProcess]

ACK_TIMEOUT = 5.0
# Much longer than a request on loopback (milliseconds), much shorter than the ack timeout: a request
# that took this long waited for the dead member.
STALL = ACK_TIMEOUT / 2
FLAGS = ("--ack-timeout", str(ACK_TIMEOUT), "--drop-time", "8000")
BROWSERS_PER_NODE = 2
# Browsers think between requests, so that at the moment of the kill there is often no write in flight
# to the victim: the next one must not be queued on the dead link until a timeout.
THINK = 0.05


class Browser:
    """Sequential requests on its own session, on one node; every answer checked against the last."""

    def __init__(self, port: int, session_id: str, hits: int) -> None:
        self.port = port
        self.session_id = session_id
        self.hits = hits
        self.failed = 0
        self.slow: list[float] = []
        self.requests = 0
        self.problems: list[str] = []

    async def run(self, until: float) -> None:
        while time.monotonic() < until and self.requests < 5000:  # bounded in count and time
            self.requests += 1
            started = time.monotonic()
            reply = await try_hit(self.port, self.session_id)
            took = time.monotonic() - started
            if took >= STALL:
                self.slow.append(round(took, 2))
            await trio.sleep(THINK)
            if reply is None or reply.status != 200:
                self.failed += 1
                continue
            if reply.hits != self.hits + 1:
                self.problems.append(f"{self.session_id}: {reply.hits} after acknowledged {self.hits}")
            self.hits = reply.hits


async def _load_and_kill(browsers: list[Browser], victim: SeshProcess) -> None:
    """Load for a while, SIGKILL ``victim`` in the middle, load on."""
    until = time.monotonic() + 2.0
    async with trio.open_nursery() as nursery:
        for browser in browsers:
            nursery.start_soon(browser.run, until)
        await trio.sleep(0.6)
        victim.signal(signal.SIGKILL)  # not kill(): it waits for the process, and the browsers with it


def _summary(browsers: list[Browser]) -> tuple[int, list[float], list[str]]:
    return (sum(b.failed for b in browsers), [t for b in browsers for t in b.slow],
            [p for b in browsers for p in b.problems])


async def test_a_killed_member_is_dropped_at_once_and_writes_do_not_wait_for_it(sesh: Start) -> None:
    group = mcast_port()
    n1, n2, n3 = (sesh(*cluster_args(f"n{i}", group, *FLAGS)) for i in (1, 2, 3))

    async def all_joined() -> bool:
        return [len(member_states(await status(n.port))) for n in (n1, n2, n3)] == [2, 2, 2]

    await wait_for(all_joined, 10, "every member sees the others")

    async def browsers_on(*nodes: SeshProcess) -> list[Browser]:
        made = []
        for node in nodes:
            for _ in range(BROWSERS_PER_NODE):
                first = await hit(node.port)
                made.append(Browser(node.port, first.session_id, first.hits))
        return made

    # A replica dies: the coordinator (n1) forwards every write to it, and n2's proposals go through n1.
    phase1 = await browsers_on(n1, n2)
    await _load_and_kill(phase1, n3)
    failed, slow, problems = _summary(phase1)
    assert problems == []
    assert slow == [], f"requests waited for the killed member: {slow}"
    assert failed == 0  # nobody asked the killed node itself: nothing to fail
    assert sum(b.requests for b in phase1) > 6 * len(phase1)  # the load really ran on both sides of the kill
    assert member_states(await status(n1.port))["n3"] == "gone"

    # The coordinator dies: n2's writes were proposed to it; they go to the next coordinator, n2 itself.
    phase2 = await browsers_on(n2)
    await _load_and_kill(phase2, n1)
    failed, slow, problems = _summary(phase2)
    assert problems == []
    assert slow == [], f"requests waited for the killed coordinator: {slow}"
    assert failed <= 1  # at most the one request whose write was in flight at the coordinator
    backend = await status(n2.port)
    assert member_states(backend) == {"n1": "gone", "n3": "gone"} and backend["coordinator"] == "n2"
    for browser in phase1 + phase2:
        if browser.port != n1.port:  # n1's browsers' sessions live on in n2 too
            assert (await hit(n2.port, browser.session_id)).hits == browser.hits + 1
