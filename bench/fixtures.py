"""Accounts for the WebSocket benches, made directly in PostgreSQL: users, friendships, one login
session per connection, and access tokens minted with the nodes' secret (no argon2 per login,
no REST round trips). Each run uses its own username prefix and deletes its users at the end
(the foreign keys cascade to sessions, friendships, conversations and messages)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

from agora.clock import Clock
from agora.services.passwords import Passwords
from agora.services.tokens import TokenIssuer
from bench.procs import log
from bench.services import Services

PASSWORD = "bench-password"


@dataclass(frozen=True)
class Account:
    """One login session of a bench user and an access token for it."""

    user_id: int
    session_id: int
    token: str


async def password_hash(services: Services) -> str:
    """One argon2id hash of ``bench-password`` with the node's parameters (~0.3 s), shared by
    every bench user."""
    passwords = Passwords(
        services.config.auth.password_time_cost, services.config.auth.password_memory_kib
    )
    try:
        return await passwords.hash(PASSWORD)
    finally:
        passwords.close()


def run_prefix(kind: str) -> str:
    """A fresh username prefix such as ``bchat_1a2b3c4d_``."""
    return f"{kind}_{secrets.token_hex(4)}_"


async def create_accounts(
    services: Services,
    prefix: str,
    users: int,
    *,
    sessions_per_user: int = 1,
    friend_groups_of: int = 0,
) -> list[Account]:
    """Create ``users`` users named ``<prefix><n>``; when ``friend_groups_of`` is K, each run of K
    consecutive users are mutual friends (both directions, as the node stores them). Return
    ``sessions_per_user`` accounts per user, grouped by user in creation order."""
    hashed = await password_hash(services)
    conn = await asyncpg.connect(services.database_url)
    try:
        async with conn.transaction():
            rows = await conn.fetch(
                """
                INSERT INTO accounts.users (username, email, password_hash, display_name)
                SELECT $1 || n, $1 || n || '@bench.invalid', $2, 'Bench ' || n
                FROM generate_series(1, $3::int) n
                RETURNING id, substr(username, length($1) + 1)::int AS n""",
                prefix,
                hashed,
                users,
            )
            user_ids = [r["id"] for r in sorted(rows, key=lambda r: r["n"])]
            if friend_groups_of > 1:
                pairs = [
                    (a, b)
                    for start in range(0, len(user_ids), friend_groups_of)
                    for a in user_ids[start : start + friend_groups_of]
                    for b in user_ids[start : start + friend_groups_of]
                    if a != b
                ]
                await conn.copy_records_to_table(
                    "friendships",
                    schema_name="social",
                    records=pairs,
                    columns=["user_id", "friend_id"],
                )
            sessions = await conn.fetch(
                """
                INSERT INTO accounts.login_sessions (user_id, user_agent)
                SELECT u, 'agora-bench' FROM unnest($1::bigint[]) WITH ORDINALITY AS t(u, i)
                ORDER BY i
                RETURNING id, user_id""",
                [u for u in user_ids for _ in range(sessions_per_user)],
            )
    finally:
        await conn.close()
    issuer = TokenIssuer(services.jwt_secret, services.config.auth.access_ttl, Clock())
    order = {u: i for i, u in enumerate(user_ids)}
    ordered = sorted(sessions, key=lambda r: (order[r["user_id"]], r["id"]))
    return [
        Account(r["user_id"], r["id"], issuer.issue_access(r["user_id"], r["id"])) for r in ordered
    ]


async def delete_accounts(services: Services, prefix: str) -> None:
    """Delete the users of one run and everything that cascades from them (best effort)."""
    try:
        conn = await asyncpg.connect(services.database_url)
        try:
            await conn.execute("DELETE FROM accounts.users WHERE starts_with(username, $1)", prefix)
        finally:
            await conn.close()
    except (OSError, asyncpg.PostgresError) as exc:
        log(f"could not delete the bench users {prefix}*: {exc}")
