"""A suspension cuts the account off on every node of a cluster within seconds, and lifting it
lets the user back in, on two nodes sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from agora.config import ClusterConfig
from agora.server import keys
from agora.storage.accounts import AccountStore
from tests.conftest import AppFactory
from tests.support.api import PASSWORD, bearer, befriend, create_post, register
from tests.support.cluster import started_together
from tests.support.moderation import API, suspend, unsuspend, with_role
from tests.support.ws import WsClient

FAST = ClusterConfig(heartbeat=0.3, node_timeout=1.5, answer_timeout=3.0, presence_debounce=0.5)
WITHIN = 5.0  # seconds


async def _status(node: TestClient, token: str, path: str = "/users/me") -> int:
    return (await node.get(f"{API}{path}", headers=bearer(token))).status


async def _until(check: Any, what: str) -> float:
    """Seconds until ``check()`` is true (at most WITHIN)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > WITHIN:
            raise AssertionError(f"{what}: not within {WITHIN}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_suspended_user_is_cut_off_on_both_nodes_and_comes_back(
    make_client: AppFactory,
) -> None:
    n1 = await make_client(node_id="mod-one", cluster=FAST)
    n2 = await make_client(node_id="mod-two", cluster=FAST)
    await started_together(n1, n2)
    user, friend = await register(n1), await register(n2)
    await befriend(n1, user, friend)
    moderator = await with_role(n1, "moderator")
    post = await create_post(n2, user, "visible until suspended", "public")
    # Pages of the friend's feed are cached on both nodes.
    for node in (n1, n2):
        feed = await (await node.get(f"{API}/feed", headers=friend.headers)).json()
        assert post["id"] in [p["id"] for p in feed["items"]]
    sockets = [await WsClient.connect(node, user.access) for node in (n1, n2)]
    assert [await _status(node, user.access) for node in (n1, n2)] == [200, 200]

    await suspend(n1, moderator, user.id, reason="cluster test")
    # A login opened after the suspension committed (its password check raced the suspension),
    # so the suspension did not revoke it: its token is refused too, by the set of suspended
    # accounts every node follows.
    store = AccountStore(n1.server.app[keys.DB])
    sid = await store.open_session(
        int(user.id), b"r" * 32, datetime.now(UTC) + timedelta(days=1), "racing login"
    )
    racing = n2.server.app[keys.ACCOUNTS].tokens.issue_access(int(user.id), sid)

    closed = await asyncio.wait_for(
        asyncio.gather(*(s.closed(timeout=WITHIN) for s in sockets)), WITHIN
    )
    assert closed == [4001, 4001]  # CloseCode.REVOKED on both nodes
    for node in (n1, n2):
        await _until(
            lambda node=node: _is_refused(node, user.access), "REST with the revoked login"
        )
        await _until(lambda node=node: _is_refused(node, racing), "the racing login")
        resp = await node.post(
            f"{API}/auth/login", json={"login": user.username, "password": PASSWORD}
        )
        assert resp.status == 403
        # Their post is gone from the friend's feed on both nodes (page caches dropped).
        feed = await (await node.get(f"{API}/feed", headers=friend.headers)).json()
        assert post["id"] not in [p["id"] for p in feed["items"]]
        assert await _status(node, friend.access, f"/posts/{post['id']}") == 404

    await unsuspend(n2, moderator, user.id)
    resp = await n2.post(f"{API}/auth/login", json={"login": user.username, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    for node in (n1, n2):
        await _until(lambda node=node: _is_ok(node, token), "back after unsuspend")
        ws = await WsClient.connect(node, token)
        await ws.close()
        feed = await (await node.get(f"{API}/feed", headers=friend.headers)).json()
        assert post["id"] in [p["id"] for p in feed["items"]]
    assert await _status(n1, user.access) == 401  # the logins revoked stay revoked


async def _is_refused(node: TestClient, token: str) -> bool:
    return await _status(node, token) in (401, 403)


async def _is_ok(node: TestClient, token: str) -> bool:
    return await _status(node, token) == 200
