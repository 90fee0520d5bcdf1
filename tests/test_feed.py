"""The news feed: ordering, stable cursors, the Redis cache against PostgreSQL, corrections."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from agora.config import Config
from agora.server import keys
from agora.server.app import create_app
from tests.support.api import (
    User,
    befriend,
    block,
    collect,
    create_post,
    expect_error,
    get_json,
    register,
)
from tests.support.proxy import proxy_redis


async def _feed_ids(
    client: TestClient, user: User, limit: int = 20, rank: str = "recent"
) -> list[str]:
    return [p["id"] for p in await collect(client, f"/api/v1/feed?rank={rank}", user, limit=limit)]


async def _circle(client: TestClient, friends: int = 3) -> tuple[User, list[User], User]:
    me = await register(client)
    pals = [await register(client) for _ in range(friends)]
    for pal in pals:
        await befriend(client, me, pal)
    stranger = await register(client)
    return me, pals, stranger


async def test_own_and_friends_posts_newest_first(client: TestClient) -> None:
    me, pals, stranger = await _circle(client)
    made = [await create_post(client, me, "mine", "private")]
    for pal in pals:
        made.append(await create_post(client, pal, "pal public", "public"))
        made.append(await create_post(client, pal, "pal friends", "friends"))
        await create_post(client, pal, "pal private", "private")
    await create_post(client, stranger, "stranger public", "public")
    feed = await _feed_ids(client, me)
    assert feed == [p["id"] for p in reversed(made)]
    page = await get_json(client, "/api/v1/feed", me)
    assert page["items"][0]["author"]["id"] == pals[-1].id and page["next_cursor"] is None


async def test_cursor_neither_repeats_nor_skips_while_posts_arrive(client: TestClient) -> None:
    me, pals, _ = await _circle(client, friends=2)
    older = [await create_post(client, pals[i % 2], f"p{i}", "friends") for i in range(25)]
    seen: list[str] = []
    page = await get_json(client, "/api/v1/feed?limit=7", me)
    while True:
        seen += [p["id"] for p in page["items"]]
        # New posts land between pages, from friends and from the viewer.
        await create_post(client, pals[0], "new", "friends")
        await create_post(client, me, "new mine", "public")
        if page["next_cursor"] is None:
            break
        page = await get_json(client, f"/api/v1/feed?limit=7&cursor={page['next_cursor']}", me)
    assert seen == [p["id"] for p in reversed(older)]


async def test_cache_and_postgresql_give_the_same_pages(
    uncached: TestClient,
    make_client,  # type: ignore[no-untyped-def]
) -> None:
    client = uncached
    uncached = await make_client(feed_cache_size=0, feed_page_cache=0)
    me, pals, _ = await _circle(client, friends=4)
    for i in range(30):
        await create_post(client, pals[i % 4], f"post {i}", ("public", "friends", "private")[i % 3])
    await create_post(client, me, "mine", "private")
    for limit in (1, 5, 20, 100):
        cached_pages = await _feed_ids(client, me, limit)
        plain_pages = await _feed_ids(uncached, me, limit)
        assert cached_pages == plain_pages, limit
    assert len(cached_pages) == 21


@pytest.fixture
async def uncached(make_client) -> TestClient:  # type: ignore[no-untyped-def]
    """A node without the in-memory page cache: every read goes to Redis and PostgreSQL."""
    return await make_client(feed_page_cache=0)


async def test_rebuilt_after_redis_loses_it(uncached: TestClient) -> None:
    client = uncached
    me, pals, _ = await _circle(client)
    for pal in pals:
        await create_post(client, pal, "hello", "friends")
    before = await _feed_ids(client, me)
    app: web.Application = client.server.app  # type: ignore[assignment]
    redis, rkeys = app[keys.REDIS], app[keys.REDIS_KEYS]
    assert await redis.zcard(rkeys.feed(int(me.id))) > 0
    # Eviction or a flushed Redis: every key of this deployment gone.
    async for key in redis.scan_iter(match=f"{rkeys.prefix}feed*"):
        await redis.delete(key)
    assert await _feed_ids(client, me) == before
    assert await redis.zcard(rkeys.feed(int(me.id))) == len(before) + 1  # + the "complete" marker


async def test_fan_out_on_write_reaches_cached_feeds(uncached: TestClient) -> None:
    client = uncached
    me, pals, _ = await _circle(client)
    await _feed_ids(client, me)  # builds my cached window
    app: web.Application = client.server.app  # type: ignore[assignment]
    post = await create_post(client, pals[0], "fresh", "friends")
    score = await app[keys.REDIS].zscore(app[keys.REDIS_KEYS].feed(int(me.id)), post["id"])
    assert score == int(post["id"])


async def test_corrections_on_unfriend_block_delete_and_visibility(client: TestClient) -> None:
    me, (a, b, c), _ = await _circle(client)
    app: web.Application = client.server.app  # type: ignore[assignment]

    async def cached(user: User) -> set[str]:
        """What the Redis window of ``user`` holds: corrected, not only filtered at read time."""
        raw = await app[keys.REDIS].zrange(app[keys.REDIS_KEYS].feed(int(user.id)), 0, -1)
        return {m.decode() for m in raw}

    pa = await create_post(client, a, "from a", "public")
    pb = await create_post(client, b, "from b", "friends")
    pc = await create_post(client, c, "from c", "friends")
    assert set(await _feed_ids(client, me)) == {pa["id"], pb["id"], pc["id"]}

    assert (await client.delete(f"/api/v1/friends/{a.id}", headers=me.headers)).status == 204
    assert set(await _feed_ids(client, me)) == {pb["id"], pc["id"]}
    assert pa["id"] in await _feed_ids(client, a)
    assert pa["id"] not in await cached(me) and pb["id"] in await cached(me)

    await block(client, b, me)
    assert set(await _feed_ids(client, me)) == {pc["id"]}
    assert set(await _feed_ids(client, b)) == {pb["id"]}
    assert pb["id"] not in await cached(me)

    resp = await client.patch(
        f"/api/v1/posts/{pc['id']}", headers=c.headers, json={"visibility": "private"}
    )
    assert resp.status == 200
    assert await _feed_ids(client, me) == []
    assert pc["id"] not in await cached(me) and pc["id"] in await cached(c)
    await client.patch(
        f"/api/v1/posts/{pc['id']}", headers=c.headers, json={"visibility": "friends"}
    )
    assert await _feed_ids(client, me) == [pc["id"]]

    assert (await client.delete(f"/api/v1/posts/{pc['id']}", headers=c.headers)).status == 204
    assert await _feed_ids(client, me) == []
    assert pc["id"] not in await cached(me)

    # A new friendship brings the friend's earlier posts in.
    await befriend(client, me, a)
    assert pa["id"] in await _feed_ids(client, me)


async def test_pages_past_the_cached_window_come_from_postgresql(make_client) -> None:  # type: ignore[no-untyped-def]
    small = await make_client(feed_cache_size=5, feed_page_cache=0)
    plain = await make_client(feed_cache_size=0, feed_page_cache=0)
    me, pals, _ = await _circle(small, friends=2)
    made = [await create_post(small, pals[i % 2], f"p{i}", "friends") for i in range(17)]
    expected = [p["id"] for p in reversed(made)]
    for limit in (3, 4, 20):
        assert await _feed_ids(small, me, limit) == expected
        assert await _feed_ids(plain, me, limit) == expected
    app: web.Application = small.server.app  # type: ignore[assignment]
    cached = await app[keys.REDIS].zrange(app[keys.REDIS_KEYS].feed(int(me.id)), 0, -1)
    assert len([m for m in cached if m.isdigit()]) <= 6


async def test_a_feed_page_costs_a_bounded_number_of_queries(uncached: TestClient) -> None:
    client = uncached
    me, pals, _ = await _circle(client, friends=5)
    for i in range(120):
        await create_post(client, pals[i % 5], f"p{i}", "friends")
    app: web.Application = client.server.app  # type: ignore[assignment]
    db = app[keys.DB]
    counts = {}
    for limit in (5, 20, 100):
        await get_json(client, f"/api/v1/feed?limit={limit}", me)  # warm (the first read rebuilds)
        before = db.queries
        await get_json(client, f"/api/v1/feed?limit={limit}", me)
        counts[limit] = db.queries - before
    assert max(counts.values()) <= 2 and len(set(counts.values())) == 1, counts
    # Cold (rebuild) and uncached paths are bounded too.
    await app[keys.REDIS].delete(app[keys.REDIS_KEYS].feed(int(me.id)))
    before = db.queries
    await get_json(client, "/api/v1/feed?limit=100", me)
    assert db.queries - before <= 3
    before = db.queries
    await get_json(client, "/api/v1/feed?rank=top&limit=100", me)
    assert db.queries - before == 1


async def test_feed_survives_losing_redis(make_client, config: Config) -> None:  # type: ignore[no-untyped-def]
    assert config.redis.url
    proxy, through = await proxy_redis(config.redis.url)
    try:
        cut_config = config.with_overrides(
            redis=config.redis.__class__(url=through, prefix=config.redis.prefix),
            feed_page_cache=0,
        )
        client = await make_client(create_app(cut_config))
        me, pals, _ = await _circle(client, friends=2)
        made = [await create_post(client, pals[i % 2], f"p{i}", "friends") for i in range(6)]
        expected = [p["id"] for p in reversed(made)]
        assert await _feed_ids(client, me, 4) == expected
        proxy.cut()
        assert await _feed_ids(client, me, 4) == expected
        proxy.restore()
        await client.close()  # while Redis is reachable: the node deregisters itself
    finally:
        await proxy.close()


async def test_top_ranks_engagement_with_time_decay(client: TestClient, database_url: str) -> None:
    me, pals, _ = await _circle(client, friends=3)
    quiet_new = await create_post(client, pals[0], "quiet but new", "friends")
    loved = await create_post(client, pals[1], "loved", "public")
    for pal in pals:
        await client.put(
            f"/api/v1/posts/{loved['id']}/reactions", headers=pal.headers, json={"type": "love"}
        )
        await client.post(
            f"/api/v1/posts/{loved['id']}/comments", headers=pal.headers, json={"text": "!"}
        )
    old = await create_post(client, pals[2], "old", "friends")
    conn = await asyncpg.connect(database_url)
    try:  # an old post beyond the 72 h window, and one a day old
        await conn.execute(
            "UPDATE content.posts SET created_at = now() - interval '5 days' WHERE id = $1",
            int(old["id"]),
        )
    finally:
        await conn.close()
    top = await _feed_ids(client, me, rank="top")
    assert top[0] == loved["id"] and quiet_new["id"] in top and old["id"] not in top
    ranked = [p for p in (await get_json(client, "/api/v1/feed?rank=top", me))["items"]]
    assert ranked[0]["reaction_counts"] == {"love": 3} and ranked[0]["comment_count"] == 3
    # Paging through top neither repeats nor skips.
    for i in range(12):
        await create_post(client, pals[i % 3], f"more {i}", "friends")
    one_by_one = await _feed_ids(client, me, limit=1, rank="top")
    assert len(one_by_one) == len(set(one_by_one)) == len(await _feed_ids(client, me, 100, "top"))


async def test_top_decays_with_age_whatever_the_engagement(
    client: TestClient, database_url: str
) -> None:
    me, pals, _ = await _circle(client, friends=3)
    fresh = await create_post(client, pals[0], "fresh, one like", "public")
    day_old = await create_post(client, pals[1], "a day old, one like", "public")
    older = await create_post(client, pals[2], "two days old, three likes", "public")
    for post, likers in ((fresh, pals[:1]), (day_old, pals[:1]), (older, pals)):
        for pal in likers:
            resp = await client.put(
                f"/api/v1/posts/{post['id']}/reactions", headers=pal.headers, json={"type": "like"}
            )
            assert resp.status == 200
    conn = await asyncpg.connect(database_url)
    try:
        for post, hours in ((day_old, 30), (older, 60)):
            await conn.execute(
                "UPDATE content.posts SET created_at = now() - make_interval(hours => $2)"
                " WHERE id = $1",
                int(post["id"]),
                hours,
            )
    finally:
        await conn.close()
    # (1 + reactions + 2 x comments) / (age_h + 2)^1.5: 2/2.8 > 2/181 > 4/488. By engagement
    # alone the oldest would lead; by age alone too would the equal pair. Decay decides both.
    assert await _feed_ids(client, me, rank="top") == [fresh["id"], day_old["id"], older["id"]]


async def test_feed_needs_an_account_and_a_valid_cursor(client: TestClient) -> None:
    await expect_error(await client.get("/api/v1/feed"), 401, "unauthorized")
    me = await register(client)
    await expect_error(
        await client.get("/api/v1/feed?cursor=bogus", headers=me.headers), 400, "validation_error"
    )
    page = await get_json(client, "/api/v1/users/me", me)
    assert page["id"] == me.id
    other_list_cursor = (await get_json(client, "/api/v1/friends?limit=1", me))["next_cursor"]
    assert other_list_cursor is None
    await expect_error(
        await client.get("/api/v1/feed?rank=best", headers=me.headers), 400, "validation_error"
    )
