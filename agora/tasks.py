"""Stopping background tasks: the one way every component ends the tasks it started.

A cancellation can be lost on Python 3.11: ``asyncio.wait_for`` (ours or a library's) returns
its result instead of raising when the awaited thing completed in the same loop turn as the
cancel (gh-86296, fixed in 3.12), and the task then goes on as if nothing happened. A stop that
cancels once and waits would wait forever (seen: ``agora worker`` hung on SIGTERM right after
starting, its relay woken by the LISTEN connection in that very turn). So a stop cancels again
until the task ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)

RECANCEL = 0.5  # seconds a cancelled task gets before it is cancelled again


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel ``tasks`` (None skipped) and return when every one of them has ended."""
    pending = {t for t in tasks if t is not None}
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=RECANCEL)
        for task in done:  # retrieved, so asyncio does not log it as never retrieved
            if not task.cancelled():
                task.exception()
        if pending:
            log.info("cancelling again: %s", ", ".join(_name(t) for t in pending))


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)


class Background:
    """Work a request starts and does not wait for (live pushes of a new post): at most
    ``limit`` running at once; past that the caller waits for its own (backpressure, not an
    unbounded pile of tasks). Failures are logged; :meth:`stop` cancels what is left."""

    def __init__(self, name: str, limit: int = 1000) -> None:
        self.name = name
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def run(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self._tasks) >= self.limit:
            await work
            return
        task = asyncio.create_task(work, name=self.name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("%s failed", self.name, exc_info=exc)

    async def stop(self) -> None:
        await cancel_and_wait(list(self._tasks))
