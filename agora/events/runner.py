"""The one consumer runner: acks, idempotency, retries with backoff, dead letters.

A :class:`Source` (a RabbitMQ queue, or the in-process queue in PostgreSQL) hands the runner
:class:`Delivery` objects, at most ``prefetch`` unacknowledged at a time. The runner takes what
has arrived as one batch and applies it in one transaction that also records each event id as
handled by this consumer (``events.processed``): an event delivered twice is applied once. After
the commit it runs the consumer's after-commit step (pushes), then acks.

A batch that fails is split: each of its events is tried alone, in order, and one that fails
again is retried on its own with exponential backoff (``backoff``, ``2 x backoff``, ...) while
the events behind it go on. After ``max_attempts`` attempts it goes to the consumer's dead-letter
queue (one log line with its id and error) and is acked, so a poison event never blocks the
queue. Nothing is acked before its effect is committed: a runner that dies mid-event loses
nothing (RabbitMQ redelivers what was unacked; an in-process lease expires).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import msgspec

from agora.clock import Clock
from agora.events.consumer import AfterCommit, Consumer
from agora.events.metrics import EventMetrics
from agora.events.types import Event, UnknownEvent, decode_event
from agora.storage.db import Database
from agora.storage.events import OutboxStore
from agora.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Delivery(Protocol):
    body: bytes

    async def ack(self) -> None: ...

    async def dead(self, error: str, attempts: int) -> None:
        """Move to the dead-letter queue (with ``error`` and ``attempts``), then ack."""
        ...


class Source(Protocol):
    async def run(self, deliver: Callable[[Delivery], None], room: Callable[[], int]) -> None:
        """Feed deliveries to ``deliver`` (never more than ``room()`` at once beyond those
        unacked) until cancelled, reconnecting by itself."""
        ...

    async def idle(self) -> bool:
        """True when nothing waits in the queue (tests, ``settled``)."""
        ...


class Runner:
    def __init__(
        self,
        consumer: Consumer,
        source: Source,
        db: Database,
        store: OutboxStore,
        clock: Clock,
        metrics: EventMetrics | None = None,
        *,
        prefetch: int = 256,
        max_attempts: int = 5,
        backoff: float = 0.5,
        durable: bool = False,
    ) -> None:
        self.consumer = consumer
        self.name = consumer.name
        self.source = source
        self.db = db
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.prefetch = prefetch
        self.max_attempts = max_attempts
        self.backoff = backoff
        # The effect must be on disk before the ack when the queue is not in this database
        # (RabbitMQ forgets an acked message; an in-process ack is ordered after the effect in
        # the same WAL, so there the pool's asynchronous commit is enough).
        self.durable = durable
        self.handled = 0  # events applied (first deliveries)
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._unacked = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._source_task: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._source_task = asyncio.create_task(
            self.source.run(self._arrived, self._room), name=f"source-{self.name}"
        )
        self._loop_task = asyncio.create_task(self._loop(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        """Stop taking deliveries; what is unacked is redelivered to whoever runs next."""
        await cancel_and_wait([self._source_task, self._loop_task, *self._tasks])

    @property
    def busy(self) -> bool:
        return self._unacked > 0

    async def idle(self) -> bool:
        return not self.busy and self._queue.empty() and await self.source.idle()

    def _room(self) -> int:
        return max(0, self.prefetch - self._unacked)

    def _arrived(self, delivery: Delivery) -> None:
        self._unacked += 1
        self._queue.put_nowait(delivery)

    async def _done(self, delivery: Delivery, dead: tuple[str, int] | None = None) -> None:
        try:
            if dead is None:
                await delivery.ack()
            else:
                await delivery.dead(*dead)
        except Exception as exc:
            # The channel went away: the broker redelivers it, and the repeat is dropped.
            log.info("%s: could not settle a delivery (%s); it will come again", self.name, exc)
        finally:
            self._unacked -= 1

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < self.prefetch:
                batch.append(self._queue.get_nowait())
            try:
                await self._batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of ours, not the consumer's: keep the loop alive
                log.exception("%s: consumer loop failed", self.name)

    async def _batch(self, batch: list[Delivery]) -> None:
        pairs: list[tuple[Delivery, Event]] = []
        for delivery in batch:
            try:
                pairs.append((delivery, decode_event(delivery.body)))
            except UnknownEvent as exc:
                log.warning("%s: skipped an event of unknown type %s", self.name, exc)
                await self._done(delivery)
            except (msgspec.DecodeError, ValueError) as exc:
                self._dead_log(None, f"undecodable event: {exc}", 1)
                await self._done(delivery, (f"undecodable event: {exc}", 1))
        if not pairs:
            return
        try:
            after = await self._apply([e for _, e in pairs])
        except Exception as exc:
            self._failed(exc)
            await self._isolate(pairs)
            return
        await self._after(after)
        for delivery, _ in pairs:
            await self._done(delivery)

    async def _apply(self, events: list[Event]) -> AfterCommit | None:
        """One transaction: record the ids as handled, apply the ones not handled before."""
        async with self.db.transaction(f"consume:{self.name}") as tx:
            if self.durable:
                await tx.execute("durable_commit", "SET LOCAL synchronous_commit = on")
            new = await self.store.first_time(tx, self.name, list({e.id for e in events}))
            fresh, seen = [], set()
            for event in events:
                if event.id in new and event.id not in seen:
                    seen.add(event.id)
                    fresh.append(event)
            after = await self.consumer.handle(fresh, tx) if fresh else None
        if self.metrics is not None:
            if len(events) > len(fresh):
                self.metrics.duplicates.labels(self.name).inc(len(events) - len(fresh))
            now = self.clock.time()
            lag = self.metrics.lag.labels(self.name)
            for event in fresh:
                self.metrics.count_consumed(self.name, event.type)
                lag.observe(max(0.0, now - event.occurred_at.timestamp()))
        self.handled += len(fresh)
        return after

    async def _after(self, after: AfterCommit | None) -> None:
        if after is None:
            return
        try:
            await after()
        except Exception:
            log.warning("%s: after-commit step failed", self.name, exc_info=True)

    async def _isolate(self, pairs: list[tuple[Delivery, Event]]) -> None:
        """A batch failed: try each event alone, in order; one that fails again is retried on
        its own schedule while the rest go on."""
        for delivery, event in pairs:
            try:
                after = await self._apply([event])
            except Exception as exc:
                self._failed(exc)
                self._spawn(self._retry(delivery, event, attempts=2, error=exc))
                continue
            await self._after(after)
            await self._done(delivery)

    async def _retry(
        self, delivery: Delivery, event: Event, attempts: int, error: BaseException
    ) -> None:
        while attempts < self.max_attempts:
            await self.clock.sleep(self.backoff * 2 ** (attempts - 2))
            attempts += 1
            try:
                after = await self._apply([event])
            except Exception as exc:
                self._failed(exc)
                error = exc
                continue
            await self._after(after)
            await self._done(delivery)
            return
        reason = f"{type(error).__name__}: {error}"
        self._dead_log(event, reason, attempts)
        await self._done(delivery, (reason, attempts))

    def _failed(self, exc: BaseException) -> None:
        log.debug("%s: handling failed: %r", self.name, exc)
        if self.metrics is not None:
            self.metrics.failures.labels(self.name).inc()

    def _dead_log(self, event: Event | None, reason: str, attempts: int) -> None:
        log.error(
            "dead-lettered event %s (%s) for consumer %s after %d attempt(s): %s",
            event.id if event else "?",
            event.type if event else "?",
            self.name,
            attempts,
            reason,
        )
        if self.metrics is not None:
            self.metrics.dead_lettered.labels(self.name).inc()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
