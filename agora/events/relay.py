"""The outbox relay: committed events leave PostgreSQL for the consumers' queues.

One loop per process. A commit that wrote events wakes it: the process's own relay directly
(``Database.events_committed``), the relays of other processes through ``LISTEN
agora_outbox`` (a process without a relay of its own sends ``NOTIFY`` after its commits, see
:class:`Wake`), so the lag from commit to publish is a few milliseconds; a slow poll backs the
wake-ups up (a listener connection that dropped, a notification lost with it).

The 16 partitions are spread over ``lanes`` (4) that drain at once, so one batch waiting for
the broker's confirms does not hold up the others. Each batch is one transaction: claim the
lane's partitions that no other relay holds (``FOR UPDATE SKIP LOCKED`` on
``events.relay_partitions``), read their oldest unsent events in position order, hand them to
the outlet (RabbitMQ with publisher confirms, or the in-process queues in the same
transaction), mark them sent, commit. So several relays run at once without publishing a row
twice in normal operation, and one aggregate's events (one partition) leave in commit order.
A relay killed between a confirm and its commit leaves those rows unsent: the next relay
publishes them again, and consumers drop the repeats by event id (at-least-once delivery).
With the broker down the rows wait; writes are not affected.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from typing import Protocol

import asyncpg

from agora.clock import Clock
from agora.events.metrics import EventMetrics
from agora.storage.db import Database, Tx
from agora.storage.events import OutboxRow, OutboxStore
from agora.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CHANNEL = "agora_outbox"
GATHER_MIN = 0.005  # seconds a wake-up waits for more commits before draining
LANES = 4  # partition groups drained at once
BATCH = 1000  # events per batch (one transaction, one round of confirms)


class Outlet(Protocol):
    """Where the relay puts a batch."""

    #: Shown by /readyz and logs.
    name: str

    async def ready(self) -> bool:
        """Whether a batch could be published now (connects if needed)."""
        ...

    async def publish(self, tx: Tx, rows: list[OutboxRow]) -> None:
        """Publish every row or raise; rows are marked sent in ``tx`` only if this returns."""
        ...

    def published(self) -> None:
        """The batch's transaction committed (wake whoever reads what it wrote)."""
        ...


class Wake:
    """``NOTIFY channel`` sent after commits, in a statement of its own: a NOTIFY inside a
    writing transaction holds PostgreSQL's global notification lock through the commit's WAL
    flush and so makes such commits wait for one another. Calls made while one is on its way
    are folded into one more."""

    def __init__(self, db: Database, channel: str) -> None:
        self.db = db
        self.channel = channel
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def __call__(self) -> None:
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self.db.execute("notify", "SELECT pg_notify($1, '')", self.channel)
                except Exception as exc:  # the pollers catch up
                    log.debug("NOTIFY %s failed: %s", self.channel, exc)
                if not self._again:
                    return
        finally:
            self._task = None


def _resolve(future: asyncio.Future[None], *_args: object) -> None:
    if not future.done():
        future.set_result(None)


class Listener:
    """A dedicated connection LISTENing on a channel; sets ``wake`` on each notification and
    reconnects (with backoff) when the connection drops."""

    def __init__(self, dsn: str, channel: str, wake: asyncio.Event) -> None:
        self.dsn = dsn
        self.channel = channel
        self.wake = wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"listen-{self.channel}")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def _run(self) -> None:
        delay = 0.2
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(functools.partial(_resolve, lost))
                await conn.add_listener(self.channel, lambda *_args: self.wake.set())
                self.wake.set()  # whatever was committed while we were not listening
                delay = 0.2
                await lost
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("LISTEN %s: %s; reconnecting", self.channel, exc)
            finally:
                if conn is not None and not conn.is_closed():
                    await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Relay:
    def __init__(
        self,
        db: Database,
        store: OutboxStore,
        outlet: Outlet,
        dsn: str,
        clock: Clock,
        metrics: EventMetrics | None = None,
        *,
        batch: int = BATCH,
        poll: float = 2.0,
        gather: float = GATHER_MIN,
        lanes: int = LANES,
    ) -> None:
        self.db = db
        self.store = store
        self.outlet = outlet
        self.clock = clock
        self.metrics = metrics
        self.batch = batch
        self.poll = poll
        self.gather = gather  # seconds between the starts of two drains, at least
        self.lanes = lanes
        self.broker_ready = False  # the outlet answered at the last attempt
        self.relayed = 0  # events this relay got through
        self.drains = 0  # drains started after a wake-up or poll
        self._wake = asyncio.Event()
        self._listener = Listener(dsn, CHANNEL, self._wake)
        self._task: asyncio.Task[None] | None = None
        self._observed = 0.0

    def start(self) -> None:
        self._listener.start()
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        await self._listener.stop()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        last = -math.inf  # when the last drain started
        while True:
            try:
                async with asyncio.timeout(self.poll):  # not wait_for: see agora.tasks
                    await self._wake.wait()
                # Let the commits of the next moments join this drain: at least GATHER_MIN after
                # the wake-up (one drain per commit cost a claim and a read for a row or two),
                # and drains start at most once per `gather` seconds: under load, fewer and
                # larger batches for the relay and for every consumer behind it.
                await asyncio.sleep(max(GATHER_MIN, last + self.gather - loop.time()))
            except TimeoutError:
                pass
            self._wake.clear()
            last = loop.time()
            self.drains += 1
            try:
                await self.drain()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                # The batch rolled back: its rows wait for the next attempt.
                log.warning("outbox relay: %s; retrying", exc, exc_info=failures == 1)
                await self.clock.sleep(min(0.2 * 2**failures, 5.0))
                self._wake.set()
            await self._observe()

    async def drain(self) -> int:
        """Relay batches until nothing is left that this relay may claim; how many events."""
        self.broker_ready = await self.outlet.ready()
        if self.metrics is not None:
            self.metrics.broker_up.set(1 if self.broker_ready else 0)
        if not self.broker_ready:
            return 0
        # One batch over every partition first: after a wake-up there are usually a few
        # events, and a transaction per lane (each claiming, reading, committing, mostly for
        # nothing) cost four times the statements. A full batch means more wait: then the
        # lanes drain in parallel.
        first = await self._batch(1, 0)
        if first < self.batch:
            return first
        counts = await asyncio.gather(*(self._drain_lane(lane) for lane in range(self.lanes)))
        return first + sum(counts)

    async def _drain_lane(self, lane: int) -> int:
        total = 0
        while True:
            sent = await self._batch(self.lanes, lane)
            total += sent
            await self._observe()  # also while a long drain goes on
            if sent < self.batch:
                # Drained: whatever commits after the read wakes us again.
                return total

    async def _batch(self, lanes: int, lane: int) -> int:
        """Relay one batch of the partitions ``p`` with ``p % lanes == lane``."""
        async with self.db.transaction("relay_batch") as tx:
            rows = await self.store.claim(tx, lanes, lane, self.batch)
            if not rows:
                return 0
            await self.outlet.publish(tx, rows)
            await self.store.mark_sent(tx, [r.position for r in rows])
        self.outlet.published()
        self.relayed += len(rows)
        if self.metrics is not None:
            for row in rows:
                self.metrics.count_published(row.type)
        return len(rows)

    async def _observe(self) -> None:
        """Backlog gauges, at most once a second."""
        if self.metrics is None or time.monotonic() - self._observed < 1.0:
            return
        self._observed = time.monotonic()
        try:
            unsent, oldest = await self.store.backlog()
        except Exception:
            return
        self.metrics.backlog.set(unsent)
        self.metrics.oldest_age.set(max(0.0, time.time() - oldest.timestamp()) if oldest else 0)
