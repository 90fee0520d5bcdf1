"""The purge of old logins and refresh tokens: what goes, what stays, one node at a time, and
the periodic job that runs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from agora.clock import ManualClock
from agora.config import Config, ConfigError, load_config
from agora.server.app import create_app
from agora.services.housekeeping import LoginPurge, Periodic
from agora.storage import accounts
from agora.storage.accounts import AccountStore
from agora.storage.db import Database
from tests.conftest import AppFactory
from tests.support.api import unique

RETENTION = 3600.0  # seconds; rows are placed around it in "hours"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, min_size=1, max_size=2)
    yield database
    await database.close()


async def seed(conn: asyncpg.Connection) -> tuple[int, dict[str, int], dict[str, bytes]]:
    """One user with a login and a refresh token in every state the purge tells apart."""
    name = unique("hk")
    user_id = await conn.fetchval(
        "INSERT INTO accounts.users (username, email, password_hash) VALUES ($1, $2, 'x')"
        " RETURNING id",
        name,
        f"{name}@x.test",
    )
    logins = {}
    for label, revoked, expires in [
        ("live", None, "1 day"),
        ("revoked_recently", "-10 minutes", "1 day"),  # within the retention: nodes reload it
        ("revoked_long_ago", "-2 hours", "1 day"),
        ("expired_recently", None, "-10 minutes"),
        ("expired_long_ago", None, "-2 hours"),
    ]:
        logins[label] = await conn.fetchval(
            "INSERT INTO accounts.login_sessions (user_id, revoked_at, expires_at)"
            " VALUES ($1, now() + $2::text::interval, now() + $3::text::interval) RETURNING id",
            user_id,
            revoked,
            expires,
        )
    tokens = {}
    for label, login, used, expires in [
        ("current", "live", None, "1 day"),
        ("used_recently", "live", "-10 minutes", "1 day"),  # reuse is still detected
        ("used_long_ago", "live", "-2 hours", "1 day"),
        ("expired", "live", "-3 hours", "-1 minute"),
        ("of_revoked_recently", "revoked_recently", None, "1 day"),
        ("of_revoked_long_ago", "revoked_long_ago", None, "1 day"),
        ("of_expired_recently", "expired_recently", None, "-10 minutes"),
    ]:
        tokens[label] = f"{name}:{label}".encode()
        await conn.execute(
            "INSERT INTO accounts.refresh_tokens (token_hash, session_id, used_at, expires_at)"
            " VALUES ($1, $2, now() + $3::text::interval, now() + $4::text::interval)",
            tokens[label],
            logins[login],
            used,
            expires,
        )
    return user_id, logins, tokens


async def remaining(
    conn: asyncpg.Connection, user_id: int, logins: dict[str, int], tokens: dict[str, bytes]
) -> tuple[set[str], set[str]]:
    kept_logins = {
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM accounts.login_sessions WHERE user_id = $1", user_id
        )
    }
    kept_tokens = {
        r["token_hash"]
        for r in await conn.fetch(
            "SELECT token_hash FROM accounts.refresh_tokens WHERE token_hash = ANY($1::bytea[])",
            list(tokens.values()),
        )
    }
    return (
        {label for label, i in logins.items() if i in kept_logins},
        {label for label, h in tokens.items() if h in kept_tokens},
    )


KEPT_LOGINS = {"live", "revoked_recently", "expired_recently"}
KEPT_TOKENS = {"current", "used_recently", "of_revoked_recently"}


async def test_purge_deletes_exactly_the_old_rows(db: Database, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        user_id, logins, tokens = await seed(conn)
        # Batches of two: every statement must come back until nothing is left.
        result = await LoginPurge(AccountStore(db), RETENTION, batch=2).run_once()
        assert result is not None
        assert await remaining(conn, user_id, logins, tokens) == (KEPT_LOGINS, KEPT_TOKENS)
        # The expired login's token went with the token purge (expired), the long-revoked
        # login's with its login (cascade).
        assert result["purge_refresh_tokens"] >= 3
        assert result["purge_revoked_logins"] >= 1 and result["purge_expired_logins"] >= 1
        # Nothing left to do: a second run deletes none of ours.
        await LoginPurge(AccountStore(db), RETENTION, batch=2).run_once()
        assert await remaining(conn, user_id, logins, tokens) == (KEPT_LOGINS, KEPT_TOKENS)
    finally:
        await conn.close()


async def test_one_node_purges_at_a_time(db: Database, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    other_node = await asyncpg.connect(database_url)
    try:
        user_id, logins, tokens = await seed(conn)
        everything = set(logins), set(tokens)
        async with other_node.transaction():  # another node is purging
            await other_node.execute(accounts.TRY_PURGE_LOCK)
            assert await LoginPurge(AccountStore(db), RETENTION).run_once() is None
            assert await remaining(conn, user_id, logins, tokens) == everything
        assert await LoginPurge(AccountStore(db), RETENTION).run_once() is not None
        assert await remaining(conn, user_id, logins, tokens) == (KEPT_LOGINS, KEPT_TOKENS)
    finally:
        await other_node.close()
        await conn.close()


async def test_the_node_purges_when_the_interval_passes(
    make_client: AppFactory, config: Config, database_url: str
) -> None:
    clock = ManualClock(start=time.time())  # the node's heartbeats are stamped with it
    auth = config.auth.__class__(
        jwt_secret=config.auth.jwt_secret,
        password_time_cost=1,
        password_memory_kib=8192,
        purge_interval=600,
        login_retention=RETENTION,
    )
    await make_client(create_app(config.with_overrides(auth=auth), clock=clock))
    conn = await asyncpg.connect(database_url)
    try:
        user_id, logins, tokens = await seed(conn)
        clock.advance(599)
        for _ in range(5):
            await asyncio.sleep(0)
        assert (await remaining(conn, user_id, logins, tokens))[0] == set(logins)
        clock.advance(1)
        for _ in range(200):  # the purge runs in the node's task: wait for it to finish
            if await remaining(conn, user_id, logins, tokens) == (KEPT_LOGINS, KEPT_TOKENS):
                break
            await asyncio.sleep(0.02)
        assert await remaining(conn, user_id, logins, tokens) == (KEPT_LOGINS, KEPT_TOKENS)
    finally:
        await conn.close()


async def test_a_failing_periodic_job_runs_again_next_time() -> None:
    clock, runs = ManualClock(), []

    async def job() -> None:
        runs.append(clock.monotonic())
        raise RuntimeError("PostgreSQL is away")

    periodic = Periodic("flaky", 10, clock, job)
    periodic.start()
    try:
        for _ in range(3):
            await asyncio.sleep(0)
            clock.advance(10)
            for _ in range(3):
                await asyncio.sleep(0)
        assert len(runs) == 3
    finally:
        await periodic.stop()


def test_housekeeping_variables() -> None:
    base = {"AGORA_ENV": "test", "AGORA_JWT_SECRET": "s" * 40}
    auth = load_config(
        {
            **base,
            "AGORA_SESSION_RECHECK": "15",
            "AGORA_PURGE_INTERVAL": "600",
            "AGORA_LOGIN_RETENTION": "86400",
        }
    ).auth
    assert (auth.session_recheck, auth.purge_interval, auth.login_retention) == (15, 600, 86400)
    defaults = load_config(base).auth
    assert (defaults.session_recheck, defaults.purge_interval) == (60, 3600)
    # Revoked logins must outlive their access tokens: nodes reload them at start-up.
    with pytest.raises(ConfigError) as bad:
        load_config({**base, "AGORA_LOGIN_RETENTION": "900"})
    assert bad.value.variable == "AGORA_LOGIN_RETENTION"
    with pytest.raises(ConfigError) as bad:
        load_config({**base, "AGORA_SESSION_RECHECK": "0"})
    assert bad.value.variable == "AGORA_SESSION_RECHECK"
