"""ReadinessLoop over real socket pairs: many ready sockets served from one task, a handler handing
its socket back, a handler's error raised in its owner's task, cancellation, and the loop stopping."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from sesh.net.readiness import ReadinessLoop


@pytest.fixture
async def loop(nursery: trio.Nursery) -> ReadinessLoop:
    loop = ReadinessLoop()
    await nursery.start(loop.run)
    return loop


def _pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = [socket.socketpair() for _ in range(count)]
    for ours, _ in pairs:
        ours.setblocking(False)
    return pairs


async def test_serves_every_ready_socket_and_hands_each_back_when_asked(loop: ReadinessLoop) -> None:
    pairs = _pairs(20)
    served: list[bytes] = []
    handed_back: list[int] = []
    all_served = trio.Event()

    async def owner(index: int, ours: socket.socket) -> None:
        def on_readable() -> bool:
            data = ours.recv(100)
            served.append(data)
            if len(served) == len(pairs):
                all_served.set()
            ours.send(b"echo " + data)
            return data != b"last"

        await loop.serve_while(ours.fileno(), on_readable)
        handed_back.append(index)

    async with trio.open_nursery() as owners:
        for index, (ours, _) in enumerate(pairs):
            owners.start_soon(owner, index, ours)
        await trio.testing.wait_all_tasks_blocked()
        for _, theirs in pairs:
            theirs.send(b"first")
        with trio.fail_after(5):
            await all_served.wait()
        assert handed_back == []  # each handler kept its socket in the loop
        for _, theirs in pairs:
            assert theirs.recv(100) == b"echo first"
            theirs.send(b"last")
    assert sorted(handed_back) == list(range(len(pairs)))
    for ours, theirs in pairs:
        assert theirs.recv(100) == b"echo last"
        ours.close()
        theirs.close()


async def test_a_handlers_error_is_raised_in_its_owner_and_the_loop_goes_on(loop: ReadinessLoop) -> None:
    (bad, bad_peer), (good, good_peer) = _pairs(2)

    def broken() -> bool:
        raise ValueError("a bug in one connection")

    good_calls = []

    def fine() -> bool:
        good_calls.append(good.recv(100))
        return False

    async with trio.open_nursery() as owners:

        async def bad_owner() -> None:
            with pytest.raises(ValueError, match="a bug in one connection"):
                await loop.serve_while(bad.fileno(), broken)

        owners.start_soon(bad_owner)
        owners.start_soon(loop.serve_while, good.fileno(), fine)
        await trio.testing.wait_all_tasks_blocked()
        bad_peer.send(b"x")
        await trio.sleep(0.05)
        good_peer.send(b"still served")
    assert good_calls == [b"still served"]
    for sock in (bad, bad_peer, good, good_peer):
        sock.close()


async def test_cancelling_the_owner_takes_its_socket_out_of_the_loop(loop: ReadinessLoop) -> None:
    ((ours, theirs),) = _pairs(1)
    calls: list[bytes] = []

    def keep() -> bool:
        calls.append(ours.recv(100))
        return True

    def once() -> bool:
        calls.append(ours.recv(100))
        return False

    with trio.move_on_after(0.05):
        await loop.serve_while(ours.fileno(), keep)
    theirs.send(b"after the owner left")
    await trio.sleep(0.05)
    assert calls == []
    # Handed over again, it is served again (no stale registration left behind).
    with trio.fail_after(5):
        await loop.serve_while(ours.fileno(), once)
    assert calls == [b"after the owner left"]
    ours.close()
    theirs.close()


async def test_stopping_the_loop_hands_every_socket_back_closed() -> None:
    ((ours, theirs),) = _pairs(1)
    loop = ReadinessLoop()

    async def owner() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await loop.serve_while(ours.fileno(), lambda: True)

    async with trio.open_nursery() as owners, trio.open_nursery() as looping:
        await looping.start(loop.run)
        owners.start_soon(owner)
        await trio.testing.wait_all_tasks_blocked()
        looping.cancel_scope.cancel()
    assert not loop.running
    with pytest.raises(RuntimeError):
        await loop.serve_while(ours.fileno(), lambda: True)
    ours.close()
    theirs.close()
