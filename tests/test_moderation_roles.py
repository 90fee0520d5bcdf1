"""Users vs moderators vs admins on every admin path.

The paths come from the mounted endpoints, so an admin endpoint added later is checked too (a
POST needs a valid body here: the test says so when one is missing). Anonymous callers get 401,
users 403; moderators may use every path but the admins-only ones, admins every one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from agora.server import keys
from tests.support.api import User, create_post, register
from tests.support.moderation import API, report, with_role

ADMIN_ONLY = {f"{API}/admin/stats"}  # analytics (tolerated when not mounted yet)


async def test_every_admin_path_by_role(client: TestClient) -> None:
    endpoints = [
        ep for ep in client.server.app[keys.ENDPOINTS] if ep.path.startswith(f"{API}/admin/")
    ]
    assert {(ep.method, ep.path) for ep in endpoints} >= {
        ("GET", f"{API}/admin/reports"),
        ("POST", f"{API}/admin/reports/{{id}}/resolve"),
        ("POST", f"{API}/admin/users/{{id}}/suspend"),
        ("POST", f"{API}/admin/users/{{id}}/unsuspend"),
        ("GET", f"{API}/admin/audit"),
    }
    user = await register(client)
    moderator = await with_role(client, "moderator")
    admin = await with_role(client, "admin")

    # What each path acts on: fresh for every caller, so that "allowed" means a 2xx.
    async def open_report() -> str:
        author, reporter = await register(client), await register(client)
        post = await create_post(client, author, "reported", "public")
        return str((await report(client, reporter, "post", post["id"]))["id"])

    async def plain_user() -> str:
        return (await register(client)).id

    async def suspended_user() -> str:
        victim = await register(client)
        resp = await client.post(
            f"{API}/admin/users/{victim.id}/suspend", headers=admin.headers, json={"reason": "x"}
        )
        assert resp.status == 200, await resp.text()
        return victim.id

    Target = Callable[[], Awaitable[str]]
    setup: dict[tuple[str, str], tuple[Target | None, dict[str, Any] | None]] = {
        ("POST", f"{API}/admin/reports/{{id}}/resolve"): (open_report, {"action": "dismiss"}),
        ("POST", f"{API}/admin/users/{{id}}/suspend"): (plain_user, {"reason": "matrix"}),
        ("POST", f"{API}/admin/users/{{id}}/unsuspend"): (suspended_user, None),
    }

    async def call(ep_method: str, path: str, caller: User | None) -> int:
        target, body = setup.get((ep_method, path), (None, None))
        if ep_method != "GET" and (ep_method, path) not in setup:
            raise AssertionError(f"add {ep_method} {path} to this test's setup (id and body)")
        url = path.replace("{id}", await target()) if target else path
        headers = caller.headers if caller else {}
        resp = await client.request(ep_method, url, headers=headers, json=body)
        return resp.status

    for ep in endpoints:
        where = f"{ep.method} {ep.path}"
        assert await call(ep.method, ep.path, None) == 401, where
        assert await call(ep.method, ep.path, user) == 403, where
        as_moderator = await call(ep.method, ep.path, moderator)
        if ep.path in ADMIN_ONLY:
            assert as_moderator == 403, where
        else:
            assert 200 <= as_moderator < 300, (where, as_moderator)
        as_admin = await call(ep.method, ep.path, admin)
        assert 200 <= as_admin < 300, (where, as_admin)

    # A suspended moderator is a moderator no more (their token stops first).
    resp = await client.post(
        f"{API}/admin/users/{moderator.id}/suspend", headers=admin.headers, json={"reason": "x"}
    )
    assert resp.status == 200
    resp = await client.get(f"{API}/admin/reports", headers=moderator.headers)
    assert resp.status in (401, 403)
