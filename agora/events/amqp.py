"""RabbitMQ (``AGORA_AMQP_URL``): the relay's outlet, each consumer's queue, its dead letters.

Topology (declared by every relay and every consumer, so no event is published before the
queues it is routed to exist):

- ``agora.events``: a durable topic exchange; routing key = the event's type.
- ``agora.events.<consumer>``: a durable queue per consumer, bound to each type it handles;
  consumed with manual acks and a prefetch limit.
- ``agora.events.<consumer>.dead``: its durable dead-letter queue; each message carries the
  event as it was and the headers ``x-error``, ``x-attempts``, ``x-failed-at`` and ``x-queue``.

(``agora.events`` is ``AGORA_EVENTS_EXCHANGE``: tests and deployments sharing a broker give each
their own.) Messages are persistent, JSON, with ``message_id`` = the event id and ``type``; the
relay publishes with publisher confirms and marks rows sent only after every confirm.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import aiormq
import aiormq.abc
from pamqp.commands import Basic

from agora.events.consumer import Consumer
from agora.events.runner import Delivery
from agora.server.amqp import Amqp
from agora.storage.db import Tx
from agora.storage.events import DeadLetter, OutboxRow

log = logging.getLogger(__name__)


PUBLISH_TIMEOUT = 30.0  # seconds a batch may wait for its confirms


def queue_name(exchange: str, consumer: str) -> str:
    return f"{exchange}.{consumer}"


def dead_queue_name(exchange: str, consumer: str) -> str:
    return f"{exchange}.{consumer}.dead"


async def declare(
    channel: aiormq.abc.AbstractChannel, exchange: str, consumers: Iterable[Consumer]
) -> None:
    await channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    for consumer in consumers:
        queue = queue_name(exchange, consumer.name)
        await channel.queue_declare(queue, durable=True)
        await channel.queue_declare(dead_queue_name(exchange, consumer.name), durable=True)
        for event_type in sorted(consumer.handles):
            await channel.queue_bind(queue, exchange, routing_key=event_type)


class AmqpOutlet:
    name = "rabbitmq"

    def __init__(self, amqp: Amqp, exchange: str, consumers: list[Consumer]) -> None:
        self.amqp = amqp
        self.exchange = exchange
        self.consumers = consumers
        self._channel: aiormq.abc.AbstractChannel | None = None

    async def ready(self) -> bool:
        if self._channel is not None and not self._channel.is_closed:
            return True
        if not await self.amqp.ensure():
            return False
        try:
            assert self.amqp.connection is not None
            channel = await self.amqp.connection.channel(publisher_confirms=True)
            await declare(channel, self.exchange, self.consumers)
        except Exception as exc:
            log.warning("RabbitMQ: could not open the relay's channel: %s", exc)
            return False
        self._channel = channel
        return True

    async def publish(self, tx: Tx, rows: list[OutboxRow]) -> None:
        channel = self._channel
        assert channel is not None
        # One deadline for the batch, not one timer per message (aiormq's per-call timeout
        # was a tenth of the relay's time).
        confirms = await asyncio.wait_for(
            asyncio.gather(
                *(
                    channel.basic_publish(
                        row.body,
                        exchange=self.exchange,
                        routing_key=row.type,
                        properties=Basic.Properties(
                            content_type="application/json",
                            delivery_mode=2,
                            message_id=str(row.id),
                            message_type=row.type,
                        ),
                    )
                    for row in rows
                ),
                return_exceptions=True,
            ),
            PUBLISH_TIMEOUT,
        )
        failed = [c for c in confirms if not isinstance(c, Basic.Ack)]
        if failed:
            self._channel = None
            raise RuntimeError(f"RabbitMQ did not confirm {len(failed)} of {len(rows)} events")

    def published(self) -> None:
        pass  # RabbitMQ pushes to its consumers itself


class AmqpDelivery:
    __slots__ = ("body", "dead_queue", "message")

    def __init__(self, message: aiormq.abc.DeliveredMessage, dead_queue: str) -> None:
        self.message = message
        self.body = message.body
        self.dead_queue = dead_queue

    async def ack(self) -> None:
        tag = self.message.delivery_tag
        assert tag is not None
        await self.message.channel.basic_ack(tag)

    async def dead(self, error: str, attempts: int) -> None:
        props = self.message.header.properties
        confirm = await self.message.channel.basic_publish(
            self.body,
            routing_key=self.dead_queue,
            properties=Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=props.message_id,
                message_type=props.message_type,
                headers={
                    "x-error": error[:1000],
                    "x-attempts": attempts,
                    "x-queue": self.dead_queue,
                    "x-failed-at": datetime.now(UTC).isoformat(),
                },
            ),
            timeout=10,
        )
        if not isinstance(confirm, Basic.Ack):
            raise RuntimeError("RabbitMQ did not confirm the dead letter")
        await self.ack()


class AmqpSource:
    def __init__(self, amqp: Amqp, exchange: str, consumer: Consumer, prefetch: int) -> None:
        self.amqp = amqp
        self.exchange = exchange
        self.consumer = consumer
        self.queue = queue_name(exchange, consumer.name)
        self.dead_queue = dead_queue_name(exchange, consumer.name)
        self.prefetch = prefetch
        self._channel: aiormq.abc.AbstractChannel | None = None

    async def idle(self) -> bool:
        channel = self._channel
        if channel is None or channel.is_closed:
            return False
        ok = await channel.queue_declare(self.queue, passive=True)
        return ok is not None and ok.message_count == 0

    async def run(self, deliver: Callable[[Delivery], None], room: Callable[[], int]) -> None:
        """Consume until cancelled; after a lost connection, consume again (what was unacked
        on the old channel is redelivered by the broker)."""
        delay = 0.2
        while True:
            channel = None
            try:
                if await self.amqp.ensure():
                    assert self.amqp.connection is not None
                    channel = await self.amqp.connection.channel(publisher_confirms=True)
                    await declare(channel, self.exchange, [self.consumer])
                    await channel.basic_qos(prefetch_count=self.prefetch)

                    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
                        deliver(AmqpDelivery(message, self.dead_queue))

                    await channel.basic_consume(self.queue, on_message, no_ack=False)
                    self._channel = channel
                    delay = 0.2
                    await channel.closing
            except asyncio.CancelledError:
                if channel is not None and not channel.is_closed:
                    await asyncio.shield(_close(channel))
                raise
            except Exception as exc:
                log.warning("%s: RabbitMQ consumer stopped (%s); reconnecting", self.queue, exc)
            self._channel = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _close(channel: aiormq.abc.AbstractChannel) -> None:
    try:
        await asyncio.wait_for(channel.close(), 2)
    except Exception:
        pass


class AmqpDeadLetters:
    """``agora events dead-letters`` / ``replay`` with RabbitMQ: read each dead-letter queue
    with ``basic.get`` (unacked, so closing the channel puts them all back); replaying
    publishes a message back to its consumer's queue with a confirm, then acks it."""

    def __init__(self, amqp: Amqp, exchange: str, consumers: list[Consumer]) -> None:
        self.amqp = amqp
        self.exchange = exchange
        self.consumers = consumers

    def _names(self, consumer: str | None) -> list[str]:
        names = [c.name for c in self.consumers]
        if consumer is not None:
            if consumer not in names:
                raise ValueError(f"no consumer named {consumer!r} (there are: {', '.join(names)})")
            return [consumer]
        return names

    async def _channel(self) -> aiormq.abc.AbstractChannel:
        if not await self.amqp.ensure():
            raise ConnectionError("RabbitMQ is not reachable")
        assert self.amqp.connection is not None
        channel = await self.amqp.connection.channel(publisher_confirms=True)
        await declare(channel, self.exchange, self.consumers)
        return channel

    async def _drain(
        self, channel: aiormq.abc.AbstractChannel, name: str
    ) -> list[aiormq.abc.DeliveredMessage]:
        out: list[aiormq.abc.DeliveredMessage] = []
        while True:
            message = await channel.basic_get(dead_queue_name(self.exchange, name), no_ack=False)
            if not isinstance(message.delivery, Basic.GetOk):
                return out
            out.append(message)

    async def depths(self) -> dict[str, int]:
        channel = await self._channel()
        try:
            out = {}
            for name in self._names(None):
                ok = await channel.queue_declare(dead_queue_name(self.exchange, name), passive=True)
                out[name] = ok.message_count if ok is not None and ok.message_count else 0
            return out
        finally:
            await _close(channel)

    async def waiting(self, consumer: str | None) -> list[DeadLetter]:
        channel = await self._channel()
        found: list[DeadLetter] = []
        try:
            for name in self._names(consumer):
                for message in await self._drain(channel, name):
                    found.append(_dead_letter(name, message))
        finally:
            await _close(channel)  # unacked: they all go back to their queues
        return found

    async def replay(self, consumer: str | None, event_ids: list[int] | None) -> int:
        channel = await self._channel()
        replayed = 0
        try:
            for name in self._names(consumer):
                for message in await self._drain(channel, name):
                    letter = _dead_letter(name, message)
                    if event_ids is not None and letter.event_id not in event_ids:
                        continue
                    confirm = await channel.basic_publish(
                        message.body,
                        routing_key=queue_name(self.exchange, name),
                        properties=Basic.Properties(
                            content_type="application/json",
                            delivery_mode=2,
                            message_id=message.header.properties.message_id,
                            message_type=message.header.properties.message_type,
                        ),
                    )
                    if not isinstance(confirm, Basic.Ack):
                        raise RuntimeError("RabbitMQ did not confirm a replayed event")
                    tag = message.delivery_tag
                    assert tag is not None
                    await channel.basic_ack(tag)
                    replayed += 1
        finally:
            await _close(channel)
        return replayed


def _dead_letter(consumer: str, message: aiormq.abc.DeliveredMessage) -> DeadLetter:
    props = message.header.properties
    headers = props.headers or {}
    try:
        event_id = int(props.message_id or 0)
    except ValueError:
        event_id = 0
    failed_at = headers.get("x-failed-at")
    return DeadLetter(
        id=message.delivery_tag or 0,
        consumer=consumer,
        event_id=event_id,
        type=props.message_type or "?",
        body=message.body,
        error=str(headers.get("x-error", "")),
        attempts=attempts if isinstance(attempts := headers.get("x-attempts"), int) else 0,
        failed_at=datetime.fromisoformat(failed_at) if isinstance(failed_at, str) else None,
    )
