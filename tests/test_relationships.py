"""What a user is to the caller: `relationship` on GET /users/{id} and the batch
GET /users/relationships (friends, pending requests each way with their ids, blocking)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.api import User, befriend, block, expect_error, get_json, register
from tests.support.moderation import suspend, with_role

API = "/api/v1"
STRANGERS = {
    "friends": False,
    "incoming_request_id": None,
    "outgoing_request_id": None,
    "blocking": False,
}


async def relationship(client: TestClient, me: User, other: User) -> Any:
    body = await get_json(client, f"{API}/users/{other.id}", me)
    assert body["id"] == other.id
    return body["relationship"]


async def batch(client: TestClient, me: User, ids: list[str]) -> list[dict[str, Any]]:
    body = await get_json(client, f"{API}/users/relationships?ids={','.join(ids)}", me)
    assert set(body) == {"items"}
    return body["items"]  # type: ignore[no-any-return]


async def ask(client: TestClient, sender: User, to: User) -> str:
    resp = await client.post(
        f"{API}/friends/requests", headers=sender.headers, json={"user_id": to.id}
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def both_ways(client: TestClient, a: User, b: User) -> tuple[Any, Any]:
    """a's relationship to b and b's to a, from the profile; the batch says the same."""
    ab, ba = await relationship(client, a, b), await relationship(client, b, a)
    assert await batch(client, a, [b.id]) == [{"id": b.id, **ab}]
    assert await batch(client, b, [a.id]) == [{"id": a.id, **ba}]
    return ab, ba


async def test_strangers_then_a_request_then_accepted(client: TestClient) -> None:
    a, b = await register(client), await register(client)
    assert await both_ways(client, a, b) == (STRANGERS, STRANGERS)
    request_id = await ask(client, a, b)
    ab, ba = await both_ways(client, a, b)
    assert ab == {**STRANGERS, "outgoing_request_id": request_id}
    assert ba == {**STRANGERS, "incoming_request_id": request_id}
    resp = await client.post(f"{API}/friends/requests/{request_id}/accept", headers=b.headers)
    assert resp.status == 200
    friends = {**STRANGERS, "friends": True}
    assert await both_ways(client, a, b) == (friends, friends)
    # Unfriended: strangers again, both ways.
    assert (await client.delete(f"{API}/friends/{a.id}", headers=b.headers)).status == 204
    assert await both_ways(client, a, b) == (STRANGERS, STRANGERS)


async def test_crossed_request_accepts(client: TestClient) -> None:
    a, b = await register(client), await register(client)
    await ask(client, a, b)
    resp = await client.post(f"{API}/friends/requests", headers=b.headers, json={"user_id": a.id})
    assert resp.status == 200
    friends = {**STRANGERS, "friends": True}
    assert await both_ways(client, a, b) == (friends, friends)


async def test_declined_and_cancelled_requests_leave_nothing_pending(client: TestClient) -> None:
    a, b = await register(client), await register(client)
    request_id = await ask(client, a, b)
    resp = await client.post(f"{API}/friends/requests/{request_id}/decline", headers=b.headers)
    assert resp.status == 200
    assert await both_ways(client, a, b) == (STRANGERS, STRANGERS)
    # Asking again is a new request, with a new id; cancelled, it is gone too.
    again = await ask(client, a, b)
    assert again != request_id
    assert (await relationship(client, b, a))["incoming_request_id"] == again
    assert (await client.delete(f"{API}/friends/requests/{again}", headers=a.headers)).status == 204
    assert await both_ways(client, a, b) == (STRANGERS, STRANGERS)


async def test_blocks(client: TestClient) -> None:
    """A block hides both ways, profiles included (tests/test_friends.py): the blocker learns of
    their block from the batch (as from GET /blocks), the blocked user learns nothing."""
    a, b = await register(client), await register(client)
    await befriend(client, a, b)
    await block(client, a, b)
    await expect_error(await client.get(f"{API}/users/{b.id}", headers=a.headers), 404, "not_found")
    await expect_error(await client.get(f"{API}/users/{a.id}", headers=b.headers), 404, "not_found")
    assert await batch(client, a, [b.id]) == [{"id": b.id, **STRANGERS, "blocking": True}]
    assert await batch(client, b, [a.id]) == []
    # Blocked both ways: a still learns only of a's own block.
    await block(client, b, a)
    assert await batch(client, a, [b.id]) == [{"id": b.id, **STRANGERS, "blocking": True}]
    assert (await client.delete(f"{API}/blocks/{b.id}", headers=a.headers)).status == 204
    assert await batch(client, a, [b.id]) == []  # b still blocks a
    assert (await client.delete(f"{API}/blocks/{a.id}", headers=b.headers)).status == 204
    # Unblocked: strangers (the friendship does not come back).
    assert await both_ways(client, a, b) == (STRANGERS, STRANGERS)


async def test_own_profile_and_anonymous_callers_have_null_relationship(
    client: TestClient,
) -> None:
    a, b = await register(client), await register(client)
    own = await get_json(client, f"{API}/users/{a.id}", a)
    assert "relationship" in own and own["relationship"] is None
    anonymous = await get_json(client, f"{API}/users/{b.id}")
    assert "relationship" in anonymous and anonymous["relationship"] is None
    # In the batch, the caller's own id is left out.
    assert await batch(client, a, [a.id, b.id]) == [{"id": b.id, **STRANGERS}]


async def test_batch_order_repeats_and_what_is_left_out(client: TestClient) -> None:
    me = await register(client)
    friend, asked_me, i_asked, stranger, blocks_me, i_block = [
        await register(client) for _ in range(6)
    ]
    await befriend(client, me, friend)
    incoming = await ask(client, asked_me, me)
    outgoing = await ask(client, me, i_asked)
    await block(client, blocks_me, me)
    await block(client, me, i_block)
    unknown = "9007199254740000"
    ids = [
        stranger.id,
        unknown,
        i_block.id,
        friend.id,
        blocks_me.id,
        me.id,
        i_asked.id,
        asked_me.id,
        friend.id,
    ]
    assert await batch(client, me, ids) == [
        {"id": stranger.id, **STRANGERS},
        {"id": i_block.id, **STRANGERS, "blocking": True},
        {"id": friend.id, **STRANGERS, "friends": True},
        {"id": i_asked.id, **STRANGERS, "outgoing_request_id": outgoing},
        {"id": asked_me.id, **STRANGERS, "incoming_request_id": incoming},
    ]
    assert await batch(client, me, []) == []


async def test_batch_leaves_out_suspended_users(client: TestClient) -> None:
    me, other = await register(client), await register(client)
    await befriend(client, me, other)
    await suspend(client, await with_role(client, "moderator"), other.id)
    assert await batch(client, me, [other.id]) == []
    await expect_error(
        await client.get(f"{API}/users/{other.id}", headers=me.headers), 404, "not_found"
    )


async def test_batch_takes_at_most_100_ids(client: TestClient) -> None:
    me = await register(client)
    others = [await register(client) for _ in range(3)]
    hundred = [o.id for o in others] + [str(10**15 + n) for n in range(97)]
    assert [r["id"] for r in await batch(client, me, hundred)] == [o.id for o in others]
    resp = await client.get(
        f"{API}/users/relationships?ids={','.join([*hundred, '5'])}", headers=me.headers
    )
    err = await expect_error(resp, 422, "validation_error")
    assert set(err["fields"]) == {"ids"}


async def test_batch_refuses_malformed_ids(client: TestClient) -> None:
    me = await register(client)
    for bad in ("abc", "1,,2", "1,", ",1", "1;2", "-1", "1.5", "1, 2", "1" * 17, "%00"):
        resp = await client.get(
            f"{API}/users/relationships", params={"ids": bad}, headers=me.headers
        )
        err = await expect_error(resp, 422, "validation_error")
        assert set(err["fields"]) == {"ids"}, bad


async def test_batch_needs_an_account_and_is_not_taken_for_a_user_id(client: TestClient) -> None:
    await expect_error(await client.get(f"{API}/users/relationships?ids=1"), 401, "unauthorized")
    doc = await get_json(client, "/api/openapi.json")
    users = doc["paths"][f"{API}/users/relationships"]["get"]
    assert "422" in users["responses"] and users["security"] == [{"bearer": []}]
    profile = doc["paths"][f"{API}/users/{{id}}"]["get"]
    schema = profile["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert "relationship" in doc["components"]["schemas"][schema.split("/")[-1]]["properties"]
