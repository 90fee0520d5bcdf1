"""Waiting for the event layer in tests, a RabbitMQ namespace per test, a recording consumer, and
events made by hand."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import aiormq
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pamqp.commands import Basic

from agora.config import Config
from agora.events.consumer import AfterCommit
from agora.events.types import Event, Payload
from agora.server import keys
from agora.storage.db import Tx
from agora.storage.events import EVENT_COLUMNS, envelope
from tests.support.services import ServiceSet


async def settled(*clients: TestClient, timeout: float = 30.0) -> None:
    """Wait until every event committed so far has been relayed and handled by the consumers
    of these nodes (each polled in turn)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        states = [await c.app[keys.EVENTS].settled() for c in clients]
        if all(states):
            return
        if asyncio.get_running_loop().time() > deadline:
            detail = []
            for c in clients:
                bus = c.app[keys.EVENTS]
                detail.append(
                    {
                        "backlog": await bus.store.backlog(),
                        "queues": await bus.store.queue_depths(),
                        "runners": {r.name: (r.busy, r.handled) for r in bus.runners},
                        "deliveries": [
                            dict(r)
                            for r in await bus.db.fetch(
                                "debug",
                                "SELECT id, consumer, event_id, leased_until, now() AS now "
                                "FROM events.deliveries LIMIT 5",
                            )
                        ],
                    }
                )
            raise AssertionError(f"events did not settle within {timeout}s: {detail}")
        await asyncio.sleep(0.02)


def require_amqp(services: ServiceSet) -> str:
    """The machine's RabbitMQ URL. RabbitMQ has no embedded form, so on a machine without one
    (a new user's) the test is skipped, saying so; CI sets AGORA_TEST_AMQP_REQUIRED=1
    (.ci/run), where a missing broker fails the test instead."""
    if services.amqp_url is None:
        reason = f"no RabbitMQ answers at {services.amqp_probe} (it has no embedded form)"
        if os.environ.get("AGORA_TEST_AMQP_REQUIRED") == "1":
            pytest.fail(reason + " and AGORA_TEST_AMQP_REQUIRED=1")
        pytest.skip(reason)
    return services.amqp_url


def exchange_name() -> str:
    """A fresh exchange (and so fresh queue names) for one test on the shared broker."""
    return f"agoratest{secrets.token_hex(4)}.events"


# Consumers whose queues a test namespace may hold (Agora's own and the tests' recorder).
CONSUMERS = ("notifications", "search", "stats", "recorder")


async def delete_namespace(url: str, exchange: str) -> None:
    connection = await aiormq.connect(url)
    channel = await connection.channel()
    for name in CONSUMERS:
        await channel.queue_delete(f"{exchange}.{name}")
        await channel.queue_delete(f"{exchange}.{name}.dead")
    await channel.exchange_delete(exchange)
    await connection.close()


@asynccontextmanager
async def amqp_namespace(url: str) -> AsyncIterator[str]:
    """An exchange name for this test; its exchange and queues are deleted afterwards."""
    exchange = exchange_name()
    try:
        yield exchange
    finally:
        await delete_namespace(url, exchange)


async def redeliver(config: Config, database_url: str, consumer: str, event_id: int) -> None:
    """Deliver a relayed event to ``consumer`` once more, as a relay that died between the
    broker's confirm and its own commit would."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM events.outbox WHERE id = $1 AND sent_at IS NOT NULL",
            event_id,
        )
        assert row is not None, "not relayed yet"
        body = envelope(row)
        if config.amqp_url is None:
            await conn.execute(
                "INSERT INTO events.deliveries (consumer, event_id, body) VALUES ($1, $2, $3)",
                consumer,
                event_id,
                body,
            )
            return
    finally:
        await conn.close()
    amqp = await aiormq.connect(config.amqp_url)
    channel = await amqp.channel()
    await channel.basic_publish(
        body,
        routing_key=f"{config.events.exchange}.{consumer}",
        properties=Basic.Properties(delivery_mode=2, message_id=str(event_id)),
    )
    await amqp.close()


class Recorder:
    """A consumer that records what it handled (in order) and fails on demand: ``poison``
    event ids fail every time, ``flaky`` ids fail that many times first."""

    def __init__(self, name: str, handles: frozenset[str]) -> None:
        self.name = name
        self.handles = handles
        self.seen: list[Event] = []
        self.effects: list[int] = []  # event ids whose effect committed
        self.poison: set[int] = set()
        self.flaky: dict[int, int] = {}
        self.attempts: dict[int, int] = {}
        self.gate: asyncio.Event | None = None  # when set, handle() waits on it (a slow event)
        self.commit_mode: str | None = None  # synchronous_commit inside the last transaction
        self.entered = asyncio.Event()

    async def handle(self, events: list[Event], tx: Tx) -> AfterCommit | None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        for event in events:
            self.attempts[event.id] = self.attempts.get(event.id, 0) + 1
            if event.id in self.poison:
                raise RuntimeError(f"poison {event.id}")
            if self.flaky.get(event.id, 0) > 0:
                self.flaky[event.id] -= 1
                raise RuntimeError(f"flaky {event.id}")
        self.commit_mode = await tx.fetchval("recorder_probe", "SHOW synchronous_commit")
        self.seen.extend(events)
        committed = [e.id for e in events]

        async def after() -> None:
            self.effects.extend(committed)

        return after


class EventMaker:
    """Events made by hand, for a consumer's ``handle`` or the indexer's functions: ids count
    up from ``first_id``; ``occurred_at`` is the call's ``at``, else ``at`` given here, else
    the time of the call."""

    def __init__(self, first_id: int = 1, at: datetime | None = None) -> None:
        self._ids = itertools.count(first_id)
        self._at = at

    def __call__(self, payload: Payload, at: datetime | None = None) -> Event:
        return Event(
            id=next(self._ids),
            type=payload.type,
            aggregate=payload.aggregate,
            aggregate_id=payload.aggregate_id(),
            actor_id=None,
            occurred_at=at or self._at or datetime.now(UTC),
            version=1,
            payload=payload,
        )
