"""Small helpers to talk to a node through its real HTTP API in tests."""

from __future__ import annotations

import itertools
import os
from typing import Any

from aiohttp.test_utils import TestClient

_counter = itertools.count()
PASSWORD = "correct horse battery"


def unique(prefix: str = "u") -> str:
    return f"{prefix}{os.getpid() % 10000}_{next(_counter)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class User:
    """A registered account and its tokens."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.id: str = body["user"]["id"]
        self.username: str = body["user"]["username"]
        self.access: str = body["access_token"]
        self.refresh: str = body["refresh_token"]

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access)


async def register(client: TestClient, username: str | None = None, **extra: Any) -> User:
    username = username or unique()
    payload = {
        "username": username,
        "email": f"{username}@example.test",
        "password": PASSWORD,
        **extra,
    }
    resp = await client.post("/api/v1/auth/register", json=payload)
    body = await resp.json()
    assert resp.status == 201, body
    return User(body)


async def expect_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert the contract's error envelope with this status and code; return its detail."""
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


async def befriend(client: TestClient, a: User, b: User) -> None:
    resp = await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    assert resp.status == 201, await resp.text()
    request_id = (await resp.json())["id"]
    resp = await client.post(f"/api/v1/friends/requests/{request_id}/accept", headers=b.headers)
    assert resp.status == 200, await resp.text()


async def friends_in_a_direct_conversation(client: TestClient) -> tuple[User, User, str]:
    """Two new friends and the direct conversation between them (its id)."""
    a, b = await register(client), await register(client)
    await befriend(client, a, b)
    resp = await client.post(
        "/api/v1/conversations", headers=a.headers, json={"member_ids": [b.id]}
    )
    assert resp.status == 201, await resp.text()
    return a, b, (await resp.json())["id"]


async def block(client: TestClient, blocker: User, blocked: User) -> None:
    resp = await client.post(
        "/api/v1/blocks", headers=blocker.headers, json={"user_id": blocked.id}
    )
    assert resp.status == 201, await resp.text()


async def create_post(
    client: TestClient, author: User, text: str = "hello", visibility: str = "friends"
) -> dict[str, Any]:
    resp = await client.post(
        "/api/v1/posts", headers=author.headers, json={"text": text, "visibility": visibility}
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def get_json(
    client: TestClient, path: str, user: User | None = None, status: int = 200
) -> Any:
    resp = await client.get(path, headers=user.headers if user else {})
    assert resp.status == status, (path, resp.status, await resp.text())
    return await resp.json()


async def collect(client: TestClient, path: str, user: User | None, limit: int = 20) -> list[Any]:
    """Every item of a paginated list, following next_cursor to the end."""
    items: list[Any] = []
    sep = "&" if "?" in path else "?"
    cursor: str | None = None
    for _ in range(1000):
        url = f"{path}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = await get_json(client, url, user)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


async def group(client: TestClient, size: int, title: str = "group") -> tuple[list[User], str]:
    """``size`` new users, all friends of the first, in a group conversation (its id)."""
    users = [await register(client) for _ in range(size)]
    for other in users[1:]:
        await befriend(client, users[0], other)
    resp = await client.post(
        "/api/v1/conversations",
        headers=users[0].headers,
        json={"member_ids": [u.id for u in users[1:]], "title": title},
    )
    assert resp.status == 201, await resp.text()
    return users, (await resp.json())["id"]
