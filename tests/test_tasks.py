"""Stopping background tasks (agora.tasks): a lost cancellation does not hang a stop."""

from __future__ import annotations

import asyncio

import pytest

from agora.tasks import cancel_and_wait

pytestmark = pytest.mark.timeout(30)


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise
                # What asyncio.wait_for does on 3.11 when its future completed in the same turn.

    async def failed() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(stubborn())
    broken = asyncio.create_task(failed())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([task, None, broken]), 10)
    assert task.cancelled() and swallowed == 3
    assert isinstance(broken.exception(), RuntimeError)  # retrieved, not raised


async def test_a_task_cancelled_before_it_ran_and_an_ended_one() -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    fresh = asyncio.create_task(work())
    await cancel_and_wait([fresh])
    assert fresh.cancelled() and not ran
    await cancel_and_wait([fresh])  # already ended: returns at once


async def test_background_work_is_bounded_and_stopped(caplog: pytest.LogCaptureFixture) -> None:
    from agora.tasks import Background

    background = Background("test", limit=2)
    gate = asyncio.Event()
    done: list[int] = []

    async def work(i: int) -> None:
        await gate.wait()
        done.append(i)

    async def fail() -> None:
        raise RuntimeError("boom")

    await background.run(work(1))
    await background.run(work(2))
    assert background.running == 2 and done == []  # started, not awaited
    third = asyncio.create_task(background.run(work(3)))  # over the limit: runs in the caller
    await asyncio.sleep(0.01)
    assert not third.done()
    gate.set()
    await third
    assert sorted(done) == [1, 2, 3] or done[-1] == 3
    await asyncio.sleep(0)
    await background.run(fail())
    await asyncio.sleep(0.01)
    assert "test failed" in caplog.text and background.running == 0
    gate.clear()
    await background.run(work(4))
    await asyncio.wait_for(background.stop(), 5)
    assert background.running == 0 and 4 not in done
