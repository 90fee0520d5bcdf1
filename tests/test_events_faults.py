"""Faults around the event layer: the broker cut (through a TCP proxy), a relaying worker
killed with SIGKILL, and the ``agora worker`` / ``agora events`` commands as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiormq
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.config import Config
from agora.events.relay import BATCH, LANES
from agora.server import keys
from agora.server.app import create_app
from tests.conftest import AppFactory
from tests.support.api import create_post, register
from tests.support.events import Recorder, amqp_namespace, require_amqp, settled
from tests.support.proxy import TCPProxy
from tests.support.services import ServiceSet
from tests.test_events import RECORDER, TYPES, aggregate, texts, write

pytestmark = pytest.mark.timeout(120)


async def proxy_amqp(url: str) -> tuple[TCPProxy, str]:
    parts = urlsplit(url)
    proxy = await TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
    netloc = f"{parts.username or 'guest'}:{parts.password or 'guest'}@127.0.0.1:{proxy.port}"
    return proxy, urlunsplit(parts._replace(netloc=netloc))


async def test_with_the_broker_cut_writes_succeed_events_wait_then_all_flow_in_order(
    make_client: AppFactory, config: Config, services: ServiceSet
) -> None:
    url = require_amqp(services)
    proxy, proxied = await proxy_amqp(url)
    rec = Recorder(RECORDER, TYPES | {"post.created"})
    try:
        async with amqp_namespace(url) as exchange:
            events = replace(config.events, exchange=exchange, retry_backoff=0.05)
            client: TestClient = await make_client(
                create_app(config.with_overrides(amqp_url=proxied, events=events), consumers=[rec])
            )
            db = client.app[keys.DB]
            post_id = aggregate()
            await write(db, post_id, "0")
            await settled(client)

            proxy.cut()
            user = await register(client)
            for i in range(1, 40):
                await write(db, post_id, str(i))  # every write commits while the broker is away
            made = await create_post(client, user, "written while RabbitMQ was cut")
            assert made["id"]
            await asyncio.sleep(2.5)  # the relay tries, fails, and waits
            assert texts(rec, post_id) == ["0"]
            resp = await client.get("/readyz")
            assert resp.status == 503
            waiting = (await resp.json())["checks"]["events"]
            assert waiting["status"] == "waiting" and waiting["unsent"] >= 40
            metrics = await (await client.get("/metrics")).text()
            assert "agora_events_broker_up 0.0" in metrics
            backlog = [
                line for line in metrics.splitlines() if line.startswith("agora_outbox_backlog ")
            ]
            assert backlog and float(backlog[0].split()[1]) >= 40
            oldest = [
                line
                for line in metrics.splitlines()
                if line.startswith("agora_outbox_oldest_unsent_age_seconds ")
            ]
            assert oldest and float(oldest[0].split()[1]) > 1.0  # waiting since before the sleep

            proxy.restore()
            await settled(client, timeout=30)
            assert texts(rec, post_id) == [str(i) for i in range(40)]
            created = [
                e
                for e in rec.seen
                if e.type == "post.created" and str(e.aggregate_id) == made["id"]
            ]
            assert len(created) == 1
            assert (await client.get("/readyz")).status == 200
    finally:
        await proxy.close()


# -- processes -------------------------------------------------------------------------------


def worker_env(config: Config, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    assert config.database.url and config.redis.url
    return {
        **clean,
        "AGORA_ENV": "test",
        "AGORA_DATABASE_URL": config.database.url,
        "AGORA_REDIS_URL": config.redis.url,
        "AGORA_REDIS_PREFIX": config.redis.prefix,
        "AGORA_EVENTS_EXCHANGE": config.events.exchange,
        **extra,
    }


def agora(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agora", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_worker(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agora", "worker"],
        env=env,
        cwd=cwd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_a_relay_killed_mid_batch_loses_nothing_and_repeats_nothing_it_had_confirmed(
    config: Config, services: ServiceSet, database_url: str, tmp_path: Path
) -> None:
    url = require_amqp(services)
    total = 30_000
    async with amqp_namespace(url) as exchange:
        cfg = config.with_overrides(events=replace(config.events, exchange=exchange))
        env = worker_env(cfg, AGORA_AMQP_URL=url)
        # A queue of our own bound to every event type: what the relays publish lands there.
        conn = await aiormq.connect(url)
        channel = await conn.channel()
        await channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
        tap = f"{exchange}.tap"
        await channel.queue_declare(tap, durable=True)
        await channel.queue_bind(tap, exchange, routing_key="#")

        pg = await asyncpg.connect(database_url)
        try:
            # Whatever earlier tests left unsent goes out with ours: count it in.
            base = aggregate()
            await pg.execute(
                "INSERT INTO events.outbox (type, aggregate, aggregate_id, actor_id, payload) "
                "SELECT 'post.updated', 'post', $1::bigint + (i % 64), 1, jsonb_build_object("
                "'post_id', $1::bigint + (i % 64), 'author_id', 1, 'text', i::text, "
                "'visibility', 'public') FROM generate_series(1, $2) i",
                base,
                total,
            )
            ours = {
                r["id"]
                for r in await pg.fetch(
                    "SELECT id FROM events.outbox WHERE aggregate_id BETWEEN $1::bigint AND $1::bigint + 63",
                    base,
                )
            }
            assert len(ours) == total

            first = start_worker(env, tmp_path, tmp_path / "worker-1.log")
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    sent = await pg.fetchval(
                        "SELECT count(*) FROM events.outbox WHERE sent_at IS NOT NULL "
                        "AND aggregate_id BETWEEN $1::bigint AND $1::bigint + 63",
                        base,
                    )
                    if sent >= total // 4:
                        break
                    await asyncio.sleep(0.01)
                first.send_signal(signal.SIGKILL)
            finally:
                first.wait(10)
            confirmed_before_kill = {
                r["id"]
                for r in await pg.fetch(
                    "SELECT id FROM events.outbox WHERE sent_at IS NOT NULL "
                    "AND aggregate_id BETWEEN $1::bigint AND $1::bigint + 63",
                    base,
                )
            }
            assert 0 < len(confirmed_before_kill) < total, "the kill must land mid-relay"

            second = start_worker(env, tmp_path, tmp_path / "worker-2.log")
            try:
                deadline = time.monotonic() + 60
                while await pg.fetchval(
                    "SELECT count(*) FROM events.outbox WHERE sent_at IS NULL "
                    "AND aggregate_id BETWEEN $1::bigint AND $1::bigint + 63",
                    base,
                ):
                    assert time.monotonic() < deadline, (tmp_path / "worker-2.log").read_text()
                    await asyncio.sleep(0.05)
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(15) == 0
        finally:
            await pg.close()

        published: Counter[int] = Counter()
        while True:
            message = await channel.basic_get(tap, no_ack=True)
            if message.delivery_tag is None:
                break
            published[int(message.header.properties.message_id or 0)] += 1
        await channel.queue_delete(tap)
        await conn.close()

        assert ours <= set(published), "every committed event was published"
        repeated = {event_id for event_id, n in published.items() if n > 1}
        # Only the batches in flight at the kill (one per lane) can come twice; nothing marked
        # sent does.
        assert not repeated & confirmed_before_kill
        assert len(repeated & ours) <= LANES * BATCH


def test_worker_refuses_embedded_defaults(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    done = agora(clean, "worker", cwd=tmp_path)
    assert done.returncode == 2
    assert "AGORA_DATABASE_URL" in done.stderr


async def test_dead_letter_commands_list_and_replay(
    config: Config, database_url: str, tmp_path: Path
) -> None:
    env = worker_env(config)
    pg = await asyncpg.connect(database_url)
    try:
        event_id = aggregate()
        body = json.dumps({"id": event_id, "type": "post.updated"}).encode()
        await pg.execute(
            "INSERT INTO events.dead_letters (consumer, event_id, type, body, error, attempts) "
            "VALUES ('clitest', $1, 'post.updated', $2, 'RuntimeError: boom', 5)",
            event_id,
            body,
        )
        listed = await asyncio.to_thread(
            agora, env, "events", "dead-letters", "--consumer", "clitest", cwd=tmp_path
        )
        assert listed.returncode == 0, listed.stderr
        (line,) = listed.stdout.splitlines()
        letter = json.loads(line)
        assert letter["event_id"] == event_id and letter["error"] == "RuntimeError: boom"
        assert letter["attempts"] == 5 and letter["type"] == "post.updated"

        replayed = await asyncio.to_thread(
            agora,
            env,
            "events",
            "replay",
            "--consumer",
            "clitest",
            "--event-id",
            str(event_id),
            cwd=tmp_path,
        )
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed 1 event(s)" in replayed.stdout
        assert (
            await pg.fetchval(
                "SELECT count(*) FROM events.deliveries WHERE consumer = 'clitest' AND event_id = $1",
                event_id,
            )
            == 1
        )
        assert not await pg.fetchval(
            "SELECT count(*) FROM events.dead_letters WHERE consumer = 'clitest'"
        )
        await pg.execute("DELETE FROM events.deliveries WHERE consumer = 'clitest'")
    finally:
        await pg.close()
