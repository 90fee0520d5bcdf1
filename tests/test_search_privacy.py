"""Search obeys the one visibility rule: viewers x visibilities x relationships, users and
messages, and what changes take effect at once.

The backends pre-filter only on the coarse audience (visibility, friendship, membership); blocks
and suspension are the re-check's (services/search.py). So the blocked and blocker rows of the
matrix, the suspended user and the blocked sender fail if the re-check is removed, and
``test_stale_candidates_are_rechecked`` replays a backend's answer from before a change (what a
lagging index returns) through it.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from agora.search.backend import Scope
from agora.search.query import parse_query
from agora.server import keys
from tests.support.api import User, befriend, block, create_post, register
from tests.support.search import Searcher, word

VISIBILITIES = ("public", "friends", "private")
VIEWERS = ("author", "friend", "stranger", "blocked", "blocker")
SEES = {
    "public": {"author", "friend", "stranger"},
    "friends": {"author", "friend"},
    "private": {"author"},
}


@pytest.fixture
async def world(searcher: Searcher) -> dict[str, Any]:
    client = searcher.client
    users = {name: await register(client) for name in VIEWERS}
    author = users["author"]
    for name in ("friend", "blocked", "blocker"):
        await befriend(client, author, users[name])
    await block(client, author, users["blocked"])
    await block(client, users["blocker"], author)
    w = word()
    posts = {v: (await create_post(client, author, f"{w} {v}", v))["id"] for v in VISIBILITIES}
    return {"users": users, "posts": posts, "word": w}


@pytest.mark.parametrize("viewer", VIEWERS)
async def test_matrix(searcher: Searcher, world: dict[str, Any], viewer: str) -> None:
    users: dict[str, User] = world["users"]
    found = set(await searcher.ids(users[viewer], world["word"]))
    expected = {world["posts"][v] for v in VISIBILITIES if viewer in SEES[v]}
    assert found == expected, viewer
    # Narrowed to the author, the same answer.
    by_author = f"{world['word']} from:{users['author'].username}"
    assert set(await searcher.ids(users[viewer], by_author)) == expected, viewer


@pytest.mark.parametrize("viewer", VIEWERS)
async def test_people_search_hides_blocks(
    searcher: Searcher, world: dict[str, Any], viewer: str
) -> None:
    users: dict[str, User] = world["users"]
    author = users["author"]
    found = await searcher.ids(users[viewer], author.username, "users")
    assert (author.id in found) == (viewer not in ("blocked", "blocker")), viewer


async def test_suspended_users_and_their_content_disappear(
    searcher: Searcher, world: dict[str, Any], db: asyncpg.Connection
) -> None:
    users: dict[str, User] = world["users"]
    author, friend = users["author"], users["friend"]
    assert author.id in await searcher.ids(friend, author.username, "users")
    assert await searcher.ids(friend, world["word"])
    await db.execute("UPDATE accounts.users SET status = 'suspended' WHERE id = $1", int(author.id))
    assert author.id not in await searcher.ids(friend, author.username, "users")
    assert await searcher.ids(friend, world["word"]) == []


async def test_deleted_private_and_blocked_go_at_once(
    searcher: Searcher, world: dict[str, Any]
) -> None:
    client = searcher.client
    users: dict[str, User] = world["users"]
    author, friend, stranger = users["author"], users["friend"], users["stranger"]
    public, friends_only = world["posts"]["public"], world["posts"]["friends"]
    assert set(await searcher.ids(friend, world["word"])) == {public, friends_only}

    resp = await client.delete(f"/api/v1/posts/{public}", headers=author.headers)
    assert resp.status == 204
    resp = await client.patch(
        f"/api/v1/posts/{friends_only}", headers=author.headers, json={"visibility": "private"}
    )
    assert resp.status == 200
    # No waiting for an index (nor for the windows a node keeps): the very next search.
    page = await searcher.get(friend, world["word"])
    assert page["items"] == []

    newer = (await create_post(client, author, f"{world['word']} again", "public"))["id"]
    assert await searcher.ids(stranger, world["word"]) == [newer]
    await block(client, stranger, author)
    page = await searcher.get(stranger, world["word"])
    assert page["items"] == []
    page = await searcher.get(stranger, author.username, "users")
    assert author.id not in [item["user"]["id"] for item in page["items"]]


async def test_messages_need_membership_and_hide_blocked_senders(searcher: Searcher) -> None:
    client = searcher.client
    owner, talker, quiet, outsider = [await register(client) for _ in range(4)]
    for user in (talker, quiet):
        await befriend(client, owner, user)
    resp = await client.post(
        "/api/v1/conversations",
        headers=owner.headers,
        json={"member_ids": [talker.id, quiet.id], "title": "g"},
    )
    assert resp.status == 201
    conversation = (await resp.json())["id"]
    w = word()
    sent = {}
    for sender in (owner, talker):
        resp = await client.post(
            f"/api/v1/conversations/{conversation}/messages",
            headers=sender.headers,
            json={"client_id": word(), "text": f"{w} from {sender.username}"},
        )
        assert resp.status == 201, await resp.text()
        sent[sender.username] = (await resp.json())["id"]

    assert set(await searcher.ids(quiet, w, "messages")) == set(sent.values())
    assert await searcher.ids(outsider, w, "messages") == []
    # A block hides the sender's messages from the search (not from the conversation).
    await block(client, quiet, talker)
    assert await searcher.ids(quiet, w, "messages") == [sent[owner.username]]
    # Removed from the conversation: nothing of it any more.
    resp = await client.delete(
        f"/api/v1/conversations/{conversation}/members/{quiet.id}", headers=owner.headers
    )
    assert resp.status == 204, await resp.text()
    assert await searcher.ids(quiet, w, "messages") == []


async def test_stale_candidates_are_rechecked(searcher: Searcher, world: dict[str, Any]) -> None:
    """What an index answered before the changes (a lagging Elasticsearch; a candidate read just
    before a commit) shows nothing the changes took away."""
    client = searcher.client
    service = client.app[keys.SEARCH]
    users: dict[str, User] = world["users"]
    author, friend, stranger = users["author"], users["friend"], users["stranger"]
    await searcher.indexed()

    async def candidates(viewer: User, q: str, kind: str = "posts") -> Any:
        query = parse_query(q)
        return await service.backend.search(
            kind,
            query,
            Scope(viewer_id=int(viewer.id)),
            None,
            20,  # type: ignore[arg-type]
        )

    stale_friend = await candidates(friend, world["word"])
    stale_stranger = await candidates(stranger, world["word"])
    stale_people = await candidates(stranger, author.username, "users")
    query = parse_query(world["word"])
    before, _ = await service._recheck("posts", int(friend.id), query, stale_friend.hits, 20)
    assert len(before) == 2
    before, _ = await service._recheck("posts", int(stranger.id), query, stale_stranger.hits, 20)
    assert len(before) == 1
    assert int(author.id) in [h.id for h in stale_people.hits]

    resp = await client.patch(
        f"/api/v1/posts/{world['posts']['friends']}",
        headers=author.headers,
        json={"visibility": "private"},
    )
    assert resp.status == 200
    resp = await client.delete(f"/api/v1/posts/{world['posts']['public']}", headers=author.headers)
    assert resp.status == 204
    await block(client, author, stranger)

    assert await service._recheck("posts", int(friend.id), query, stale_friend.hits, 20) == ([], -1)
    assert await service._recheck("posts", int(stranger.id), query, stale_stranger.hits, 20) == (
        [],
        -1,
    )
    people, _ = await service._recheck(
        "users", int(stranger.id), parse_query(author.username), stale_people.hits, 20
    )
    assert author.id not in [p.user.id for p in people]  # type: ignore[union-attr]
