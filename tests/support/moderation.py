"""Helpers for the moderation tests: roles, reports, resolutions, waiting for notifications."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from agora.server import keys
from agora.storage.accounts import AccountStore
from tests.support.api import User, register

API = "/api/v1"


async def with_role(client: TestClient, role: str) -> User:
    """A new account with ``role`` (set the way ``agora admin set-role`` does)."""
    user = await register(client)
    await AccountStore(client.server.app[keys.DB]).set_role(user.username, role)
    return user


async def report(
    client: TestClient,
    reporter: User,
    subject_type: str,
    subject_id: str,
    category: str = "spam",
    reason: str = "please look",
    status: int = 201,
) -> dict[str, Any]:
    resp = await client.post(
        f"{API}/reports",
        headers=reporter.headers,
        json={
            "subject_type": subject_type,
            "subject_id": subject_id,
            "category": category,
            "reason": reason,
        },
    )
    assert resp.status == status, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def resolve(
    client: TestClient,
    moderator: User,
    report_id: str,
    action: str,
    note: str | None = None,
    status: int = 200,
) -> dict[str, Any]:
    body: dict[str, Any] = {"action": action}
    if note is not None:
        body["note"] = note
    resp = await client.post(
        f"{API}/admin/reports/{report_id}/resolve", headers=moderator.headers, json=body
    )
    assert resp.status == status, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def suspend(
    client: TestClient, moderator: User, user_id: str, status: int = 200, **extra: Any
) -> dict[str, Any]:
    resp = await client.post(
        f"{API}/admin/users/{user_id}/suspend",
        headers=moderator.headers,
        json={"reason": "test suspension", **extra},
    )
    assert resp.status == status, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def unsuspend(
    client: TestClient, moderator: User, user_id: str, status: int = 200
) -> dict[str, Any]:
    resp = await client.post(f"{API}/admin/users/{user_id}/unsuspend", headers=moderator.headers)
    assert resp.status == status, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def queue(client: TestClient, moderator: User, query: str = "") -> list[dict[str, Any]]:
    resp = await client.get(f"{API}/admin/reports?limit=100{query}", headers=moderator.headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["items"]  # type: ignore[no-any-return]


async def audit(client: TestClient, moderator: User, query: str = "") -> list[dict[str, Any]]:
    resp = await client.get(f"{API}/admin/audit?limit=100{query}", headers=moderator.headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["items"]  # type: ignore[no-any-return]


async def login(client: TestClient, user: User, status: int = 200) -> dict[str, Any]:
    resp = await client.post(
        f"{API}/auth/login", json={"login": user.username, "password": "correct horse battery"}
    )
    assert resp.status == status, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def notification(
    client: TestClient, user: User, kind: str, timeout: float = 10.0
) -> dict[str, Any]:
    """The user's first notification of ``kind``, waiting for the event consumer."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get(f"{API}/notifications?limit=100", headers=user.headers)
        assert resp.status == 200, await resp.text()
        for item in (await resp.json())["items"]:
            if item["kind"] == kind:
                return item  # type: ignore[no-any-return]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {kind} notification within {timeout}s")
        await asyncio.sleep(0.1)
