"""``agora worker``: the outbox relay and every event consumer, without serving HTTP.

A deployment scales consumers apart from the WebSocket nodes by running workers and setting
``AGORA_EVENTS_CONSUMERS=off`` on the nodes. A worker is not a cluster node (it owns no
conversation and holds no session); its consumers reach users' sessions by appending to the
inboxes of the nodes that hold them (:class:`agora.cluster.reach.StandaloneReach`).
Also ``agora events dead-letters`` and ``agora events replay``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry

from agora.clock import Clock
from agora.cluster.reach import StandaloneReach
from agora.config import Config, redact
from agora.events.bus import EventBus
from agora.events.metrics import EventMetrics
from agora.server.amqp import Amqp
from agora.storage import redis as redis_store
from agora.storage.db import Database
from agora.storage.migrations import migrate

log = logging.getLogger("agora.worker")


def needs_services(config: Config) -> str | None:
    """Why this config cannot run a worker, or None."""
    if config.database.embedded or config.redis.embedded:
        return (
            "agora worker needs AGORA_DATABASE_URL and AGORA_REDIS_URL (with the embedded "
            "defaults, the node runs its event consumers itself)"
        )
    return None


@asynccontextmanager
async def event_bus(config: Config, *, relay: bool, consume: bool) -> AsyncIterator[EventBus]:
    """A started event bus on this process's own pools; stopped and closed on exit."""
    assert config.database.url and config.redis.url
    from agora.server.app import consumers_for

    await migrate(config.database.url)
    db = await Database.connect(
        config.database.url, min_size=1, max_size=config.events.pool, durable_commits=False
    )
    redis = redis_store.connect(config.redis.url)
    amqp = Amqp(config.amqp_url) if config.amqp_url else None
    clock = Clock()
    try:
        if amqp is not None and not await amqp.ensure():
            log.warning("RabbitMQ at %s is not reachable yet", redact(amqp.url))
        reach = StandaloneReach(
            redis, redis_store.Keys(config.redis.prefix), clock, config.cluster.node_timeout
        )
        bus = EventBus(
            config.events,
            db,
            config.database.url,
            amqp,
            consumers_for(config, db, reach),
            clock,
            EventMetrics(CollectorRegistry()),
            relay=relay,
            consume=consume,
        )
        bus.start()
        try:
            yield bus
        finally:
            await bus.stop()
    finally:
        if amqp is not None:
            await amqp.close()
        await redis.aclose()
        await db.close()


async def work(config: Config) -> int:
    async with event_bus(config, relay=config.events.relay, consume=True) as bus:
        log.info(
            "worker %s: events over %s%s, consumers %s",
            config.node_id,
            bus.transport,
            ", relaying the outbox" if bus.relay else "",
            ", ".join(r.name for r in bus.runners) or "none",
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("worker stopping")
    return 0


async def dead_letters(config: Config, consumer: str | None) -> int:
    """Print what waits in the dead-letter queues, one JSON object per line."""
    async with event_bus(config, relay=False, consume=False) as bus:
        try:
            letters = await bus.dead_letters.waiting(consumer)
        except (ValueError, ConnectionError) as exc:
            print(f"agora: {exc}", file=sys.stderr)
            return 1
        for letter in letters:
            print(
                json.dumps(
                    {
                        "consumer": letter.consumer,
                        "event_id": letter.event_id,
                        "type": letter.type,
                        "attempts": letter.attempts,
                        "failed_at": letter.failed_at.isoformat() if letter.failed_at else None,
                        "error": letter.error,
                    }
                )
            )
        print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    return 0


async def replay(config: Config, consumer: str | None, event_ids: list[int] | None) -> int:
    """Put dead letters back in their consumers' queues."""
    async with event_bus(config, relay=False, consume=False) as bus:
        try:
            count = await bus.dead_letters.replay(consumer, event_ids)
        except (ValueError, ConnectionError) as exc:
            print(f"agora: {exc}", file=sys.stderr)
            return 1
    print(f"replayed {count} event(s)")
    return 0
