"""Revocation cannot be missed: a broadcast Redis refused is retried, and every node re-checks
the logins of its open sessions against PostgreSQL, so even a revocation nobody broadcast
closes its sockets within the re-check interval."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace

import asyncpg
import jwt

from agora.clock import ManualClock
from agora.config import Config
from agora.server import keys
from agora.server.app import create_app
from agora.services.revocations import RETRY_FIRST, Revocations
from agora.storage import redis as redis_store
from agora.storage.accounts import AccountStore
from agora.storage.db import Database
from tests.conftest import JWT_SECRET, AppFactory
from tests.support.api import User, expect_error, register
from tests.support.proxy import proxy_redis
from tests.support.ws import WsClient


def login_id(user: User) -> int:
    return int(jwt.decode(user.access, JWT_SECRET, algorithms=["HS256"])["sid"])


async def test_a_logout_broadcast_redis_refused_is_retried(
    make_client: AppFactory, config: Config
) -> None:
    assert config.redis.url
    proxy, through = await proxy_redis(config.redis.url)
    try:
        # Only the revoking node loses Redis: a node whose own stream reader fails reloads
        # revocations from PostgreSQL, which would hide a lost broadcast.
        clock = ManualClock(start=time.time())
        revoking = await make_client(
            create_app(
                config.with_overrides(
                    node_id=f"revoking-{secrets.token_hex(3)}",
                    redis=replace(config.redis, url=through),
                ),
                clock=clock,
            )
        )
        other = await make_client(node_id=f"other-{secrets.token_hex(3)}")
        user = await register(revoking)
        ws = await WsClient.connect(other, user.access)

        proxy.cut()
        resp = await revoking.post("/api/v1/auth/logout", json={"refresh_token": user.refresh})
        assert resp.status == 204
        revocations = revoking.server.app[keys.ACCOUNTS].revocations
        assert revocations.unsent == 1
        proxy.restore()

        clock.advance(RETRY_FIRST)  # the retry's pause
        assert await ws.closed(timeout=10) == 4001
        assert revocations.unsent == 0
        await expect_error(
            await other.get("/api/v1/users/me", headers=user.headers), 401, "unauthorized"
        )
        await revoking.close()  # while Redis is reachable: the node deregisters itself
    finally:
        await proxy.close()


async def test_waiting_revocations_collapse_and_stop_with_the_node(
    config: Config, database_url: str
) -> None:
    assert config.redis.url
    proxy, through = await proxy_redis(config.redis.url)
    proxy.cut()
    client, db = (
        redis_store.connect(through),
        await Database.connect(database_url, min_size=1, max_size=1),
    )
    clock = ManualClock()
    revocations = Revocations(
        client, redis_store.Keys(config.redis.prefix), AccountStore(db), clock, 900
    )
    try:
        await revocations.revoke([1, 2])
        await revocations.revoke([2, 3])  # while a retry waits: queued, Redis not tried
        assert revocations.unsent == 3 and revocations.is_revoked(3)
        await asyncio.sleep(0)  # the retry task starts its pause
        assert clock.pending == 1  # one retry waiting, however many revocations
        await revocations.stop()
        assert clock.pending == 0  # no retry outlives the node
    finally:
        await client.aclose()
        await db.close()
        await proxy.close()


async def test_open_sessions_close_when_their_login_is_no_longer_valid(
    make_client: AppFactory, config: Config, database_url: str
) -> None:
    """Nothing is broadcast: the logins change in PostgreSQL only (revoked, user suspended,
    expired). Once the re-check interval passes, exactly those sessions close with 4001."""
    clock = ManualClock(start=time.time())  # tokens are checked against the real time too
    node = await make_client(create_app(config, clock=clock))
    revoked, suspended, expired, valid = [await register(node) for _ in range(4)]
    sockets = {u.id: await WsClient.connect(node, u.access) for u in (revoked, suspended, expired)}
    kept = await WsClient.connect(node, valid.access)

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE accounts.login_sessions SET revoked_at = now(), revoked_reason = 'test'"
            " WHERE id = $1",
            login_id(revoked),
        )
        await conn.execute(
            "UPDATE accounts.users SET status = 'suspended' WHERE id = $1", int(suspended.id)
        )
        await conn.execute(
            "UPDATE accounts.login_sessions SET expires_at = now() - interval '1 second'"
            " WHERE id = $1",
            login_id(expired),
        )
    finally:
        await conn.close()

    clock.advance(config.auth.session_recheck + 1)
    for _ in range(5):
        await asyncio.sleep(0)
    for ws in sockets.values():
        assert await ws.closed(timeout=10) == 4001
    await kept.send({"type": "ping"})
    await kept.expect("pong")
    # The revoked login's access token is refused on this node from now on, too.
    await expect_error(
        await node.get("/api/v1/users/me", headers=revoked.headers), 401, "unauthorized"
    )
    assert (await node.get("/api/v1/users/me", headers=valid.headers)).status == 200
