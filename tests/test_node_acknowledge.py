"""SessionQueues: one request per session at a time, in arrival order, bounded, and the table holds only
sessions in use (its emptied queues are reused by the next sessions, which must behave as new ones)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from sesh.node.acknowledge import AcknowledgeCounters, SessionQueues


async def _one_session(queues: SessionQueues, key: str) -> tuple[list[int], int]:
    """Four requests on ``key`` arriving in order: which ran (in order) and how many were refused."""
    order: list[int] = []
    inside = refused = 0

    async def request(n: int) -> None:
        nonlocal inside, refused
        async with queues.serialized(key) as admitted:
            if not admitted:
                refused += 1
                return
            inside += 1
            assert inside == 1
            order.append(n)
            await trio.sleep(0.01)
            inside -= 1

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(request, n)
            await trio.lowlevel.checkpoint()  # arrival order
    return order, refused


async def test_requests_on_one_session_run_one_at_a_time_in_order_and_the_queue_is_bounded() -> None:
    counters = AcknowledgeCounters()
    queues = SessionQueues(3, counters)
    for round_number in range(3):  # later rounds run on queues emptied (and kept) by the earlier ones
        assert await _one_session(queues, f"session{round_number}") == ([0, 1, 2], 1)
        assert len(queues) == 0
    assert counters.queue_full == 3 and counters.serialized == 6


async def _holder_leaves_as_a_waiter_is_cancelled(queues: SessionQueues, behind: int) -> list[str]:
    """The holder leaves, a new request arrives and a waiter (with ``behind`` more after it) is
    cancelled, all in one scheduling batch: which requests ran, in order."""
    order: list[str] = []
    release = trio.Event()
    waiter_scope = trio.CancelScope()

    async def request(name: str, hold: trio.Event | None = None) -> None:
        async with queues.serialized("s") as admitted:
            assert admitted
            order.append(name)
            if hold is not None:
                await hold.wait()

    async def cancelled_waiter() -> None:
        with waiter_scope:
            await request("cancelled")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "holder", release)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(cancelled_waiter)
            await trio.testing.wait_all_tasks_blocked()
            for n in range(behind):
                nursery.start_soon(request, f"behind{n}")
                await trio.testing.wait_all_tasks_blocked()
            release.set()
            nursery.start_soon(request, "later")
            waiter_scope.cancel()
    return order


@pytest.mark.parametrize("behind", [0, 1])
async def test_a_cancelled_waiter_gives_up_its_place_and_the_session_stays_usable(behind: int) -> None:
    """The turn goes to the next waiter (if any), then to the new request, whichever order trio runs
    the three in (it reverses a batch at random, hence the rounds): a request that left the wait
    never counts as holding the turn."""
    queues = SessionQueues(5, AcknowledgeCounters())
    for _ in range(20):
        order = await _holder_leaves_as_a_waiter_is_cancelled(queues, behind)
        assert order[0] == "holder"
        assert sorted(order[1:]) == sorted([*(f"behind{n}" for n in range(behind)), "later"])
        assert len(queues) == 0
