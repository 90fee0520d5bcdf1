"""The event layer: outbox -> relay -> queue -> runner -> consumer, on both transports.

Every test runs twice: in process (the queues in PostgreSQL) and through the machine's
RabbitMQ, each RabbitMQ test in an exchange and queues of its own.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.config import Config, EventsConfig
from agora.events.types import PostUpdated, decode_event
from agora.server import keys
from agora.server.app import create_app
from agora.storage.db import Database
from agora.storage.events import append
from tests.conftest import AppFactory
from tests.support.events import Recorder, redeliver, settled

pytestmark = pytest.mark.timeout(90)

TYPES = frozenset({"post.created", "post.updated"})


@pytest.fixture
def bus_config(transport: Config) -> Config:
    """Each transport, with fast retries."""
    return transport.with_overrides(
        events=replace(transport.events, retry_backoff=0.05, max_attempts=3)
    )


RECORDER = "recorder"


def recorder() -> Recorder:
    return Recorder(RECORDER, TYPES)


async def node(make_client: AppFactory, config: Config, *consumers: Any) -> TestClient:
    return await make_client(create_app(config, consumers=list(consumers)))


def aggregate() -> int:
    """A fresh aggregate id (nothing else in the session uses it)."""
    return secrets.randbelow(2**40) + 2**41


async def write(db: Database, post_id: int, text: str, *, rollback: bool = False) -> None:
    """One change's event in its own transaction (rolled back on request)."""

    class Rollback(Exception):
        pass

    try:
        async with db.transaction("test_write") as tx:
            await append(
                tx,
                PostUpdated(post_id=post_id, author_id=1, text=text, visibility="public"),
                actor_id=1,
            )
            if rollback:
                raise Rollback
    except Rollback:
        pass


def texts(rec: Recorder, post_id: int) -> list[str]:
    by_id = {e.id: e for e in rec.seen}
    out = []
    for event_id in rec.effects:
        payload = by_id[event_id].payload
        if isinstance(payload, PostUpdated) and payload.post_id == post_id:
            out.append(payload.text)
    return out


async def test_committed_events_reach_the_consumer_once_in_commit_order(
    make_client: AppFactory, bus_config: Config
) -> None:
    rec = recorder()
    client = await node(make_client, bus_config, rec)
    db = client.app[keys.DB]
    posts = [aggregate() for _ in range(4)]

    async def writer(post_id: int) -> None:
        for i in range(30):
            await write(db, post_id, f"{i}", rollback=(i % 10 == 9))

    await asyncio.gather(*(writer(p) for p in posts))
    await settled(client)
    for post_id in posts:
        # Rolled-back changes (9, 19, 29) left no event; the rest arrived once, in order.
        assert texts(rec, post_id) == [str(i) for i in range(30) if i % 10 != 9]
    assert len(rec.effects) == len(set(rec.effects))


async def test_a_poison_event_goes_to_the_dead_letters_and_the_rest_flow(
    make_client: AppFactory, bus_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    rec = recorder()
    client = await node(make_client, bus_config, rec)
    db, bus = client.app[keys.DB], client.app[keys.EVENTS]
    post_id = aggregate()
    await write(db, post_id, "before")
    await settled(client)

    # The next event of this post will fail every time.
    original = rec.handle

    async def poisoned(events: list[Any], tx: Any) -> Any:
        for e in events:
            if isinstance(e.payload, PostUpdated) and e.payload.text == "poison":
                rec.poison.add(e.id)
        return await original(events, tx)

    rec.handle = poisoned  # type: ignore[method-assign]
    for text in ("poison", "after-1", "after-2"):
        await write(db, post_id, text)
    await settled(client)
    assert texts(rec, post_id) == ["before", "after-1", "after-2"]
    (poison_id,) = rec.poison
    assert rec.attempts[poison_id] == 3  # AGORA_EVENTS_MAX_ATTEMPTS

    letters = [d for d in await bus.dead_letters.waiting(None) if d.event_id == poison_id]
    assert len(letters) == 1
    assert letters[0].consumer == RECORDER and letters[0].type == "post.updated"
    assert "poison" in letters[0].error and letters[0].attempts == 3
    assert decode_event(letters[0].body).id == poison_id
    # Listing leaves them where they are.
    assert [d.event_id for d in await bus.dead_letters.waiting(RECORDER)] == [poison_id]
    # One log line with its id and error; the queue's depth in the metrics.
    (line,) = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert str(poison_id) in line and "RuntimeError: poison" in line
    await bus.observe()
    metrics = await (await client.get("/metrics")).text()
    assert 'agora_events_dead_letters{consumer="recorder"} 1.0' in metrics
    assert 'agora_events_dead_lettered_total{consumer="recorder"} 1.0' in metrics
    assert 'agora_event_consumer_failures_total{consumer="recorder"} 3.0' in metrics

    # Fixed: replay puts it back, and it is handled.
    rec.poison.clear()
    rec.handle = original  # type: ignore[method-assign]
    assert await bus.dead_letters.replay(RECORDER, [poison_id]) == 1
    await settled(client)
    assert texts(rec, post_id) == ["before", "after-1", "after-2", "poison"]
    assert await bus.dead_letters.waiting(RECORDER) == []


async def test_a_flaky_event_is_retried_and_handled_once(
    make_client: AppFactory, bus_config: Config
) -> None:
    rec = recorder()
    client = await node(make_client, bus_config, rec)
    db = client.app[keys.DB]
    post_id = aggregate()
    original = rec.handle

    async def flaky(events: list[Any], tx: Any) -> Any:
        for e in events:
            if e.id not in rec.attempts:
                rec.flaky[e.id] = 2  # fails twice, then works
        return await original(events, tx)

    rec.handle = flaky  # type: ignore[method-assign]
    await write(db, post_id, "x")
    await settled(client)
    assert texts(rec, post_id) == ["x"]
    assert list(rec.attempts.values()) == [3]
    assert await client.app[keys.EVENTS].dead_letters.waiting(RECORDER) == []


async def test_the_same_event_delivered_twice_has_one_effect(
    make_client: AppFactory, bus_config: Config, database_url: str
) -> None:
    rec = recorder()
    client = await node(make_client, bus_config, rec)
    db = client.app[keys.DB]
    post_id = aggregate()
    await write(db, post_id, "once")
    await settled(client)
    (event,) = [e for e in rec.seen if getattr(e.payload, "post_id", None) == post_id]

    await redeliver(bus_config, database_url, RECORDER, event.id)
    await settled(client)
    assert texts(rec, post_id) == ["once"]
    metrics = await (await client.get("/metrics")).text()
    assert 'agora_events_duplicates_total{consumer="recorder"} 1.0' in metrics


async def test_two_relays_publish_every_event_once_and_each_aggregate_in_order(
    make_client: AppFactory, bus_config: Config
) -> None:
    # Both nodes relay; only a consumes, so what it sees is the order of publication.
    rec = recorder()
    a = await node(make_client, bus_config, rec)
    quiet = bus_config.with_overrides(events=replace(bus_config.events, consumers=False))
    b = await node(make_client, quiet, recorder())  # bound, never consumed here
    assert b.app[keys.EVENTS].runners == [] and b.app[keys.EVENTS].relay is not None
    posts = [aggregate() for _ in range(8)]

    async def writer(db: Database, post_id: int) -> None:
        for i in range(25):
            await write(db, post_id, f"{i}")

    await asyncio.gather(
        *(writer(a.app[keys.DB] if i % 2 else b.app[keys.DB], p) for i, p in enumerate(posts))
    )
    await settled(a, b)
    for post_id in posts:
        assert texts(rec, post_id) == [str(i) for i in range(25)]
    published = a.app[keys.EVENTS].relay.relayed + b.app[keys.EVENTS].relay.relayed  # type: ignore[union-attr]
    assert published >= 8 * 25
    metrics = await (await a.get("/metrics")).text()
    assert "agora_events_duplicates_total{" not in metrics  # no event reached it twice


async def test_a_consumer_stopped_mid_event_loses_nothing(
    make_client: AppFactory, bus_config: Config
) -> None:
    # The lease stays at its default (120 s, past the settle timeout): the event comes back
    # at once because RabbitMQ redelivers what was unacked, or, in process, because the
    # stopping source gives back what it had leased.
    bus_config = bus_config.with_overrides(
        events=replace(bus_config.events, lease=EventsConfig().lease)
    )
    rec = recorder()
    rec.gate = asyncio.Event()  # handle() blocks: the runner stops mid-event
    first = await node(make_client, bus_config, rec)
    post_id = aggregate()
    await write(first.app[keys.DB], post_id, "mid")
    await asyncio.wait_for(rec.entered.wait(), 10)
    (runner,) = [r for r in first.app[keys.EVENTS].runners if r.name == RECORDER]
    await runner.stop()  # nothing acked, nothing committed
    assert texts(rec, post_id) == []

    again = recorder()
    second = await node(make_client, bus_config, again)
    await settled(second)
    assert texts(again, post_id) == ["mid"]


async def test_an_event_leased_by_a_dead_process_comes_back_when_its_lease_runs_out(
    make_client: AppFactory, config: Config, database_url: str
) -> None:
    # In process only (RabbitMQ's redelivery is the test above): a process that took an
    # event and died without a word leaves its lease behind, and nobody else takes the
    # event before the lease runs out.
    quiet = config.with_overrides(events=replace(config.events, consumers=False))
    writer = await node(make_client, quiet, recorder())  # relays into the recorder's queue
    post_id = aggregate()
    await write(writer.app[keys.DB], post_id, "orphan")
    await settled(writer)
    conn = await asyncpg.connect(database_url)
    try:
        taken = await conn.execute(
            "UPDATE events.deliveries SET leased_until = now() + interval '2 seconds' "
            "WHERE consumer = $1",
            RECORDER,
        )
        assert taken != "UPDATE 0"
    finally:
        await conn.close()
    rec = recorder()
    await node(make_client, config, rec)
    await asyncio.sleep(1.0)
    assert texts(rec, post_id) == []  # still leased by the dead one
    await asyncio.sleep(1.5)  # the lease runs out; the next poll (2 s) or wake-up takes it
    for _ in range(100):
        if texts(rec, post_id):
            break
        await asyncio.sleep(0.05)
    assert texts(rec, post_id) == ["orphan"]


async def test_commits_wake_the_relay_and_queues_without_polling(
    make_client: AppFactory, bus_config: Config
) -> None:
    # Nobody polls for an hour: only LISTEN/NOTIFY can bring the event through.
    slow = bus_config.with_overrides(events=replace(bus_config.events, poll=3600.0))
    rec = recorder()
    client = await node(make_client, slow, rec)
    await asyncio.sleep(0.3)  # past the first look every loop takes when it starts
    post_id = aggregate()
    await write(client.app[keys.DB], post_id, "woken")
    await settled(client, timeout=10)
    assert texts(rec, post_id) == ["woken"]
    metrics = await (await client.get("/metrics")).text()
    assert 'agora_event_lag_seconds_count{consumer="recorder"}' in metrics


async def test_sent_events_and_handled_records_are_purged_after_the_retention(
    make_client: AppFactory, bus_config: Config, database_url: str
) -> None:
    rec = recorder()
    client = await node(make_client, bus_config, rec)
    post_id = aggregate()
    await write(client.app[keys.DB], post_id, "old")
    await settled(client)
    (event,) = [e for e in rec.seen if getattr(e.payload, "post_id", None) == post_id]
    conn = await asyncpg.connect(database_url)
    try:
        bus = client.app[keys.EVENTS]
        await bus.purge_once()  # within the retention: kept
        assert await conn.fetchval("SELECT count(*) FROM events.outbox WHERE id = $1", event.id)
        await conn.execute(
            "UPDATE events.outbox SET sent_at = now() - interval '8 days' WHERE id = $1", event.id
        )
        await conn.execute(
            "UPDATE events.processed SET processed_at = now() - interval '8 days' "
            "WHERE event_id = $1",
            event.id,
        )
        assert await bus.purge_once() >= 2
        assert not await conn.fetchval("SELECT count(*) FROM events.outbox WHERE id = $1", event.id)
        assert not await conn.fetchval(
            "SELECT count(*) FROM events.processed WHERE event_id = $1", event.id
        )
    finally:
        await conn.close()


async def test_a_process_without_a_relay_wakes_the_others_after_its_commits(
    make_client: AppFactory, bus_config: Config
) -> None:
    # a writes but relays and consumes nothing; b relays and consumes, and never polls.
    rec = recorder()
    mute = replace(bus_config.events, relay=False, consumers=False, poll=3600.0)
    a = await node(make_client, bus_config.with_overrides(events=mute), recorder())
    deaf = replace(bus_config.events, poll=3600.0)
    b = await node(make_client, bus_config.with_overrides(events=deaf), rec)
    assert a.app[keys.EVENTS].relay is None
    await asyncio.sleep(0.3)  # past each loop's first look
    post_id = aggregate()
    await write(a.app[keys.DB], post_id, "from a")
    await settled(b, timeout=10)
    assert texts(rec, post_id) == ["from a"]


async def test_a_consumers_effect_is_on_disk_before_a_rabbitmq_ack(
    make_client: AppFactory, bus_config: Config
) -> None:
    # The bus commits asynchronously (what it writes is redone after a crash), except a
    # consumer's transaction when its queue is RabbitMQ: that broker forgets what is acked.
    rec = recorder()
    client = await node(make_client, bus_config, rec)
    await write(client.app[keys.DB], aggregate(), "x")
    await settled(client)
    assert rec.commit_mode == ("on" if bus_config.amqp_url else "off")


async def test_a_relay_stopped_in_the_turn_it_is_woken_still_stops(
    make_client: AppFactory, bus_config: Config
) -> None:
    # `agora worker` hung on a SIGTERM right after starting: its relay was woken (by the LISTEN
    # connection coming up) in the same loop turn as the stop's cancel, and asyncio.wait_for on
    # Python 3.11 then returned instead of raising, so the relay never ended.
    client = await node(make_client, bus_config, recorder())
    await settled(client)
    relay = client.app[keys.EVENTS].relay
    assert relay is not None
    for _ in range(5):
        await asyncio.sleep(0.3)  # idle: waiting to be woken
        relay.wake()
        await asyncio.wait_for(relay.stop(), 10)
        relay.start()


async def test_drains_start_at_most_once_per_gather_window(
    make_client: AppFactory, bus_config: Config
) -> None:
    # Under load the relay waits for the window to pass, so the commits of a busy moment share
    # one drain (and each consumer one batch) instead of a drain every few milliseconds.
    gathered = bus_config.with_overrides(events=replace(bus_config.events, gather=0.4))
    rec = recorder()
    client = await node(make_client, gathered, rec)
    await settled(client)
    relay = client.app[keys.EVENTS].relay
    assert relay is not None
    await asyncio.sleep(0.5)  # past the window of the start-up drain
    db = client.app[keys.DB]
    post_id = aggregate()
    before = relay.drains
    started = asyncio.get_running_loop().time()
    for i in range(12):
        await write(db, post_id, f"{i}")
        await asyncio.sleep(0.05)
    await settled(client)
    elapsed = asyncio.get_running_loop().time() - started
    assert texts(rec, post_id) == [f"{i}" for i in range(12)]
    # 12 commits over ~0.6 s: one drain per 0.4 s window (plus the one the settle may trigger),
    # where the default window would have drained about once per commit.
    assert relay.drains - before <= elapsed / 0.4 + 2


async def test_the_churning_tables_are_vacuumed_by_one_node_at_a_time(
    make_client: AppFactory, bus_config: Config, database_url: str
) -> None:
    from agora.events.bus import CHURNING_TABLES, VACUUM_LOCK

    client = await node(make_client, bus_config, recorder())
    bus = client.app[keys.EVENTS]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.fetchval("SELECT pg_advisory_lock($1)", VACUUM_LOCK)  # another node at it
        assert await bus.vacuum_once() is False
        await conn.fetchval("SELECT pg_advisory_unlock($1)", VACUUM_LOCK)
        before = await conn.fetchval("SELECT now()")
        assert await bus.vacuum_once() is True
        for table in CHURNING_TABLES:
            schema, name = table.split(".")
            last = await conn.fetchval(
                "SELECT last_vacuum FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
                schema,
                name,
            )
            assert last is not None and last >= before, table
    finally:
        await conn.close()
