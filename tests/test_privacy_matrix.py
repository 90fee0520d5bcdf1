"""The visibility rule, exhaustively: viewer x visibility x path.

Viewers: the author, a friend, a stranger, a user the author blocked, a user who blocked the
author, and an anonymous caller. A post the viewer may not see must answer 404 (401 for the
anonymous caller where the path needs an account) on every path, and be absent from lists.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.support.api import User, befriend, block, create_post, register

VISIBILITIES = ("public", "friends", "private")
VIEWERS = ("author", "friend", "stranger", "blocked", "blocker", "anonymous")

# Who sees a post of each visibility (the feed holds only own and friends' posts).
SEES = {
    "public": {"author", "friend", "stranger", "anonymous"},
    "friends": {"author", "friend"},
    "private": {"author"},
}
IN_FEED = {
    "public": {"author", "friend"},
    "friends": {"author", "friend"},
    "private": {"author"},
}


@pytest.fixture
async def world(client: TestClient) -> dict[str, object]:
    users = {
        name: await register(client)
        for name in ("author", "friend", "stranger", "blocked", "blocker")
    }
    author = users["author"]
    await befriend(client, author, users["friend"])
    # Both were friends first: the block must take that away.
    await befriend(client, author, users["blocked"])
    await befriend(client, author, users["blocker"])
    await block(client, author, users["blocked"])
    await block(client, users["blocker"], author)
    posts = {v: await create_post(client, author, f"a {v} post", v) for v in VISIBILITIES}
    return {"users": users, "posts": posts}


def _headers(world: dict[str, object], viewer: str) -> dict[str, str]:
    users: dict[str, User] = world["users"]  # type: ignore[assignment]
    return {} if viewer == "anonymous" else users[viewer].headers


@pytest.mark.parametrize("visibility", VISIBILITIES)
@pytest.mark.parametrize("viewer", VIEWERS)
async def test_matrix(
    client: TestClient, world: dict[str, object], viewer: str, visibility: str
) -> None:
    users: dict[str, User] = world["users"]  # type: ignore[assignment]
    post = world["posts"][visibility]  # type: ignore[index]
    pid, author = post["id"], users["author"]
    headers = _headers(world, viewer)
    sees = viewer in SEES[visibility]
    hidden_status = 404

    # get
    resp = await client.get(f"/api/v1/posts/{pid}", headers=headers)
    assert resp.status == (200 if sees else hidden_status), (viewer, visibility, "get")

    # user posts
    resp = await client.get(f"/api/v1/users/{author.id}/posts?limit=100", headers=headers)
    if viewer in ("blocked", "blocker"):
        assert resp.status == 404
    else:
        assert resp.status == 200
        listed = {p["id"] for p in (await resp.json())["items"]}
        assert (pid in listed) == sees, (viewer, visibility, "user posts")

    # feed
    resp = await client.get("/api/v1/feed?limit=100", headers=headers)
    if viewer == "anonymous":
        assert resp.status == 401
    else:
        assert resp.status == 200
        listed = {p["id"] for p in (await resp.json())["items"]}
        assert (pid in listed) == (viewer in IN_FEED[visibility]), (viewer, visibility, "feed")

    # comments (read and write)
    resp = await client.get(f"/api/v1/posts/{pid}/comments", headers=headers)
    assert resp.status == (200 if sees else hidden_status), (viewer, visibility, "comments")
    resp = await client.post(f"/api/v1/posts/{pid}/comments", headers=headers, json={"text": "hi"})
    expected = 401 if viewer == "anonymous" else (201 if sees else hidden_status)
    assert resp.status == expected, (viewer, visibility, "comment")

    # react
    resp = await client.put(
        f"/api/v1/posts/{pid}/reactions", headers=headers, json={"type": "like"}
    )
    expected = 401 if viewer == "anonymous" else (200 if sees else hidden_status)
    assert resp.status == expected, (viewer, visibility, "react")
    resp = await client.delete(f"/api/v1/posts/{pid}/reactions", headers=headers)
    expected = 401 if viewer == "anonymous" else (204 if sees else hidden_status)
    assert resp.status == expected, (viewer, visibility, "unreact")
    if resp.status == 404 or resp.status == 401:
        body = await resp.json()
        assert set(body) == {"error"}


async def test_hidden_commenters_are_left_out(client: TestClient, world: dict[str, object]) -> None:
    """A public post: comments by users hidden from the viewer do not show."""
    users: dict[str, User] = world["users"]  # type: ignore[assignment]
    pid = world["posts"]["public"]["id"]  # type: ignore[index]
    stranger = users["stranger"]
    await client.post(f"/api/v1/posts/{pid}/comments", headers=stranger.headers, json={"text": "s"})
    await block(client, stranger, users["friend"])
    await client.post(
        f"/api/v1/posts/{pid}/comments", headers=users["friend"].headers, json={"text": "f"}
    )
    seen_by_stranger = (
        await (await client.get(f"/api/v1/posts/{pid}/comments", headers=stranger.headers)).json()
    )["items"]
    assert [c["text"] for c in seen_by_stranger] == ["s"]
    seen_by_author = (
        await (
            await client.get(f"/api/v1/posts/{pid}/comments", headers=users["author"].headers)
        ).json()
    )["items"]
    assert [c["text"] for c in seen_by_author] == ["s", "f"]
