"""In-process mode (no ``AGORA_AMQP_URL``): each consumer's durable queue is a PostgreSQL table.

The relay's outlet copies each batch into ``events.deliveries`` (one row per bound consumer) in
the transaction that marks the batch sent, so an event reaches every queue exactly once; after
the commit it wakes this process's sources directly and others' with ``NOTIFY
agora_deliveries``. A
source leases rows (``FOR UPDATE SKIP LOCKED``, so several processes can share a queue), hands
them to the runner, and deletes them when acked; a lease that runs out (its process died) makes
the rows deliverable again. Dead letters go to ``events.dead_letters``. The runner, its
idempotency, retries and dead-lettering are the same as with RabbitMQ.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from agora.events.consumer import Consumer
from agora.events.relay import Listener, Wake
from agora.events.runner import Delivery
from agora.events.types import event_type_of
from agora.storage.db import Tx
from agora.storage.events import DeadLetter, OutboxRow, OutboxStore

log = logging.getLogger(__name__)

CHANNEL = "agora_deliveries"


def bindings_of(consumers: Iterable[Consumer]) -> dict[str, list[str]]:
    """event type -> names of the consumers bound to it."""
    out: dict[str, list[str]] = {}
    for consumer in consumers:
        for event_type in consumer.handles:
            out.setdefault(event_type, []).append(consumer.name)
    return out


class LocalOutlet:
    name = "in-process"

    def __init__(
        self, store: OutboxStore, bindings: Mapping[str, list[str]], wake_others: Wake
    ) -> None:
        self.store = store
        self.bindings = bindings
        self.sources: list[LocalSource] = []  # this process's, woken directly
        self.wake_others = wake_others  # NOTIFY agora_deliveries, for other processes'

    async def ready(self) -> bool:
        return True

    def published(self) -> None:
        for source in self.sources:
            source.wake()
        self.wake_others()

    async def publish(self, tx: Tx, rows: list[OutboxRow]) -> None:
        await self.store.enqueue(
            tx,
            [(name, row.id, row.body) for row in rows for name in self.bindings.get(row.type, ())],
        )


class LocalDelivery:
    __slots__ = ("body", "id", "source")

    def __init__(self, source: LocalSource, delivery_id: int, body: bytes) -> None:
        self.source = source
        self.id = delivery_id
        self.body = body

    async def ack(self) -> None:
        self.source.settle(self.id)

    async def dead(self, error: str, attempts: int) -> None:
        await self.source.store.dead_letter(
            self.id, event_type_of(self.body) or "?", error, attempts
        )
        self.source.held.discard(self.id)


class LocalSource:
    def __init__(
        self,
        store: OutboxStore,
        consumer: str,
        dsn: str,
        *,
        lease: float = 120.0,
        poll: float = 2.0,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.lease = lease  # longer than a delivery's retries take (see Runner)
        self.poll = poll
        self._wake = asyncio.Event()
        self._listener = Listener(dsn, CHANNEL, self._wake)
        self._acks: list[int] = []
        self._acked = asyncio.Event()
        self.held: set[int] = set()  # leased by this source, not yet acked or dead-lettered

    def wake(self) -> None:
        self._wake.set()

    def settle(self, delivery_id: int) -> None:
        """Acks are deleted in batches by the source's loop (one statement per turn)."""
        self.held.discard(delivery_id)
        self._acks.append(delivery_id)
        self._acked.set()

    async def idle(self) -> bool:
        return not self._acks and not (await self.store.queue_depths()).get(self.consumer)

    async def run(self, deliver: Callable[[Delivery], None], room: Callable[[], int]) -> None:
        self._listener.start()
        try:
            await self._run(deliver, room)
        finally:
            await asyncio.shield(self._give_back())
            await self._listener.stop()

    async def _give_back(self) -> None:
        """Stopping: delete what was acked and release what was leased but not handled, so
        the next consumer takes it at once rather than when the lease runs out."""
        try:
            await self._flush_acks()
            if self.held:
                held, self.held = list(self.held), set()
                await self.store.release(held)
        except Exception as exc:
            log.warning("%s: could not give back its deliveries (%s)", self.consumer, exc)

    async def _flush_acks(self) -> None:
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                await self.store.ack(acks)
            except Exception:
                self._acks.extend(acks)
                raise

    async def _lease(self, limit: int) -> list[tuple[int, bytes]]:
        """Lease up to ``limit`` deliveries. Cancelled while the statement runs, the rows it
        leased are still held (and given back on the way out) instead of waiting out the lease."""
        task = asyncio.ensure_future(self.store.lease(self.consumer, limit, self.lease))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            try:
                self.held.update(delivery_id for delivery_id, _ in await task)
            except Exception:
                pass
            raise

    async def _run(self, deliver: Callable[[Delivery], None], room: Callable[[], int]) -> None:
        """Lease when woken (a relay enqueued), when room opens after a full lease, or every
        ``poll`` seconds; acks alone are deleted without leasing again. (Leasing after every
        ack made most leases come back empty: a fifth of PostgreSQL's statement time
        under the mixed load went to them.)"""
        lease = True
        while True:
            if lease:
                try:
                    self._acked.clear()
                    await self._flush_acks()
                    free = room()
                    leased = await self._lease(free) if free else []
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("%s: reading its queue failed (%s); retrying", self.consumer, exc)
                    await asyncio.sleep(1.0)
                    continue
                for delivery_id, body in leased:
                    self.held.add(delivery_id)
                    deliver(LocalDelivery(self, delivery_id, body))
                if not free or len(leased) == free:
                    # Full (more may wait): lease again once acks make room.
                    await self._acked.wait()
                    continue
            # What was there is leased: wait for a wake-up; meanwhile delete what is acked.
            wake = asyncio.ensure_future(self._wake.wait())
            acked = asyncio.ensure_future(self._acked.wait())
            try:
                done, _ = await asyncio.wait(
                    {wake, acked}, timeout=self.poll, return_when="FIRST_COMPLETED"
                )
            finally:
                wake.cancel()
                acked.cancel()
            lease = wake in done or not done  # woken, or the poll's safety net
            if lease:
                self._wake.clear()
            else:
                self._acked.clear()
                try:
                    await self._flush_acks()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("%s: deleting acks failed (%s); retrying", self.consumer, exc)
                    lease = True


class LocalDeadLetters:
    """``agora events dead-letters`` / ``replay`` without RabbitMQ."""

    def __init__(self, store: OutboxStore) -> None:
        self.store = store

    async def waiting(self, consumer: str | None) -> list[DeadLetter]:
        return await self.store.dead_letters(consumer)

    async def replay(self, consumer: str | None, event_ids: list[int] | None) -> int:
        return await self.store.replay(consumer, event_ids)

    async def depths(self) -> dict[str, int]:
        return await self.store.dead_letter_depths()
