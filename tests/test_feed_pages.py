"""The in-memory feed page cache: hits cost no I/O; every event that changes a page drops it,
on this node and on the others; a page built across an event is not kept."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient

from agora.clock import ManualClock
from agora.config import ClusterConfig
from agora.server import keys
from agora.services.feed_pages import POST, VIEWER, FeedPages
from tests.support.api import User, befriend, block, create_post, get_json, register

FAST = ClusterConfig(heartbeat=0.3, node_timeout=1.5, answer_timeout=3.0, presence_debounce=0.5)


def test_a_page_built_across_an_event_is_not_kept() -> None:
    pages = FeedPages(ManualClock(), max_entries=10, ttl=10)
    mark = pages.mark()
    pages.drop(POST, [7])  # happens while the page is being built
    assert not pages.put("k", b"old", viewer=1, posts=[7, 8], authors=[3], since=mark)
    mark = pages.mark()
    pages.drop(POST, [99])  # unrelated to the page
    assert pages.put("k", b"new", viewer=1, posts=[7, 8], authors=[3], since=mark)
    assert pages.get("k") == b"new"
    pages.drop(VIEWER, [1])
    assert pages.get("k") is None


def test_entries_expire_and_the_cache_is_bounded() -> None:
    clock = ManualClock()
    pages = FeedPages(clock, max_entries=2, ttl=5)
    for key in ("a", "b", "c"):
        assert pages.put(key, key.encode(), 1, [], [], pages.mark())
    assert pages.get("a") is None and pages.get("c") == b"c"
    clock.advance(6)
    assert pages.get("c") is None and len(pages) == 1
    small = FeedPages(clock, max_entries=100, ttl=5, max_bytes=10)
    for key in ("x", "y", "z"):
        small.put(key, b"1234", 1, [], [], small.mark())
    assert len(small) == 2 and small.bytes == 8  # the byte budget holds


async def _two_friends_and_a_post(client: TestClient) -> tuple[User, User, dict]:  # type: ignore[type-arg]
    me, pal = await register(client), await register(client)
    await befriend(client, me, pal)
    post = await create_post(client, pal, "original", "friends")
    return me, pal, post


async def _feed(client: TestClient, user: User) -> list[dict]:  # type: ignore[type-arg]
    return (await get_json(client, "/api/v1/feed", user))["items"]  # type: ignore[no-any-return]


async def test_a_repeated_read_costs_no_query(client: TestClient) -> None:
    me, _, post = await _two_friends_and_a_post(client)
    db = client.server.app[keys.DB]
    assert [p["id"] for p in await _feed(client, me)] == [post["id"]]
    before = db.queries
    for _ in range(5):
        assert [p["id"] for p in await _feed(client, me)] == [post["id"]]
    assert db.queries == before


async def test_every_change_reaches_the_cached_page(client: TestClient) -> None:
    me, pal, post = await _two_friends_and_a_post(client)
    other = await register(client)
    await befriend(client, me, other)
    await befriend(client, pal, other)
    pid = post["id"]
    await _feed(client, me)  # cached now

    await client.put(f"/api/v1/posts/{pid}/reactions", headers=me.headers, json={"type": "wow"})
    assert (await _feed(client, me))[0]["my_reaction"] == "wow"
    resp = await client.put(
        f"/api/v1/posts/{pid}/reactions", headers=other.headers, json={"type": "like"}
    )
    assert resp.status == 200
    assert (await _feed(client, me))[0]["reaction_counts"] == {"wow": 1, "like": 1}
    await client.delete(f"/api/v1/posts/{pid}/reactions", headers=me.headers)
    assert (await _feed(client, me))[0]["my_reaction"] is None

    resp = await client.post(
        f"/api/v1/posts/{pid}/comments", headers=pal.headers, json={"text": "c"}
    )
    comment = await resp.json()
    assert (await _feed(client, me))[0]["comment_count"] == 1
    await client.delete(f"/api/v1/comments/{comment['id']}", headers=pal.headers)
    assert (await _feed(client, me))[0]["comment_count"] == 0

    await client.patch(f"/api/v1/posts/{pid}", headers=pal.headers, json={"text": "edited"})
    assert (await _feed(client, me))[0]["text"] == "edited"
    await client.patch("/api/v1/users/me", headers=pal.headers, json={"display_name": "Renamed"})
    assert (await _feed(client, me))[0]["author"]["display_name"] == "Renamed"

    fresh = await create_post(client, other, "new from other", "friends")
    assert (await _feed(client, me))[0]["id"] == fresh["id"]

    await client.patch(f"/api/v1/posts/{pid}", headers=pal.headers, json={"visibility": "private"})
    assert pid not in [p["id"] for p in await _feed(client, me)]
    await client.patch(f"/api/v1/posts/{pid}", headers=pal.headers, json={"visibility": "friends"})
    assert pid in [p["id"] for p in await _feed(client, me)]

    await client.delete(f"/api/v1/friends/{other.id}", headers=me.headers)
    assert fresh["id"] not in [p["id"] for p in await _feed(client, me)]

    await block(client, pal, me)
    assert await _feed(client, me) == []
    await client.delete(f"/api/v1/blocks/{me.id}", headers=pal.headers)
    await befriend(client, me, pal)
    assert pid in [p["id"] for p in await _feed(client, me)]
    await client.delete(f"/api/v1/posts/{pid}", headers=pal.headers)
    assert pid not in [p["id"] for p in await _feed(client, me)]


async def test_events_reach_the_other_nodes(make_client) -> None:  # type: ignore[no-untyped-def]
    n1 = await make_client(node_id="pages-a", cluster=FAST)
    n2 = await make_client(node_id="pages-b", cluster=FAST)
    for _ in range(50):
        if all(len(n.server.app[keys.NODES].live) >= 2 for n in (n1, n2)):
            break
        await asyncio.sleep(0.1)
    me, pal, post = await _two_friends_and_a_post(n1)
    assert [p["text"] for p in await _feed(n2, me)] == ["original"]  # cached on n2
    await n1.patch(
        f"/api/v1/posts/{post['id']}", headers=pal.headers, json={"text": "changed on n1"}
    )
    for _ in range(50):
        if (await _feed(n2, me))[0]["text"] == "changed on n1":
            break
        await asyncio.sleep(0.02)
    assert (await _feed(n2, me))[0]["text"] == "changed on n1"
    await n1.delete(f"/api/v1/posts/{post['id']}", headers=pal.headers)
    for _ in range(50):
        if await _feed(n2, me) == []:
            break
        await asyncio.sleep(0.02)
    assert await _feed(n2, me) == []
