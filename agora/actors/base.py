"""The one actor base.

An actor is an object with private state, a bounded mailbox and one task that handles one item
at a time; nothing else touches its state, so it needs no locks. ``tell`` expects no answer;
``ask`` returns a future; both fail fast when the mailbox is full (the caller decides: drop,
answer "busy", or disconnect) instead of letting memory grow. When an actor stops, every
pending ask fails with :class:`ActorStopped` (pykka's asyncio actor does the same).

Supervision: an exception escaping ``receive`` is logged, counted, answered to its asker as an
internal error, and ``on_failure`` decides whether to carry on (the default re-runs
``on_start`` to rebuild state) or stop. The node never goes down with an actor.

An actor with ``idle_timeout`` stops itself after that long without mail (timed by the injected
clock). With a ``handoff``, what is still in its mailbox when it stops (a command that arrived
as it went idle, or as it was stopped because its conversation moved) is handed back to be run
by a fresh actor, never failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from agora.clock import Clock, Timer
from agora.errors import AppError, ErrorCode

log = logging.getLogger(__name__)

M = TypeVar("M")
Reply = Callable[[Any], None]  # called once with the result or an exception instance
Handoff = Callable[[list[tuple[Any, "Reply | None"]]], None]


class ActorStopped(AppError):
    def __init__(self, name: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, f"{name} stopped; retry", status=503)


class MailboxFull(AppError):
    def __init__(self, name: str) -> None:
        super().__init__(
            ErrorCode.RATE_LIMITED, f"{name} is busy; retry shortly", headers={"Retry-After": "1"}
        )


_STOP = object()


def future_reply(future: asyncio.Future[Any]) -> Reply:
    def reply(result: Any) -> None:
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    return reply


class Actor(Generic[M]):
    __slots__ = ("__dict__", "_mailbox", "_stopped", "_task", "name", "on_exit")
    kind = "actor"
    idle_timeout: float | None = None  # stop after this long without mail

    def __init__(self, name: str, mailbox_size: int = 1000, clock: Clock | None = None) -> None:
        self.name = name
        self._mailbox: asyncio.Queue[Any] = asyncio.Queue(mailbox_size)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._inflight: list[Any] = []  # the batch being handled, for answering after a crash
        self.on_exit: Callable[[Actor[M]], None] | None = None
        self.on_crash: Callable[[str], None] | None = None  # e.g. count it in the metrics
        self.handoff: Handoff | None = None  # takes what is left in the mailbox at a stop
        self.clock = clock or Clock()
        self.last_active = 0.0  # clock.monotonic() when the last batch ended
        self.busy = False  # a batch is in hand
        self._idle_timer: Timer | None = None

    # -- the outside view ---------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return not self._stopped

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def tell(self, message: M, reply: Reply | None = None) -> None:
        if self._stopped:
            raise ActorStopped(self.name)
        try:
            self._mailbox.put_nowait((message, reply))
        except asyncio.QueueFull:
            raise MailboxFull(self.name) from None

    def ask(self, message: M) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.tell(message, future_reply(future))
        return future

    @property
    def queued(self) -> int:
        return self._mailbox.qsize()

    async def stop(self) -> None:
        """Finish the item in hand, hand off (or fail) what is still queued, run ``on_stop``."""
        if self._stopped or self._task is None:
            self._stopped = True
            return
        self._stopped = True
        leftovers = self._take_queued()
        self._mailbox.put_nowait(_STOP)
        await asyncio.gather(self._task, return_exceptions=True)
        self._pass_on(leftovers)

    def _take_queued(self) -> list[tuple[Any, Reply | None]]:
        items = []
        while not self._mailbox.empty():
            item = self._mailbox.get_nowait()
            if item is not _STOP:
                items.append(item)
        return items

    def _pass_on(self, items: list[tuple[Any, Reply | None]]) -> None:
        """Hand what was left to a fresh actor (or fail it, "stopped; retry", without one)."""
        if not items:
            return
        if self.handoff is not None:
            try:
                self.handoff(items)
                return
            except Exception:
                log.exception("%s: handing off %d item(s) failed", self.name, len(items))
        for _, reply in items:
            if reply is not None:
                reply(ActorStopped(self.name))

    # -- what subclasses write ----------------------------------------------------------------

    async def on_start(self) -> None:
        pass

    async def receive(self, message: M) -> Any:
        raise NotImplementedError

    async def receive_many(self, items: list[tuple[M, Reply | None]]) -> None:
        """Handle everything that was waiting at once (override to batch); default: one by one."""
        for message, reply in items:
            await self._deliver(message, reply)

    async def on_failure(self, exc: BaseException) -> bool:
        """After a crash in ``receive``: True to carry on (state rebuilt), False to stop."""
        await self.on_start()
        return True

    async def on_stop(self) -> None:
        pass

    # -- the loop ---------------------------------------------------------------------------------

    def _crashed(self) -> None:
        if self.on_crash is not None:
            self.on_crash(self.kind)

    def _take_waiting(self, first: Any, limit: int) -> list[Any]:
        items = [first]
        while len(items) < limit and not self._mailbox.empty():
            items.append(self._mailbox.get_nowait())
        return items

    def _arm_idle(self, delay: float) -> None:
        self._idle_timer = self.clock.call_later(delay, self._idle_check)

    def _idle_check(self) -> None:
        """The idle timer: stop when nothing came for ``idle_timeout``, else look again later.
        One timer per actor, re-armed only when it fires (not once per batch)."""
        self._idle_timer = None
        if self._stopped or self.idle_timeout is None:
            return
        quiet = self.clock.monotonic() - self.last_active
        if self.busy or not self._mailbox.empty() or quiet < self.idle_timeout:
            self._arm_idle(max(0.001, self.idle_timeout - quiet))
            return
        self._stopped = True  # from now on tell() fails at once and the caller starts a new one
        self._mailbox.put_nowait(_STOP)

    async def _next(self) -> Any:
        return await self._mailbox.get()

    async def _deliver(self, message: M, reply: Reply | None) -> None:
        try:
            result = await self.receive(message)
        except AppError as err:  # an answer for the asker, not a crash
            if reply:
                reply(err)
            return
        except Exception as exc:
            if reply:
                reply(AppError(ErrorCode.INTERNAL_ERROR, "internal error"))
            raise _Crash(exc) from exc
        if reply:
            reply(result)

    async def _run(self) -> None:
        try:
            await self.on_start()
            self.last_active = self.clock.monotonic()
            if self.idle_timeout is not None:
                self._arm_idle(self.idle_timeout)
            while True:
                first = await self._next()
                if first is _STOP:
                    break
                self.busy = True
                items = self._take_waiting(first, 256)
                stop_after = False
                if items[-1] is _STOP:
                    items.pop()
                    stop_after = True
                # Every asker hears back exactly once, even when the batch crashes half-way or
                # the actor is cancelled inside it (the crashed item itself gets internal_error).
                items = [(m, _Once(r) if r is not None else None) for m, r in items]
                self._inflight = items
                try:
                    await self.receive_many(items)
                except _Crash as crash:
                    log.error(
                        "%s crashed: %r", self.name, crash.__cause__, exc_info=crash.__cause__
                    )
                    self._crashed()
                    _unanswered(items)
                    if not await self.on_failure(crash.__cause__ or crash):
                        break
                except Exception as exc:
                    log.exception("%s crashed", self.name)
                    self._crashed()
                    _unanswered(items)
                    if not await self.on_failure(exc):
                        break
                self._inflight = []
                self.busy = False
                self.last_active = self.clock.monotonic()
                if stop_after:
                    break
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s failed to start", self.name)
        finally:
            self._stopped = True
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            _unanswered(self._inflight)
            leftovers = self._take_queued()  # arrived as it went idle: a fresh actor takes them
            try:
                await self.on_stop()
            except Exception:
                log.exception("%s on_stop failed", self.name)
            if self.on_exit:
                self.on_exit(self)
            self._pass_on(leftovers)


class _Crash(Exception):
    pass


class _Once:
    """A reply that answers at most once and remembers whether it has."""

    __slots__ = ("answered", "reply")

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.answered = False

    def __call__(self, result: Any) -> None:
        if not self.answered:
            self.answered = True
            self.reply(result)


def _unanswered(items: list[Any]) -> None:
    """Answer every reply of a batch that is still waiting (after a crash or a stop)."""
    for item in items:
        if item is not _STOP and isinstance(item[1], _Once) and not item[1].answered:
            item[1](AppError(ErrorCode.UNAVAILABLE, "not handled (the actor crashed); retry"))
