"""The event layer of one process, put together once: relay, consumers, purge, dead letters.

Built the same way by ``agora serve`` (the app factory) and ``agora worker``; the only choice
is the transport: RabbitMQ when ``AGORA_AMQP_URL`` is set, otherwise the in-process queues in
PostgreSQL (:mod:`agora.events.local`). Consumers and the runner are the same code either way.

Its pool commits without waiting for the WAL flush (``synchronous_commit = off``): every write
it makes is redone if a crash loses it, and loses nothing that was promised. The event itself
was made durable by the writer's own (synchronous) commit; a lost "sent" mark or enqueued
delivery makes the relay publish again, a lost consumer effect comes with its lost ack, so the
event is handled again (the WAL is written in order: an ack that survived means the effect
before it did; with RabbitMQ, whose acks are not in that WAL, a consumer's transaction is made
durable before its ack). So the event machinery adds few WAL flushes for the durable writes (chat
messages, posts) to wait behind.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from agora.clock import Clock
from agora.config import EventsConfig
from agora.events.amqp import AmqpDeadLetters, AmqpOutlet, AmqpSource
from agora.events.consumer import Consumer
from agora.events.local import CHANNEL as DELIVERIES_CHANNEL
from agora.events.local import LocalDeadLetters, LocalOutlet, LocalSource, bindings_of
from agora.events.metrics import EventMetrics
from agora.events.relay import CHANNEL as OUTBOX_CHANNEL
from agora.events.relay import Outlet, Relay, Wake
from agora.events.runner import Runner, Source
from agora.server.amqp import Amqp
from agora.services.housekeeping import Periodic
from agora.storage.db import Database
from agora.storage.events import DeadLetter, OutboxStore

log = logging.getLogger(__name__)

# Vacuumed every AGORA_EVENTS_VACUUM_INTERVAL seconds by the node relaying (see vacuum_once).
CHURNING_TABLES = ("events.deliveries", "events.outbox", "content.post_stat_deltas")
VACUUM_LOCK = 0x61676F72_76616375  # pg_try_advisory_lock key: one vacuum at a time


class DeadLetters(Protocol):
    async def waiting(self, consumer: str | None) -> list[DeadLetter]: ...

    async def replay(self, consumer: str | None, event_ids: list[int] | None) -> int: ...

    async def depths(self) -> dict[str, int]: ...


class EventBus:
    def __init__(
        self,
        config: EventsConfig,
        db: Database,
        dsn: str,
        amqp: Amqp | None,
        consumers: list[Consumer],
        clock: Clock,
        metrics: EventMetrics | None,
        *,
        relay: bool,
        consume: bool,
    ) -> None:
        self.config = config
        self.db = db
        self.store = OutboxStore(db)
        self.amqp = amqp
        self.consumers = consumers
        self.clock = clock
        self.metrics = metrics
        outlet: Outlet
        # Publishing and consuming on separate connections (RabbitMQ's advice): the broker's
        # flow control throttles a connection that publishes fast, and on a shared one that
        # held back the consumers' deliveries and acks too.
        self._publishing: Amqp | None = None
        if amqp is not None:
            self._publishing = Amqp(amqp.url)
            outlet = AmqpOutlet(self._publishing, config.exchange, consumers)
            self.dead_letters: DeadLetters = AmqpDeadLetters(amqp, config.exchange, consumers)
        else:
            outlet = LocalOutlet(self.store, bindings_of(consumers), Wake(db, DELIVERIES_CHANNEL))
            self.dead_letters = LocalDeadLetters(self.store)
        self.outlet = outlet
        self.relay = (
            Relay(
                db,
                self.store,
                outlet,
                dsn,
                clock,
                metrics,
                poll=config.poll,
                gather=config.gather,
            )
            if relay
            else None
        )
        self.runners = [self._runner(c, dsn) for c in consumers] if consume else []
        if isinstance(outlet, LocalOutlet):
            outlet.sources = [r.source for r in self.runners if isinstance(r.source, LocalSource)]
        self._wake_relays = Wake(db, OUTBOX_CHANNEL)
        self.purge = Periodic("events-purge", config.purge_interval, clock, self.purge_once)
        self.vacuum = Periodic("events-vacuum", config.vacuum_interval, clock, self.vacuum_once)
        self.gauges = Periodic("events-gauges", 15.0, clock, self.observe)

    @property
    def transport(self) -> str:
        return self.outlet.name

    def _runner(self, consumer: Consumer, dsn: str) -> Runner:
        source: Source
        if self.amqp is not None:
            source = AmqpSource(self.amqp, self.config.exchange, consumer, self.config.prefetch)
        else:
            source = LocalSource(
                self.store, consumer.name, dsn, lease=self.config.lease, poll=self.config.poll
            )
        return Runner(
            consumer,
            source,
            self.db,
            self.store,
            self.clock,
            self.metrics,
            prefetch=self.config.prefetch,
            max_attempts=self.config.max_attempts,
            backoff=self.config.retry_backoff,
            durable=self.amqp is not None,
        )

    def committed(self) -> None:
        """A transaction of this process wrote events and committed: wake a relay."""
        if self.relay is not None:
            self.relay.wake()
        else:
            self._wake_relays()

    def start(self) -> None:
        if self.relay is not None:
            self.relay.start()
            self.purge.start()
            self.vacuum.start()
        for runner in self.runners:
            runner.start()
        self.gauges.start()

    async def stop(self) -> None:
        await asyncio.gather(
            *(r.stop() for r in self.runners),
            *([self.relay.stop(), self.purge.stop(), self.vacuum.stop()] if self.relay else []),
            self.gauges.stop(),
            return_exceptions=True,
        )
        if self._publishing is not None:
            await self._publishing.close()
        for runner in self.runners:  # consumers holding clients of their own (search's)
            close = getattr(runner.consumer, "close", None)
            if close is not None:
                await close()

    async def vacuum_once(self) -> bool:
        """VACUUM the tables that churn with every event (one node at a time; False when another
        was at it). Every delivery is inserted, leased and deleted, every outbox row updated and
        purged, every counter delta inserted and folded away: between two autovacuum visits (a
        minute apart at the least) their dead rows piled up and each lease scanned past all of
        them (bench mixed: a lease took 0.5 ms by the end of a round, the largest share of
        PostgreSQL's statement time)."""
        async with self.db.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", VACUUM_LOCK):
                return False
            try:
                for table in CHURNING_TABLES:
                    await conn.execute(f"VACUUM {table}")
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", VACUUM_LOCK)
        return True

    async def purge_once(self) -> int:
        total = 0
        while (deleted := await self.store.purge(self.config.retention)) > 0:
            total += deleted
        if total:
            log.info("purged %d sent events and handled-event records", total)
        return total

    async def observe(self) -> None:
        """Dead-letter depths for the metrics (every 15 s)."""
        if self.metrics is None:
            return
        try:
            found = await self.dead_letters.depths()
        except Exception:
            return
        for name, n in ({c.name: 0 for c in self.consumers} | found).items():
            self.metrics.dead_letters.labels(name).set(n)

    async def health(self) -> tuple[bool, dict[str, object]]:
        """For /readyz: whether events flow, with the backlog."""
        unsent, oldest = await self.store.backlog()
        ready = await self.outlet.ready() if self.amqp is not None else True
        detail: dict[str, object] = {"transport": self.transport, "unsent": unsent}
        if oldest is not None:
            detail["oldest_unsent_age_s"] = round(self.clock.time() - oldest.timestamp(), 3)
        return ready, detail

    async def settled(self) -> bool:
        """Nothing committed waits: the outbox is relayed and every consumer is idle."""
        unsent, _ = await self.store.backlog()
        if unsent:
            if self.relay is not None:
                self.relay.wake()
            return False
        for runner in self.runners:
            if not await runner.idle():
                return False
        return True
