"""SessionQueues: one request per session at a time, in arrival order, bounded, and the table holds only
sessions in use (its emptied queues are reused by the next sessions, which must behave as new ones)."""

from __future__ import annotations

import trio

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
