"""Posts, comments and reactions: ownership, cascades, exact counters under concurrency."""

from __future__ import annotations

import asyncio
import random

import asyncpg
from aiohttp.test_utils import TestClient

from tests.support.api import befriend, collect, create_post, expect_error, get_json, register


async def test_create_get_edit_delete(client: TestClient) -> None:
    author, friend = await register(client), await register(client)
    await befriend(client, author, friend)
    post = await create_post(client, author, "first", "friends")
    assert set(post) >= {
        "id",
        "author",
        "text",
        "visibility",
        "media",
        "created_at",
        "updated_at",
        "comment_count",
        "reaction_counts",
        "my_reaction",
    }
    assert post["author"]["id"] == author.id and post["media"] == [] and post["my_reaction"] is None
    assert post["comment_count"] == 0 and post["reaction_counts"] == {}

    resp = await client.patch(
        f"/api/v1/posts/{post['id']}",
        headers=author.headers,
        json={"text": "edited", "visibility": "public"},
    )
    assert resp.status == 200
    edited = await resp.json()
    assert edited["text"] == "edited" and edited["visibility"] == "public"
    assert edited["updated_at"] > post["updated_at"] and edited["created_at"] == post["created_at"]

    await expect_error(
        await client.patch(
            f"/api/v1/posts/{post['id']}", headers=friend.headers, json={"text": "mine now"}
        ),
        403,
        "forbidden",
    )
    await expect_error(
        await client.delete(f"/api/v1/posts/{post['id']}", headers=friend.headers), 403, "forbidden"
    )
    await expect_error(
        await client.patch(
            f"/api/v1/posts/{post['id']}", headers=author.headers, json={"text": ""}
        ),
        422,
        "validation_error",
    )
    await expect_error(
        await client.patch(
            f"/api/v1/posts/{post['id']}", headers=author.headers, json={"visibility": "everyone"}
        ),
        422,
        "validation_error",
    )
    assert (
        await client.delete(f"/api/v1/posts/{post['id']}", headers=author.headers)
    ).status == 204
    await expect_error(
        await client.get(f"/api/v1/posts/{post['id']}", headers=author.headers), 404, "not_found"
    )


async def test_post_validation(client: TestClient) -> None:
    user = await register(client)
    resp = await client.post(
        "/api/v1/posts",
        headers=user.headers,
        json={"text": "x" * 10_001, "visibility": "secret", "media_ids": "no"},
    )
    err = await expect_error(resp, 422, "validation_error")
    assert set(err["fields"]) == {"text", "visibility", "media_ids"}
    await expect_error(
        await client.post(
            "/api/v1/posts", headers=user.headers, json={"text": "hi", "media_ids": ["123"]}
        ),
        422,
        "validation_error",
    )


async def test_moderator_deletes_any_post_and_cascade(
    client: TestClient, database_url: str
) -> None:
    author, mod, friend = await register(client), await register(client), await register(client)
    await befriend(client, author, friend)
    post = await create_post(client, author, "private thoughts", "private")
    public = await create_post(client, author, "for all", "public")
    await client.post(
        f"/api/v1/posts/{public['id']}/comments", headers=friend.headers, json={"text": "c"}
    )
    await client.put(
        f"/api/v1/posts/{public['id']}/reactions", headers=friend.headers, json={"type": "wow"}
    )
    # A plain user who cannot see the post gets 404, not 403.
    await expect_error(
        await client.delete(f"/api/v1/posts/{post['id']}", headers=mod.headers), 404, "not_found"
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE accounts.users SET role = 'moderator' WHERE id = $1", int(mod.id)
        )
        assert (
            await client.delete(f"/api/v1/posts/{post['id']}", headers=mod.headers)
        ).status == 204
        assert (
            await client.delete(f"/api/v1/posts/{public['id']}", headers=mod.headers)
        ).status == 204
        left = await conn.fetchval(
            "SELECT (SELECT count(*) FROM content.comments WHERE post_id = $1)"
            " + (SELECT count(*) FROM content.reactions WHERE post_id = $1)"
            " + (SELECT count(*) FROM content.post_stats WHERE post_id = $1)",
            int(public["id"]),
        )
        assert left == 0
    finally:
        await conn.close()


async def test_comments_replies_and_deletion(client: TestClient) -> None:
    author, friend, other = await register(client), await register(client), await register(client)
    await befriend(client, author, friend)
    await befriend(client, author, other)
    post = await create_post(client, author, "talk to me", "friends")
    pid = post["id"]
    made = []
    for i in range(5):
        resp = await client.post(
            f"/api/v1/posts/{pid}/comments", headers=friend.headers, json={"text": f"c{i}"}
        )
        assert resp.status == 201
        made.append(await resp.json())
    reply = await client.post(
        f"/api/v1/posts/{pid}/comments",
        headers=author.headers,
        json={"text": "reply", "parent_id": made[0]["id"]},
    )
    assert reply.status == 201
    reply_body = await reply.json()
    assert reply_body["parent_id"] == made[0]["id"] and reply_body["post_id"] == pid
    listed = await collect(client, f"/api/v1/posts/{pid}/comments", other, limit=2)
    assert [c["text"] for c in listed] == ["c0", "c1", "c2", "c3", "c4", "reply"]
    assert (await get_json(client, f"/api/v1/posts/{pid}", author))["comment_count"] == 6

    elsewhere = await create_post(client, author, "another", "friends")
    await expect_error(
        await client.post(
            f"/api/v1/posts/{elsewhere['id']}/comments",
            headers=friend.headers,
            json={"text": "x", "parent_id": made[1]["id"]},
        ),
        422,
        "validation_error",
    )
    # A bystander may not delete; the comment's author and the post's author may.
    await expect_error(
        await client.delete(f"/api/v1/comments/{made[1]['id']}", headers=other.headers),
        403,
        "forbidden",
    )
    assert (
        await client.delete(f"/api/v1/comments/{made[1]['id']}", headers=friend.headers)
    ).status == 204
    assert (
        await client.delete(f"/api/v1/comments/{made[2]['id']}", headers=author.headers)
    ).status == 204
    # Deleting a comment takes its replies with it.
    assert (
        await client.delete(f"/api/v1/comments/{made[0]['id']}", headers=author.headers)
    ).status == 204
    left = await collect(client, f"/api/v1/posts/{pid}/comments", author)
    assert [c["text"] for c in left] == ["c3", "c4"]
    assert (await get_json(client, f"/api/v1/posts/{pid}", author))["comment_count"] == 2
    await expect_error(
        await client.delete(f"/api/v1/comments/{made[0]['id']}", headers=author.headers),
        404,
        "not_found",
    )


async def test_reactions_replace_and_remove(client: TestClient) -> None:
    author, friend = await register(client), await register(client)
    await befriend(client, author, friend)
    pid = (await create_post(client, author, "react!", "friends"))["id"]
    resp = await client.put(
        f"/api/v1/posts/{pid}/reactions", headers=friend.headers, json={"type": "like"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["reaction_counts"] == {"like": 1} and body["my_reaction"] == "like"
    body = await (
        await client.put(
            f"/api/v1/posts/{pid}/reactions", headers=friend.headers, json={"type": "love"}
        )
    ).json()
    assert body["reaction_counts"] == {"love": 1} and body["my_reaction"] == "love"
    body = await (
        await client.put(
            f"/api/v1/posts/{pid}/reactions", headers=author.headers, json={"type": "love"}
        )
    ).json()
    assert body["reaction_counts"] == {"love": 2}
    assert (await get_json(client, f"/api/v1/posts/{pid}", friend))["my_reaction"] == "love"
    assert (
        await client.delete(f"/api/v1/posts/{pid}/reactions", headers=friend.headers)
    ).status == 204
    assert (
        await client.delete(f"/api/v1/posts/{pid}/reactions", headers=friend.headers)
    ).status == 204
    after = await get_json(client, f"/api/v1/posts/{pid}", friend)
    assert after["reaction_counts"] == {"love": 1} and after["my_reaction"] is None
    await expect_error(
        await client.put(
            f"/api/v1/posts/{pid}/reactions", headers=friend.headers, json={"type": "meh"}
        ),
        422,
        "validation_error",
    )


async def test_counters_stay_exact_under_concurrent_writers(
    client: TestClient, database_url: str
) -> None:
    author = await register(client)
    users = [await register(client) for _ in range(24)]
    pid = (await create_post(client, author, "go viral", "public"))["id"]
    types = ["like", "love", "haha", "wow", "sad", "angry"]
    rng = random.Random(7)

    async def churn(user) -> None:  # type: ignore[no-untyped-def]
        for _ in range(6):
            action = rng.random()
            if action < 0.6:
                await client.put(
                    f"/api/v1/posts/{pid}/reactions",
                    headers=user.headers,
                    json={"type": rng.choice(types)},
                )
            elif action < 0.8:
                await client.delete(f"/api/v1/posts/{pid}/reactions", headers=user.headers)
            else:
                await client.post(
                    f"/api/v1/posts/{pid}/comments", headers=user.headers, json={"text": "me too"}
                )

    await asyncio.gather(*[churn(u) for u in users])
    post = await get_json(client, f"/api/v1/posts/{pid}", author)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT type, count(*) FROM content.reactions WHERE post_id = $1 GROUP BY type",
            int(pid),
        )
        comments = await conn.fetchval(
            "SELECT count(*) FROM content.comments WHERE post_id = $1", int(pid)
        )
    finally:
        await conn.close()
    assert post["reaction_counts"] == {r["type"]: r["count"] for r in rows}
    assert post["comment_count"] == comments
    assert sum(post["reaction_counts"].values()) > 0 and comments > 0


async def test_deleting_users_with_cross_reactions_in_one_statement(
    client: TestClient, database_url: str
) -> None:
    """Counter triggers must cope with a post and its reactions going in the same cascade."""
    a, b = await register(client), await register(client)
    await befriend(client, a, b)
    pa = await create_post(client, a, "a's", "public")
    pb = await create_post(client, b, "b's", "public")
    for user, post in ((a, pb), (b, pa), (a, pa)):
        await client.put(
            f"/api/v1/posts/{post['id']}/reactions", headers=user.headers, json={"type": "like"}
        )
        await client.post(
            f"/api/v1/posts/{post['id']}/comments", headers=user.headers, json={"text": "hi"}
        )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "DELETE FROM accounts.users WHERE id = ANY($1::bigint[])", [int(a.id), int(b.id)]
        )
        left = await conn.fetchval(
            "SELECT count(*) FROM content.posts WHERE id = ANY($1::bigint[])",
            [int(pa["id"]), int(pb["id"])],
        )
        assert left == 0
    finally:
        await conn.close()
