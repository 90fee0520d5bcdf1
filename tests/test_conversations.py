"""Conversations over REST: direct (deduplicated) and group, members, history, REST sends."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.support.api import User, befriend, block, collect, expect_error, get_json, register


async def _friends(client: TestClient, n: int) -> tuple[User, list[User]]:
    me = await register(client)
    others = [await register(client) for _ in range(n)]
    for other in others:
        await befriend(client, me, other)
    return me, others


async def test_direct_conversations_are_deduplicated(client: TestClient) -> None:
    me, (pal,) = await _friends(client, 1)
    first = await client.post(
        "/api/v1/conversations", headers=me.headers, json={"member_ids": [pal.id]}
    )
    assert first.status == 201
    body = await first.json()
    assert body["kind"] == "direct" and body["title"] is None and body["last_seq"] == 0
    assert {m["id"] for m in body["members"]} == {me.id, pal.id}
    assert set(body) >= {"id", "kind", "title", "members", "last_seq", "created_at"}
    again = await client.post(
        "/api/v1/conversations", headers=pal.headers, json={"member_ids": [me.id]}
    )
    assert again.status == 200 and (await again.json())["id"] == body["id"]
    titled = await client.post(
        "/api/v1/conversations", headers=me.headers, json={"member_ids": [pal.id], "title": "Us"}
    )
    assert titled.status == 201 and (await titled.json())["kind"] == "group"


async def test_only_friends_may_be_added(client: TestClient) -> None:
    me, (pal,) = await _friends(client, 1)
    stranger = await register(client)
    await expect_error(
        await client.post(
            "/api/v1/conversations", headers=me.headers, json={"member_ids": [pal.id, stranger.id]}
        ),
        403,
        "forbidden",
    )
    await expect_error(
        await client.post(
            "/api/v1/conversations", headers=me.headers, json={"member_ids": ["424242"]}
        ),
        403,
        "forbidden",
    )
    await expect_error(
        await client.post(
            "/api/v1/conversations", headers=me.headers, json={"member_ids": [me.id]}
        ),
        422,
        "validation_error",
    )
    await expect_error(
        await client.post("/api/v1/conversations", headers=me.headers, json={"member_ids": []}),
        422,
        "validation_error",
    )
    await block(client, pal, me)
    await expect_error(
        await client.post(
            "/api/v1/conversations", headers=me.headers, json={"member_ids": [pal.id]}
        ),
        403,
        "forbidden",
    )


async def test_rest_send_history_and_resend(client: TestClient) -> None:
    me, (a, b) = await _friends(client, 2)
    conv = await (
        await client.post(
            "/api/v1/conversations",
            headers=me.headers,
            json={"member_ids": [a.id, b.id], "title": "Trio"},
        )
    ).json()
    cid = conv["id"]
    sent = []
    for i in range(12):
        resp = await client.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=me.headers,
            json={"text": f"m{i}", "client_id": f"c{i}"},
        )
        assert resp.status == 201
        sent.append(await resp.json())
    assert [m["seq"] for m in sent] == list(range(1, 13))
    assert set(sent[0]) >= {
        "id",
        "conversation_id",
        "seq",
        "sender_id",
        "text",
        "client_id",
        "created_at",
    }
    resend = await client.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=me.headers,
        json={"text": "different text", "client_id": "c3"},
    )
    assert resend.status == 200 and (await resend.json()) == sent[3]

    newest_first = await collect(client, f"/api/v1/conversations/{cid}/messages", a, limit=5)
    assert [m["seq"] for m in newest_first] == list(range(12, 0, -1))
    after = await collect(client, f"/api/v1/conversations/{cid}/messages?after_seq=4", a, limit=3)
    assert [m["seq"] for m in after] == list(range(5, 13))
    before = await get_json(client, f"/api/v1/conversations/{cid}/messages?before_seq=4", a)
    assert [m["seq"] for m in before["items"]] == [3, 2, 1] and before["next_cursor"] is None
    await expect_error(
        await client.get(
            f"/api/v1/conversations/{cid}/messages?after_seq=1&before_seq=5", headers=a.headers
        ),
        400,
        "validation_error",
    )
    await expect_error(
        await client.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=me.headers,
            json={"text": "x" * 4001, "client_id": "long"},
        ),
        422,
        "validation_error",
    )
    await expect_error(
        await client.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=me.headers,
            json={"text": "hi", "client_id": "bad id!"},
        ),
        422,
        "validation_error",
    )


async def test_list_orders_by_activity_with_unread_counts(client: TestClient) -> None:
    me, (a, b, c) = await _friends(client, 3)
    ids = []
    for pal in (a, b, c):
        conv = await (
            await client.post(
                "/api/v1/conversations", headers=me.headers, json={"member_ids": [pal.id]}
            )
        ).json()
        ids.append(conv["id"])
    await client.post(
        f"/api/v1/conversations/{ids[0]}/messages",
        headers=a.headers,
        json={"text": "wake up", "client_id": "x1"},
    )
    await client.post(
        f"/api/v1/conversations/{ids[0]}/messages",
        headers=a.headers,
        json={"text": "again", "client_id": "x2"},
    )
    listed = await collect(client, "/api/v1/conversations", me, limit=2)
    assert [c["id"] for c in listed] == [ids[0], ids[2], ids[1]]
    assert listed[0]["unread_count"] == 2 and listed[1]["unread_count"] == 0


async def test_group_members(client: TestClient) -> None:
    me, (a, b, c) = await _friends(client, 3)
    stranger = await register(client)
    conv = await (
        await client.post(
            "/api/v1/conversations", headers=me.headers, json={"member_ids": [a.id], "title": "G"}
        )
    ).json()
    cid = conv["id"]
    resp = await client.post(
        f"/api/v1/conversations/{cid}/members", headers=me.headers, json={"user_ids": [b.id, c.id]}
    )
    assert resp.status == 200
    assert {m["id"] for m in (await resp.json())["members"]} == {me.id, a.id, b.id, c.id}
    await expect_error(
        await client.post(
            f"/api/v1/conversations/{cid}/members",
            headers=me.headers,
            json={"user_ids": [stranger.id]},
        ),
        403,
        "forbidden",
    )
    # A member other than the creator may leave but not remove others.
    await expect_error(
        await client.delete(f"/api/v1/conversations/{cid}/members/{c.id}", headers=b.headers),
        403,
        "forbidden",
    )
    assert (
        await client.delete(f"/api/v1/conversations/{cid}/members/{b.id}", headers=b.headers)
    ).status == 204
    assert (
        await client.delete(f"/api/v1/conversations/{cid}/members/{c.id}", headers=me.headers)
    ).status == 204
    await expect_error(
        await client.get(f"/api/v1/conversations/{cid}", headers=b.headers), 404, "not_found"
    )
    await expect_error(
        await client.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=c.headers,
            json={"text": "still here?", "client_id": "z"},
        ),
        404,
        "not_found",
    )
    direct = await (
        await client.post("/api/v1/conversations", headers=me.headers, json={"member_ids": [a.id]})
    ).json()
    await expect_error(
        await client.post(
            f"/api/v1/conversations/{direct['id']}/members",
            headers=me.headers,
            json={"user_ids": [b.id]},
        ),
        409,
        "conflict",
    )
