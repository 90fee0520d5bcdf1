"""Analytics (issue 12, point 6): ``GET /admin/stats`` and ``agora admin stats``.

Each test runs on a database of its own, so the counters it reads are exactly what it seeded.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from agora.clock import Clock, ManualClock
from agora.config import Config
from agora.events.runner import Runner
from agora.events.types import (
    CommentCreated,
    MessageStored,
    PostCreated,
    PostDeleted,
    ReactionRemoved,
    ReactionSet,
    UserRegistered,
)
from agora.server import keys
from agora.server.app import create_app
from agora.services.activity import ActivityTracker
from agora.services.stats import StatsConsumer
from agora.storage import stats as stats_storage
from agora.storage.db import Database
from agora.storage.events import OutboxStore
from agora.storage.migrations import migrate
from agora.storage.redis import Keys
from agora.storage.stats import DayCounts, StatsStore
from tests.conftest import AppFactory
from tests.support.api import (
    User,
    befriend,
    create_post,
    expect_error,
    register,
)
from tests.support.events import EventMaker, redeliver, settled
from tests.support.services import ServiceSet, create_database, drop_database
from tests.support.ws import WsClient

pytestmark = pytest.mark.timeout(120)

STATS = "/api/v1/admin/stats"
ZERO = {"signups": 0, "posts": 0, "comments": 0, "reactions": 0, "messages": 0}


async def _fresh_database(services: ServiceSet) -> tuple[str, str]:
    name = f"agora_stats_{secrets.token_hex(4)}"
    await create_database(services.pg_admin_dsn, name)
    url = services.database_dsn(name)
    await migrate(url)
    return name, url


@pytest.fixture
async def fresh(services: ServiceSet, config: Config) -> AsyncIterator[Config]:
    """The test's config on a database of its own (dropped afterwards)."""
    name, url = await _fresh_database(services)
    yield config.with_overrides(database=replace(config.database, url=url))
    await drop_database(services.pg_admin_dsn, name)


async def make_role(config: Config, user: User, role: str) -> None:
    assert config.database.url
    conn = await asyncpg.connect(config.database.url)
    try:
        await conn.execute("UPDATE accounts.users SET role = $2 WHERE id = $1", int(user.id), role)
    finally:
        await conn.close()


async def admin_of(client: TestClient, config: Config) -> User:
    admin = await register(client)
    await make_role(config, admin, "admin")
    return admin


async def get_stats(client: TestClient, user: User, **params: str) -> dict[str, Any]:
    resp = await client.get(STATS, params=params, headers=user.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


def counters(day: dict[str, Any]) -> dict[str, int]:
    return {k: day[k] for k in ZERO}


async def send(client: TestClient, user: User, cid: str, client_id: str, status: int) -> None:
    resp = await client.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=user.headers,
        json={"text": f"hi {client_id}", "client_id": client_id},
    )
    assert resp.status == status, await resp.text()


async def outbox_ids(config: Config, *types: str) -> list[int]:
    assert config.database.url
    conn = await asyncpg.connect(config.database.url)
    try:
        rows = await conn.fetch(
            "SELECT id FROM events.outbox WHERE type = ANY($1::text[]) ORDER BY id", list(types)
        )
    finally:
        await conn.close()
    return [r["id"] for r in rows]


async def test_stats_match_a_seeded_data_set(
    transport: Config, services: ServiceSet, make_client: AppFactory
) -> None:
    """Seeded through the API and counted by the consumer: exactly what was created today
    (deletions and changed reactions do not count), with every other day of the 30 present
    with zeros; a redelivered event is not counted twice; active users and sessions online."""
    name, url = await _fresh_database(services)
    try:
        config = transport.with_overrides(database=replace(transport.database, url=url))
        client = await make_client(create_app(config))
        before = datetime.now(UTC).date()

        admin = await admin_of(client, config)
        a, b, c = await register(client), await register(client), await register(client)
        await befriend(client, a, b)
        p1 = await create_post(client, a, "one", "public")
        await create_post(client, a, "two", "public")
        p3 = await create_post(client, b, "three", "public")
        comment_ids = []
        for author, text in ((b, "nice"), (b, "again"), (c, "me too")):
            resp = await client.post(
                f"/api/v1/posts/{p1['id']}/comments", headers=author.headers, json={"text": text}
            )
            assert resp.status == 201, await resp.text()
            comment_ids.append((await resp.json())["id"])
        resp = await client.delete(f"/api/v1/comments/{comment_ids[1]}", headers=b.headers)
        assert resp.status == 204  # deleted: still created today
        for user, post, kind in ((b, p1, "like"), (c, p1, "love"), (b, p1, "wow"), (c, p3, "like")):
            resp = await client.put(
                f"/api/v1/posts/{post['id']}/reactions", headers=user.headers, json={"type": kind}
            )
            assert resp.status == 200, await resp.text()  # b's second one is a change
        resp = await client.post(
            "/api/v1/conversations", headers=a.headers, json={"member_ids": [b.id]}
        )
        cid = (await resp.json())["id"]
        await send(client, a, cid, "m1", 201)
        await send(client, a, cid, "m2", 201)
        await send(client, b, cid, "m3", 201)
        await send(client, a, cid, "m1", 200)  # a resend: no new message
        resp = await client.get("/api/v1/users/me", headers=admin.headers)
        assert resp.status == 200

        wa1, wa2 = (
            await WsClient.connect(client, a.access),
            await WsClient.connect(client, a.access),
        )
        wb = await WsClient.connect(client, b.access)
        await settled(client)
        await client.app[keys.ACTIVITY].flush()

        expected = {"signups": 4, "posts": 3, "comments": 3, "reactions": 3, "messages": 3}
        body = await get_stats(client, admin)
        today = datetime.now(UTC).date()
        if today != before:
            pytest.skip("the UTC day changed while the test ran")
        assert body["from"] == (today - timedelta(days=29)).isoformat()
        assert body["to"] == today.isoformat()
        days = body["days"]
        assert [d["day"] for d in days] == [
            (today - timedelta(days=29 - n)).isoformat() for n in range(30)
        ]
        assert counters(days[-1]) == expected
        assert all(counters(d) == ZERO for d in days[:-1])
        assert all(d["dau"] == 0 for d in days[:-1])
        assert body["totals"] == expected
        assert days[-1]["dau"] == 4  # admin, a, b, c (c only reacted and commented)
        assert body["wau"] == 4 and body["mau"] == 4
        assert body["online_sessions"] == 3 and body["online_users"] == 2

        # The relay or a broker delivers some events again: they are not counted twice.
        repeats = await outbox_ids(config, "user.registered", "post.created", "message.stored")
        for event_id in repeats:
            await redeliver(config, url, "stats", event_id)
        duplicates = f'agora_events_duplicates_total{{consumer="stats"}} {len(repeats)}.0'
        for _ in range(500):  # each repeat arrives and is dropped as handled before
            await settled(client)
            if duplicates in await (await client.get("/metrics")).text():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the repeated events were not delivered")
        body = await get_stats(client, admin, **{"from": today.isoformat()})
        assert [counters(d) for d in body["days"]] == [expected]

        for ws in (wa1, wa2, wb):
            await ws.ws.close()
    finally:
        await drop_database(services.pg_admin_dsn, name)


async def test_counts_go_to_the_day_of_the_event_and_once(fresh: Config) -> None:
    """The consumer adds each event to the UTC day it occurred on, in the runner's
    transaction: the same events applied again (a redelivery) change nothing."""
    assert fresh.database.url
    db = await Database.connect(fresh.database.url, min_size=1, max_size=2)
    try:
        consumer = StatsConsumer(StatsStore(db))
        runner = Runner(consumer, None, db, OutboxStore(db), Clock())  # type: ignore[arg-type]
        d1 = datetime(2030, 3, 1, 23, 59, 59, tzinfo=UTC)
        d2 = d1 + timedelta(seconds=2)  # the next UTC day
        make = EventMaker(first_id=10**12)
        events = [
            make(UserRegistered(user_id=1, username="u", display_name="u"), d1),
            make(PostCreated(post_id=2, author_id=1, text="t", visibility="public"), d1),
            make(PostCreated(post_id=3, author_id=1, text="t", visibility="public"), d2),
            make(PostDeleted(post_id=3, author_id=1), d2),  # not subscribed: no decrement
            make(
                CommentCreated(comment_id=4, post_id=2, post_author_id=1, author_id=1, text="c"),
                d2,
            ),
            make(ReactionSet(post_id=2, post_author_id=1, user_id=1, reaction="like"), d1),
            make(
                ReactionSet(
                    post_id=2, post_author_id=1, user_id=1, reaction="love", previous="like"
                ),
                d2,
            ),
            make(ReactionRemoved(post_id=2, post_author_id=1, user_id=1, reaction="love"), d2),
            make(
                MessageStored(
                    conversation_id=5, message_id=6, seq=1, sender_id=1, text="m", created_at=d2
                ),
                # A zone other than UTC: still the UTC day (d2).
                d2.astimezone(__import__("zoneinfo").ZoneInfo("America/Los_Angeles")),
            ),
        ]
        assert PostDeleted.type not in consumer.handles
        assert ReactionRemoved.type not in consumer.handles
        subscribed = [e for e in events if e.type in consumer.handles]
        await runner._apply(subscribed)
        await runner._apply(subscribed)  # redelivered: recorded as handled, so nothing
        await runner._apply(subscribed[1:3])
        rows = await StatsStore(db).days(d1.date() - timedelta(days=1), d2.date())
        assert rows == {
            d1.date(): DayCounts(signups=1, posts=1, reactions=1),
            d2.date(): DayCounts(posts=1, comments=1, messages=1),
        }
        assert runner.handled == len(subscribed)
    finally:
        await db.close()


async def test_active_users_per_day_with_a_manual_clock(
    fresh: Config, make_client: AppFactory
) -> None:
    """Activity lands on the day of the node's clock when it is seen, even when one flush
    carries several days; weekly and monthly figures count a user once; days past the
    retention have no figure."""
    now = datetime.now(UTC)
    start = datetime.combine(now.date() - timedelta(days=10), datetime.min.time(), UTC)
    clock = ManualClock(start=start.timestamp() + 12 * 3600)  # noon, ten days ago
    # Tokens issued now (in the node's past) stay valid while the clock moves for days.
    config = fresh.with_overrides(auth=replace(fresh.auth, access_ttl=60 * 86400))
    client = await make_client(create_app(config, clock=clock))
    day0 = clock.now().date()
    admin = await admin_of(client, config)
    a, b, c = await register(client), await register(client), await register(client)

    async def active(*users: User) -> None:
        for user in users:
            resp = await client.get("/api/v1/users/me", headers=user.headers)
            assert resp.status == 200

    await active(a, b)  # c only registered: not active
    clock.advance(86400)
    await active(a)
    ws = await WsClient.connect(client, c.access)  # a WebSocket connect is activity too
    clock.advance(6 * 86400)
    await active(b)
    tracker = client.app[keys.ACTIVITY]
    await tracker.flush()
    assert tracker.pending == 0

    last = day0 + timedelta(days=7)
    body = await get_stats(client, admin, **{"from": day0.isoformat(), "to": last.isoformat()})
    assert [d["dau"] for d in body["days"]] == [2, 2, 0, 0, 0, 0, 0, 1]
    assert body["wau"] == 3  # a, c (day 1) and b (day 7)
    assert body["mau"] == 3
    body = await get_stats(client, admin, to=day0.isoformat())
    assert body["wau"] == 2 and body["mau"] == 2  # a and b
    # 40 days are kept: older days, and windows reaching them, have no figure.
    today = clock.now().date()
    body = await get_stats(
        client,
        admin,
        **{
            "from": (today - timedelta(days=45)).isoformat(),
            "to": (today - timedelta(days=20)).isoformat(),
        },
    )
    dau = {d["day"]: d["dau"] for d in body["days"]}
    assert dau[(today - timedelta(days=41)).isoformat()] is None
    assert dau[(today - timedelta(days=40)).isoformat()] == 0
    assert body["wau"] == 0 and body["mau"] is None

    # Keys live under the node's prefix and expire.
    redis = client.app[keys.REDIS]
    ttl = await redis.ttl(client.app[keys.REDIS_KEYS].active(day0.isoformat()))
    assert 0 < ttl <= 41 * 86400
    await ws.ws.close()


class NoIO:
    """A Redis stand-in that fails the test if anything touches it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"seen() used Redis ({name})")


async def test_the_tracker_keeps_days_apart_and_survives_a_redis_outage(config: Config) -> None:
    """``seen`` does no I/O; one flush writes each day's users to that day's key; a flush that
    cannot reach Redis keeps what it had for the next one."""
    assert config.redis.url
    midnight = datetime(2030, 6, 1, tzinfo=UTC).timestamp()
    clock = ManualClock(start=midnight - 1)
    rkeys = Keys(config.redis.prefix)
    tracker = ActivityTracker(NoIO(), rkeys, clock)  # type: ignore[arg-type]
    for user in (1, 2, 2, 3):
        tracker.seen(user)
    clock.advance(2)  # past midnight, UTC
    tracker.seen(3)
    tracker.seen(4)
    assert tracker.pending == 5  # {1, 2, 3} on May 31, {3, 4} on June 1

    down = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    tracker.redis = down
    await tracker.flush()  # logged, kept
    assert tracker.pending == 5
    await down.aclose()

    redis = aioredis.Redis.from_url(config.redis.url)
    tracker.redis = redis
    tracker.seen(5)
    await tracker.flush()
    assert tracker.pending == 0
    may31, june1 = rkeys.active("2030-05-31"), rkeys.active("2030-06-01")
    assert await redis.pfcount(may31) == 3
    assert await redis.pfcount(june1) == 3  # 3, 4 and 5
    assert await redis.pfcount(may31, june1) == 5
    # 40 days after the day ends (TTL, not EXPIRETIME: the embedded Redis is older than 7.0)
    expires = time.time() + await redis.ttl(june1)
    assert abs(expires - (int(midnight) + 41 * 86400)) <= 5
    await redis.delete(may31, june1)
    await redis.aclose()


async def test_only_admins_read_the_stats(fresh: Config, make_client: AppFactory) -> None:
    client = await make_client(create_app(fresh))
    user, moderator, admin = await register(client), await register(client), await register(client)
    await make_role(fresh, moderator, "moderator")
    await make_role(fresh, admin, "admin")
    await expect_error(await client.get(STATS), 401, "unauthorized")
    await expect_error(await client.get(STATS, headers=user.headers), 403, "forbidden")
    await expect_error(await client.get(STATS, headers=moderator.headers), 403, "forbidden")
    resp = await client.get(STATS, headers=admin.headers)
    assert resp.status == 200, await resp.text()
    # An admin demoted (or suspended) is refused at once.
    await make_role(fresh, admin, "user")
    await expect_error(await client.get(STATS, headers=admin.headers), 403, "forbidden")


async def test_bad_ranges_are_validation_errors(fresh: Config, make_client: AppFactory) -> None:
    client = await make_client(create_app(fresh))
    admin = await admin_of(client, fresh)
    resp = await client.get(
        STATS, params={"from": "2026-13-01", "to": "soon"}, headers=admin.headers
    )
    error = await expect_error(resp, 400, "validation_error")
    assert set(error["fields"]) == {"from", "to"}
    error = await expect_error(
        await client.get(
            STATS, params={"from": "2026-05-02", "to": "2026-05-01"}, headers=admin.headers
        ),
        422,
        "validation_error",
    )
    assert set(error["fields"]) == {"from"}
    error = await expect_error(
        await client.get(
            STATS, params={"from": "2025-01-01", "to": "2026-01-02"}, headers=admin.headers
        ),
        422,
        "validation_error",
    )
    assert "366" in error["fields"]["to"]
    body = await get_stats(client, admin, **{"from": "2025-01-01", "to": "2026-01-01"})
    assert len(body["days"]) == 366
    body = await get_stats(client, admin, to="2026-02-10")
    assert body["from"] == "2026-01-12" and len(body["days"]) == 30


async def test_the_stats_query_reads_the_rollup_by_primary_key(fresh: Config) -> None:
    """EXPLAIN: a range scan of stats.daily's primary key and no other table (no count of posts
    or messages), whatever the planner would think of a small table."""
    assert fresh.database.url
    conn = await asyncpg.connect(fresh.database.url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            explained = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {stats_storage.DAYS}", date(2026, 1, 1), date(2026, 12, 31)
            )
    finally:
        await conn.close()
    plan = (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    found = nodes(plan)
    assert {n["Relation Name"] for n in found if "Relation Name" in n} == {"daily"}
    assert {n.get("Index Name") for n in found} - {None} == {"daily_pkey"}
    assert not [n for n in found if n["Node Type"] == "Seq Scan"]


async def test_openapi_documents_the_stats(client: TestClient) -> None:
    doc = await (await client.get("/api/openapi.json")).json()
    op = doc["paths"]["/api/v1/admin/stats"]["get"]
    assert {p["name"] for p in op["parameters"]} == {"from", "to"}
    assert {"200", "400", "401", "403", "422"} <= set(op["responses"])
    assert op["security"] == [{"bearer": []}]


def _agora(args: list[str], config: Config, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    assert config.database.url and config.redis.url
    env.update(
        AGORA_DATABASE_URL=config.database.url,
        AGORA_REDIS_URL=config.redis.url,
        AGORA_REDIS_PREFIX=config.redis.prefix,
        AGORA_JWT_SECRET="c" * 40,
    )
    return subprocess.run(
        [sys.executable, "-m", "agora", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_cli_prints_the_same_figures(fresh: Config, tmp_path: Path) -> None:
    """``agora admin stats`` reads the same rollups and HyperLogLogs as the endpoint."""
    assert fresh.database.url and fresh.redis.url
    last = datetime.now(UTC).date()
    first, between = last - timedelta(days=2), last - timedelta(days=1)
    db = await Database.connect(fresh.database.url, min_size=1, max_size=2)
    try:
        async with db.transaction("seed") as tx:
            await StatsStore(db).add(
                tx,
                {
                    first: DayCounts(signups=2, posts=5, messages=7),
                    last: DayCounts(comments=1, reactions=4),
                },
            )
    finally:
        await db.close()
    redis = aioredis.Redis.from_url(fresh.redis.url)
    key = f"{fresh.redis.prefix}active:{first}"
    await redis.pfadd(key, 1, 2, 3)
    await redis.expire(key, 600)
    await redis.aclose()

    span = ["--from", first.isoformat(), "--to", last.isoformat()]
    proc = _agora(["admin", "stats", *span, "--json"], fresh, tmp_path)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert [(d["day"], d["dau"], counters(d)) for d in body["days"]] == [
        (first.isoformat(), 3, {**ZERO, "signups": 2, "posts": 5, "messages": 7}),
        (between.isoformat(), 0, ZERO),
        (last.isoformat(), 0, {**ZERO, "comments": 1, "reactions": 4}),
    ]
    assert body["totals"] == {
        "signups": 2,
        "posts": 5,
        "comments": 1,
        "reactions": 4,
        "messages": 7,
    }
    assert body["wau"] == 3 and body["mau"] == 3

    proc = _agora(["admin", "stats", *span], fresh, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == [
        "day",
        "dau",
        "signups",
        "posts",
        "comments",
        "reactions",
        "messages",
    ]
    assert lines[1].split() == [first.isoformat(), "3", "2", "5", "0", "0", "7"]
    assert lines[4].split() == ["total", "2", "5", "1", "4", "7"]
    assert any(line.startswith("sessions online now: ") for line in lines)

    proc = _agora(
        ["admin", "stats", "--from", last.isoformat(), "--to", first.isoformat()], fresh, tmp_path
    )
    assert proc.returncode == 2 and "from" in proc.stderr and "Traceback" not in proc.stderr
    proc = _agora(["admin", "stats", "--from", "March"], fresh, tmp_path)
    assert proc.returncode == 2 and "YYYY-MM-DD" in proc.stderr
