"""Callers that miss the same cache entry together share one read (``tongcrm.shared_reads``, issue #22, branch
till18): the tills' first requests, and those after every TTL, read a store's account and tills once."""

from __future__ import annotations

import asyncio

import pytest
from tongcrm.shared_reads import SharedReads


async def test_callers_arriving_together_share_the_first_callers_read() -> None:
    reads = SharedReads[str, int]()
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def read() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return 42

    first = asyncio.create_task(reads.read("k", read))
    await started.wait()
    others = [asyncio.create_task(reads.read("k", read)) for _ in range(7)]
    another_key = asyncio.create_task(reads.read("j", read))
    await asyncio.sleep(0)
    release.set()
    assert await first == (42, True)
    assert [await o for o in others] == [(42, False)] * 7
    assert await another_key == (42, True)
    assert calls == 2  # one for "k", one for "j"
    # once answered, the next caller reads again (the cache, not this, keeps answers)
    assert await reads.read("k", read) == (42, True)
    assert calls == 3


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
async def test_a_read_that_did_not_answer_leaves_each_waiting_caller_to_read_for_itself(ending: str) -> None:
    reads = SharedReads[str, int]()
    started = asyncio.Event()
    calls = 0

    async def stuck() -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    async def failing() -> int:
        started.set()
        await asyncio.sleep(0)
        raise RuntimeError("the database went away")

    async def read() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # a round trip
        return 7

    first = asyncio.create_task(reads.read("k", stuck if ending == "cancelled" else failing))
    await started.wait()
    waiting = [asyncio.create_task(reads.read("k", read)) for _ in range(3)]
    await asyncio.sleep(0)
    if ending == "cancelled":
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
    else:
        with pytest.raises(RuntimeError):
            await first
    answers = [await w for w in waiting]
    assert sorted(answers, key=lambda a: not a[1])[0] == (7, True)
    assert {a[0] for a in answers} == {7}
    assert calls == 1, "the first waiter read, the others shared it"


async def test_a_waiting_caller_cancelled_leaves_the_read_to_the_others() -> None:
    reads = SharedReads[str, int]()
    release = asyncio.Event()

    async def read() -> int:
        await release.wait()
        return 5

    first = asyncio.create_task(reads.read("k", read))
    await asyncio.sleep(0)
    quitter = asyncio.create_task(reads.read("k", read))
    stayer = asyncio.create_task(reads.read("k", read))
    await asyncio.sleep(0)
    quitter.cancel()
    release.set()
    assert await first == (5, True)
    assert await stayer == (5, False)
    with pytest.raises(asyncio.CancelledError):
        await quitter
