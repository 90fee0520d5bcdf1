"""Post counters without a hot row (migration 0015): comment and reaction triggers insert delta
rows, reads add a post's pending deltas to its post_stats row, and a fold moves them over.

Exact under concurrent writers and folds, the same before and after a fold, deltas of a deleted
post dropped, and (the point of it) writers of one post that no longer wait for each other.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.server import keys
from agora.storage.content import FOLD_BATCH, FOLD_LOCK, REACTION_TYPES, PostStore
from tests.support.api import User, create_post, get_json, register

Counts = tuple[int, dict[str, int]]  # (comment_count, reaction_counts) as the API shows them


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def store_of(client: TestClient) -> PostStore:
    return PostStore(client.server.app[keys.DB])


async def shown(client: TestClient, pid: int, viewer: User) -> Counts:
    """The counts GET /api/v1/posts/{id} answers."""
    post = await get_json(client, f"/api/v1/posts/{pid}", viewer)
    return post["comment_count"], post["reaction_counts"]


async def truth(pg: asyncpg.Connection, pid: int) -> Counts:
    """The counts of the real rows."""
    comments = await pg.fetchval("SELECT count(*) FROM content.comments WHERE post_id = $1", pid)
    rows = await pg.fetch(
        "SELECT type, count(*) AS n FROM content.reactions WHERE post_id = $1 GROUP BY type", pid
    )
    return comments, {r["type"]: r["n"] for r in rows}


async def folded(pg: asyncpg.Connection, pid: int) -> Counts | None:
    """The post's post_stats row alone (None: no row)."""
    row = await pg.fetchrow("SELECT * FROM content.post_stats WHERE post_id = $1", pid)
    if row is None:
        return None
    return row["comment_count"], {t: n for t in REACTION_TYPES if (n := row[f"{t}_count"])}


async def pending(pg: asyncpg.Connection, pid: int) -> int:
    n: int = await pg.fetchval(
        "SELECT count(*) FROM content.post_stat_deltas WHERE post_id = $1", pid
    )
    return n


async def fold_everything(store: PostStore, batch: int = FOLD_BATCH) -> int:
    """Fold until a fold moves less than a full batch, waiting out the node's own folds (they
    hold the lock meanwhile): the delta rows this moved."""
    total = 0
    async with asyncio.timeout(15):
        while True:
            moved = await store.fold_counters(batch)
            if moved is None:
                await asyncio.sleep(0.02)
                continue
            total += moved
            if moved < batch:
                return total


@asynccontextmanager
async def no_folds(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold the fold's lock (session level, from a connection of its own): every fold, the
    node's and the test's, skips while inside, so deltas stay pending."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"SELECT pg_advisory_lock({FOLD_LOCK})")
        yield conn
    finally:
        await conn.close()  # releases the lock


async def ok(resp: Any, *statuses: int) -> Any:
    assert resp.status in statuses, (resp.status, await resp.text())
    return await resp.json() if resp.status != 204 else None


async def react(client: TestClient, user: User, pid: int, kind: str) -> None:
    await ok(
        await client.put(
            f"/api/v1/posts/{pid}/reactions", headers=user.headers, json={"type": kind}
        ),
        200,
    )


async def comment(client: TestClient, user: User, pid: int, text: str = "me too") -> int:
    body = await ok(
        await client.post(
            f"/api/v1/posts/{pid}/comments", headers=user.headers, json={"text": text}
        ),
        201,
    )
    return int(body["id"])


async def test_counts_stay_exact_under_concurrent_writers_and_folds(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    """44 users react, change their reaction, take it back, comment and delete comments on one
    post at once, while folds run all along in small batches: the API's counts equal the rows
    before and after a final fold, and the fold leaves post_stats equal to them alone (a fold
    that counted a delta twice or lost one would not)."""
    author = await register(client)
    users = [await register(client) for _ in range(44)]
    pid = int((await create_post(client, author, "go viral", "public"))["id"])
    store = store_of(client)
    writing = True
    folds: list[int] = []

    async def churn(user: User, rng: random.Random) -> None:
        mine: list[int] = []
        current: str | None = None
        for _ in range(8):
            action = rng.random()
            if action < 0.45:  # a reaction, a change of it when there is one
                current = rng.choice([t for t in REACTION_TYPES if t != current])
                await react(client, user, pid, current)
            elif action < 0.6:
                await ok(
                    await client.delete(f"/api/v1/posts/{pid}/reactions", headers=user.headers),
                    204,
                )
                current = None
            elif action < 0.85 or not mine:
                mine.append(await comment(client, user, pid))
            else:
                gone = mine.pop(rng.randrange(len(mine)))
                await ok(await client.delete(f"/api/v1/comments/{gone}", headers=user.headers), 204)

    async def fold_meanwhile() -> None:
        while writing:
            moved = await store.fold_counters(batch=7)
            if moved:
                folds.append(moved)
            await asyncio.sleep(0.005)

    folder = asyncio.create_task(fold_meanwhile())
    try:
        await asyncio.gather(*(churn(u, random.Random(i)) for i, u in enumerate(users)))
    finally:
        writing = False
        await folder
    assert folds, "no fold moved anything while the writers ran"

    expected = await truth(pg, pid)
    assert expected[0] > 0 and sum(expected[1].values()) > 0
    assert await shown(client, pid, author) == expected  # whatever is still pending
    await fold_everything(store)
    assert await pending(pg, pid) == 0
    assert await folded(pg, pid) == expected
    assert await shown(client, pid, author) == expected


async def test_a_fold_and_a_read_agree_at_every_moment(
    client: TestClient, pg: asyncpg.Connection, database_url: str
) -> None:
    """With deltas pending, reads (through the API and the view) give the rows' counts while
    folds move the deltas one at a time, and after."""
    author = await register(client)
    users = [await register(client) for _ in range(8)]
    pid = int((await create_post(client, author, "steady", "public"))["id"])
    store = store_of(client)
    async with no_folds(database_url):
        for i, user in enumerate(users):
            await react(client, user, pid, REACTION_TYPES[i % 6])
            await comment(client, user, pid)
        await react(client, users[0], pid, "wow")  # a change: one delta, two counters
        await ok(
            await client.delete(f"/api/v1/posts/{pid}/reactions", headers=users[1].headers), 204
        )
        assert await store.fold_counters() is None  # another holds the lock: skipped
        expected = await truth(pg, pid)
        assert await pending(pg, pid) == 18
        assert await folded(pg, pid) == (0, {})  # all of it pending
        before = await shown(client, pid, author)
    assert before == expected

    reads: list[Counts] = []
    folding = True

    async def read_meanwhile() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            while folding:
                reads.append(await shown(client, pid, author))
                row = await conn.fetchrow(
                    "SELECT * FROM content.post_counts WHERE post_id = $1", pid
                )
                assert row is not None
                reads.append(
                    (
                        row["comment_count"],
                        {t: n for t in REACTION_TYPES if (n := row[f"{t}_count"])},
                    )
                )
        finally:
            await conn.close()

    reader = asyncio.create_task(read_meanwhile())
    try:
        while await pending(pg, pid):
            await store.fold_counters(batch=1)
            await asyncio.sleep(0.01)
    finally:
        folding = False
        await reader
    assert len(reads) > 2 and [r for r in reads if r != expected] == []
    assert await folded(pg, pid) == expected
    assert await shown(client, pid, author) == expected


async def test_deleting_a_post_with_pending_deltas(
    client: TestClient, pg: asyncpg.Connection, database_url: str
) -> None:
    """A post deleted while its deltas are pending goes (its cascade writes no deltas, as the
    0004 triggers wrote no decrements); the next fold drops its deltas and folds the others."""
    author, fan = await register(client), await register(client)
    doomed = int((await create_post(client, author, "doomed", "public"))["id"])
    kept = int((await create_post(client, author, "kept", "public"))["id"])
    store = store_of(client)
    async with no_folds(database_url):
        for pid in (doomed, kept):
            await react(client, fan, pid, "love")
            await comment(client, fan, pid)
            await comment(client, author, pid)
        assert await pending(pg, doomed) == 3
        await ok(await client.delete(f"/api/v1/posts/{doomed}", headers=author.headers), 204)
        assert await pending(pg, doomed) == 3  # nothing more for the cascade's deletes
        assert await folded(pg, doomed) is None
    await fold_everything(store)
    assert await pending(pg, doomed) == 0
    assert await pending(pg, kept) == 0
    assert await folded(pg, kept) == (2, {"love": 1}) == await shown(client, kept, author)


async def test_writers_of_one_post_do_not_wait_for_each_other(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    """A transaction that reacted to and commented on a post and has not committed yet: another
    user's reaction and comment on that post go through at once (the old triggers updated the
    post's counter row, whose lock made them wait for that commit)."""
    author, first, second = [await register(client) for _ in range(3)]
    pid = int((await create_post(client, author, "popular", "public"))["id"])
    open_tx = pg.transaction()
    await open_tx.start()
    try:
        await pg.execute(
            "INSERT INTO content.reactions (post_id, user_id, type) VALUES ($1, $2, 'like')",
            pid,
            int(first.id),
        )
        await pg.execute(
            "INSERT INTO content.comments (post_id, author_id, text) VALUES ($1, $2, 'first')",
            pid,
            int(first.id),
        )
        async with asyncio.timeout(3):
            await react(client, second, pid, "haha")
            await comment(client, second, pid)
            assert await shown(client, pid, author) == (1, {"haha": 1})  # not the open one's
    finally:
        await open_tx.rollback()
    assert await shown(client, pid, author) == (1, {"haha": 1}) == await truth(pg, pid)


async def test_a_fold_never_waits_for_a_lock(
    client: TestClient, pg: asyncpg.Connection, database_url: str
) -> None:
    """A post_stats row another transaction holds (a post being deleted) is skipped, its deltas
    left for a later fold; the fold folds the rest and returns at once."""
    author, fan = await register(client), await register(client)
    busy = int((await create_post(client, author, "busy", "public"))["id"])
    free = int((await create_post(client, author, "free", "public"))["id"])
    store = store_of(client)
    async with no_folds(database_url):
        for pid in (busy, free):
            await react(client, fan, pid, "sad")
    holder = await asyncpg.connect(database_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM content.post_stats WHERE post_id = $1 FOR UPDATE", busy)
        async with asyncio.timeout(3):
            await fold_everything(store)
        assert await pending(pg, busy) == 1 and await pending(pg, free) == 0
        assert await folded(pg, free) == (0, {"sad": 1})
        assert await shown(client, busy, author) == (0, {"sad": 1})
        await held.rollback()
    finally:
        await holder.close()
    await fold_everything(store)
    assert await pending(pg, busy) == 0
    assert await folded(pg, busy) == (0, {"sad": 1})


async def test_the_node_folds_by_itself(client: TestClient, pg: asyncpg.Connection) -> None:
    """The node's counter-fold job (every second) takes pending deltas in."""
    author, fan = await register(client), await register(client)
    pid = int((await create_post(client, author, "later", "public"))["id"])
    await react(client, fan, pid, "like")
    await comment(client, fan, pid)
    async with asyncio.timeout(10):
        while await pending(pg, pid):
            await asyncio.sleep(0.1)
    assert await folded(pg, pid) == (1, {"like": 1}) == await shown(client, pid, author)
