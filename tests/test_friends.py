"""Friend requests, friendships and blocks."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp.test_utils import TestClient

from agora.storage import social
from tests.support.api import User, befriend, block, collect, expect_error, get_json, register


def ids(users: list[dict]) -> set[str]:  # type: ignore[type-arg]
    return {u["user"]["id"] for u in users}


async def test_request_accept_and_lists(client: TestClient) -> None:
    a, b = await register(client), await register(client)
    resp = await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    assert resp.status == 201
    req = await resp.json()
    assert (
        req["status"] == "pending"
        and req["from_user"]["id"] == a.id
        and req["to_user"]["id"] == b.id
    )
    assert set(req) >= {"id", "from_user", "to_user", "status", "created_at"}

    incoming = await get_json(client, "/api/v1/friends/requests?direction=incoming", b)
    assert [r["id"] for r in incoming["items"]] == [req["id"]]
    outgoing = await get_json(client, "/api/v1/friends/requests?direction=outgoing", a)
    assert [r["id"] for r in outgoing["items"]] == [req["id"]]
    assert (await get_json(client, "/api/v1/friends/requests?direction=incoming", a))["items"] == []

    resp = await client.post(f"/api/v1/friends/requests/{req['id']}/accept", headers=b.headers)
    assert resp.status == 200 and (await resp.json())["status"] == "accepted"
    assert ids((await get_json(client, "/api/v1/friends", a))["items"]) == {b.id}
    assert ids((await get_json(client, "/api/v1/friends", b))["items"]) == {a.id}
    assert ids((await get_json(client, f"/api/v1/users/{a.id}/friends"))["items"]) == {b.id}
    assert (await get_json(client, "/api/v1/friends/requests?direction=incoming", b))["items"] == []


async def test_crossed_request_accepts_itself(client: TestClient) -> None:
    a, b = await register(client), await register(client)
    first = await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    assert first.status == 201
    crossed = await client.post(
        "/api/v1/friends/requests", headers=b.headers, json={"user_id": a.id}
    )
    assert crossed.status == 200
    body = await crossed.json()
    assert body["status"] == "accepted" and body["id"] == (await first.json())["id"]
    assert ids((await get_json(client, "/api/v1/friends", b))["items"]) == {a.id}


async def test_simultaneous_crossed_requests_make_one_friendship(client: TestClient) -> None:
    for _ in range(5):
        a, b = await register(client), await register(client)
        r1, r2 = await asyncio.gather(
            client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id}),
            client.post("/api/v1/friends/requests", headers=b.headers, json={"user_id": a.id}),
        )
        assert sorted([r1.status, r2.status]) == [200, 201]
        assert ids((await get_json(client, "/api/v1/friends", a))["items"]) == {b.id}


async def test_request_errors(client: TestClient) -> None:
    a, b, c = await register(client), await register(client), await register(client)
    await expect_error(
        await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": a.id}),
        422,
        "validation_error",
    )
    await expect_error(
        await client.post(
            "/api/v1/friends/requests", headers=a.headers, json={"user_id": "999999999"}
        ),
        404,
        "not_found",
    )
    await expect_error(
        await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": 5}),
        422,
        "validation_error",
    )
    resp = await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    req_id = (await resp.json())["id"]
    await expect_error(
        await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id}),
        409,
        "conflict",
    )
    # Only the recipient answers; a stranger cannot even see the request.
    await expect_error(
        await client.post(f"/api/v1/friends/requests/{req_id}/accept", headers=a.headers),
        403,
        "forbidden",
    )
    await expect_error(
        await client.post(f"/api/v1/friends/requests/{req_id}/accept", headers=c.headers),
        404,
        "not_found",
    )
    await expect_error(
        await client.delete(f"/api/v1/friends/requests/{req_id}", headers=b.headers),
        403,
        "forbidden",
    )
    assert (
        await client.post(f"/api/v1/friends/requests/{req_id}/accept", headers=b.headers)
    ).status == 200
    await expect_error(
        await client.post(f"/api/v1/friends/requests/{req_id}/accept", headers=b.headers),
        409,
        "conflict",
    )
    await expect_error(
        await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id}),
        409,
        "conflict",
    )
    await expect_error(
        await client.get("/api/v1/friends/requests?direction=sideways", headers=a.headers),
        400,
        "validation_error",
    )


async def test_decline_and_cancel(client: TestClient) -> None:
    a, b = await register(client), await register(client)
    req = await (
        await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    ).json()
    resp = await client.post(f"/api/v1/friends/requests/{req['id']}/decline", headers=b.headers)
    assert resp.status == 200 and (await resp.json())["status"] == "declined"
    assert (await get_json(client, "/api/v1/friends", a))["items"] == []
    # A declined request may be sent again, and withdrawn by its sender.
    again = await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    assert again.status == 201
    again_id = (await again.json())["id"]
    assert (
        await client.delete(f"/api/v1/friends/requests/{again_id}", headers=a.headers)
    ).status == 204
    assert (await get_json(client, "/api/v1/friends/requests?direction=incoming", b))["items"] == []


async def test_unfriend(client: TestClient) -> None:
    a, b = await register(client), await register(client)
    await befriend(client, a, b)
    assert (await client.delete(f"/api/v1/friends/{b.id}", headers=a.headers)).status == 204
    assert (await get_json(client, "/api/v1/friends", a))["items"] == []
    assert (await get_json(client, "/api/v1/friends", b))["items"] == []
    await expect_error(
        await client.delete(f"/api/v1/friends/{b.id}", headers=a.headers), 404, "not_found"
    )


async def test_block_ends_friendship_and_hides_both_ways(client: TestClient) -> None:
    a, b, c = await register(client), await register(client), await register(client)
    await befriend(client, a, b)
    await befriend(client, b, c)
    # c has a pending request to a; a blocks b; then a blocks c.
    pending = await client.post(
        "/api/v1/friends/requests", headers=c.headers, json={"user_id": a.id}
    )
    assert pending.status == 201
    resp = await client.post("/api/v1/blocks", headers=a.headers, json={"user_id": b.id})
    assert resp.status == 201
    assert (await resp.json())["user"]["id"] == b.id
    assert (
        await client.post("/api/v1/blocks", headers=a.headers, json={"user_id": b.id})
    ).status == 200
    assert (await get_json(client, "/api/v1/friends", a))["items"] == []
    assert (await get_json(client, "/api/v1/friends", b))["items"] != []  # still friends with c
    # Hidden from each other: profiles, friend lists, requests.
    await expect_error(
        await client.get(f"/api/v1/users/{a.id}", headers=b.headers), 404, "not_found"
    )
    await expect_error(
        await client.get(f"/api/v1/users/{b.id}", headers=a.headers), 404, "not_found"
    )
    await expect_error(
        await client.get(f"/api/v1/users/{a.id}/friends", headers=b.headers), 404, "not_found"
    )
    assert b.id not in ids((await get_json(client, f"/api/v1/users/{c.id}/friends", a))["items"])
    await expect_error(
        await client.post("/api/v1/friends/requests", headers=b.headers, json={"user_id": a.id}),
        404,
        "not_found",
    )
    await expect_error(
        await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id}),
        409,
        "conflict",
    )
    # Blocking cancels pending requests in either direction.
    await block(client, a, c)
    assert (await get_json(client, "/api/v1/friends/requests?direction=incoming", a))["items"] == []
    assert (await get_json(client, "/api/v1/friends/requests?direction=outgoing", c))["items"] == []
    blocked = await collect(client, "/api/v1/blocks", a)
    assert {x["user"]["id"] for x in blocked} == {b.id, c.id}
    # Unblocking shows them again but does not restore the friendship.
    assert (await client.delete(f"/api/v1/blocks/{b.id}", headers=a.headers)).status == 204
    assert (await client.get(f"/api/v1/users/{a.id}", headers=b.headers)).status == 200
    assert (await get_json(client, "/api/v1/friends", a))["items"] == []
    await expect_error(
        await client.delete(f"/api/v1/blocks/{b.id}", headers=a.headers), 404, "not_found"
    )


async def test_friend_list_pagination(client: TestClient) -> None:
    hub = await register(client)
    others: list[User] = [await register(client) for _ in range(7)]
    for other in others:
        await befriend(client, hub, other)
    listed = await collect(client, "/api/v1/friends", hub, limit=3)
    assert [f["user"]["id"] for f in listed] == [o.id for o in reversed(others)]
    await expect_error(
        await client.get("/api/v1/friends?cursor=garbage", headers=hub.headers),
        400,
        "validation_error",
    )
    await expect_error(
        await client.get("/api/v1/friends?limit=101", headers=hub.headers), 400, "validation_error"
    )


async def add_friends(database_url: str, user: User, count: int) -> None:
    """``count`` new friends for ``user``, made directly: the limit, not the way there, is
    under test."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            WITH made AS (
                INSERT INTO accounts.users (username, email, password_hash)
                SELECT 'l' || $2 || '_' || g, 'l' || $2 || '_' || g || '@x.test', 'x'
                FROM generate_series(1, $3::int) g RETURNING id)
            INSERT INTO social.friendships (user_id, friend_id)
            SELECT $1::bigint, id FROM made UNION ALL SELECT id, $1::bigint FROM made
        """,
            int(user.id),
            user.id[-9:],
            count,
        )
    finally:
        await conn.close()


async def test_friend_limit(client: TestClient, database_url: str) -> None:
    popular, newcomer = await register(client), await register(client)
    await add_friends(database_url, popular, 5000)
    err = await expect_error(
        await client.post(
            "/api/v1/friends/requests", headers=popular.headers, json={"user_id": newcomer.id}
        ),
        409,
        "conflict",
    )
    assert "5000" in err["message"]
    resp = await client.post(
        "/api/v1/friends/requests", headers=newcomer.headers, json={"user_id": popular.id}
    )
    assert resp.status == 201
    req_id = (await resp.json())["id"]
    await expect_error(
        await client.post(f"/api/v1/friends/requests/{req_id}/accept", headers=popular.headers),
        409,
        "conflict",
    )
    page = await get_json(client, "/api/v1/friends?limit=100", popular)
    assert len(page["items"]) == 100 and page["next_cursor"]


async def test_friend_cap_holds_under_concurrent_acceptances(
    client: TestClient, database_url: str
) -> None:
    """One friend short of the cap, eight friendships race (four accepts of incoming requests,
    four crossed requests): exactly one gets through, the others are refused with the cap.

    To make them truly concurrent, the test holds the eight pairs' locks until all eight
    transactions wait for them, then lets them all go at once."""
    popular = await register(client)
    await add_friends(database_url, popular, 4999)
    partners = [await register(client) for _ in range(8)]
    incoming = []
    for partner in partners[:4]:
        resp = await client.post(
            "/api/v1/friends/requests", headers=partner.headers, json={"user_id": popular.id}
        )
        assert resp.status == 201, await resp.text()
        incoming.append((await resp.json())["id"])
    for partner in partners[4:]:
        resp = await client.post(
            "/api/v1/friends/requests", headers=popular.headers, json={"user_id": partner.id}
        )
        assert resp.status == 201, await resp.text()

    gate = await asyncpg.connect(database_url)
    try:
        hold = social.LOCK_PAIR.replace("pg_advisory_xact_lock", "pg_advisory_lock")
        for partner in partners:
            await gate.execute(hold, int(popular.id), int(partner.id))
        racing = asyncio.gather(
            *(
                client.post(f"/api/v1/friends/requests/{rid}/accept", headers=popular.headers)
                for rid in incoming
            ),
            *(
                client.post(
                    "/api/v1/friends/requests", headers=p.headers, json={"user_id": popular.id}
                )
                for p in partners[4:]
            ),
        )
        for _ in range(500):
            waiting = await gate.fetchval(
                """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                """
            )
            if waiting == 8:
                break
            await asyncio.sleep(0.01)
        assert waiting == 8
        await gate.execute("SELECT pg_advisory_unlock_all()")
        answers = await racing
    finally:
        await gate.close()
    assert sorted(r.status for r in answers) == [200] + [409] * 7
    for resp in answers:
        if resp.status == 409:
            err = await expect_error(resp, 409, "conflict")
            assert err["message"] == "a user can have at most 5000 friends"
    conn = await asyncpg.connect(database_url)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM social.friendships WHERE user_id = $1", int(popular.id)
        )
    finally:
        await conn.close()
    assert count == 5000
