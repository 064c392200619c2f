"""KeyedLocks (sesh/node/turns.py): per-key FIFO locks, as the node's session queues and the cluster
backend's session locks use them."""

from __future__ import annotations

import trio
import trio.testing

from sesh.node.turns import KeyedLocks


async def test_waiters_get_the_lock_in_arrival_order_and_the_table_empties() -> None:
    locks = KeyedLocks()
    order: list[int] = []

    async def worker(number: int) -> None:
        waited = await locks.acquire("s")
        assert waited == (number > 0)
        order.append(number)
        await trio.sleep(0.01)
        locks.release("s")

    async with trio.open_nursery() as nursery:
        for number in range(5):
            nursery.start_soon(worker, number)
            await trio.testing.wait_all_tasks_blocked()
        assert locks.users("s") == 5 and "s" in locks
    assert order == [0, 1, 2, 3, 4]
    assert len(locks) == 0 and "s" not in locks and locks.users("s") == 0


async def test_an_uncontended_acquire_is_no_schedule_point_and_keys_are_independent() -> None:
    locks = KeyedLocks()
    with trio.testing.assert_no_checkpoints():
        assert await locks.acquire("a") is False
        assert await locks.acquire("b") is False
    locks.release("a")
    locks.release("b")
    assert len(locks) == 0


async def test_a_cancelled_waiter_leaves_the_line_and_the_next_one_gets_the_lock() -> None:
    locks = KeyedLocks()
    await locks.acquire("s")
    got: list[str] = []

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await locks.acquire("s")
            got.append(name)
            locks.release("s")

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert locks.users("s") == 2  # the holder and the second waiter
        locks.release("s")
    assert got == ["second"] and len(locks) == 0
