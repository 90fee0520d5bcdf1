"""Accounts: users, login sessions (refresh-token families) and refresh tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import asyncpg
import msgspec

from agora.events.types import UserRegistered, UserSuspended, UserUnsuspended, UserUpdated
from agora.protocol.accounts import Role
from agora.storage.db import Database, Record
from agora.storage.events import append
from agora.storage.visibility import users_hidden

USER_COLUMNS = (
    "id, username, email, password_hash, display_name, bio, avatar_media_id, role, "
    "status, created_at"
)
_USER_FIELDS = len(USER_COLUMNS.split(", "))

INSERT_USER = f"""
INSERT INTO accounts.users (username, email, password_hash, display_name, role)
VALUES ($1, $2, $3, $4, $5)
RETURNING {USER_COLUMNS}
"""
SELECT_USER = f"SELECT {USER_COLUMNS} FROM accounts.users WHERE id = $1"
SELECT_USER_BY_LOGIN = f"""
SELECT {USER_COLUMNS} FROM accounts.users
WHERE lower(username) = lower($1) OR lower(email) = lower($1)
LIMIT 1
"""
PROFILE_FIELDS = ("display_name", "bio", "avatar_media_id")
# The profile after the change and (from the locked row it replaced) before it: the user.updated
# event names the fields that changed.
UPDATE_PROFILE = f"""
UPDATE accounts.users u SET
    display_name = CASE WHEN $2 THEN $3 ELSE u.display_name END,
    bio = CASE WHEN $4 THEN $5 ELSE u.bio END,
    avatar_media_id = CASE WHEN $6 THEN $7 ELSE u.avatar_media_id END,
    updated_at = now()
FROM (SELECT id, {", ".join(PROFILE_FIELDS)} FROM accounts.users WHERE id = $1 FOR UPDATE) old
WHERE u.id = old.id
RETURNING {", ".join(f"u.{c}" for c in USER_COLUMNS.split(", "))},
          {", ".join(f"old.{c} AS old_{c}" for c in PROFILE_FIELDS)}
"""
UPDATE_PASSWORD_HASH = "UPDATE accounts.users SET password_hash = $2 WHERE id = $1"
SET_ROLE = f"""
UPDATE accounts.users SET role = $2, updated_at = now() WHERE lower(username) = lower($1)
RETURNING {USER_COLUMNS}
"""

INSERT_SESSION = """
INSERT INTO accounts.login_sessions (user_id, user_agent, expires_at) VALUES ($1, $2, $3)
RETURNING id
"""
INSERT_REFRESH = """
INSERT INTO accounts.refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)
"""
# Lock the token and its session: concurrent refreshes of one family are serialised, so exactly
# one of two racing presentations of the same token wins and the other is seen as reuse.
LOCK_REFRESH = """
SELECT t.session_id, t.used_at, t.expires_at < now() AS expired, s.revoked_at, s.user_id,
       u.status
FROM accounts.refresh_tokens t
JOIN accounts.login_sessions s ON s.id = t.session_id
JOIN accounts.users u ON u.id = s.user_id
WHERE t.token_hash = $1
FOR UPDATE OF t, s
"""
MARK_REFRESH_USED = "UPDATE accounts.refresh_tokens SET used_at = now() WHERE token_hash = $1"
# A login expires with its newest refresh token: each rotation moves both.
TOUCH_SESSION = """
UPDATE accounts.login_sessions SET last_used_at = now(), expires_at = $2 WHERE id = $1
"""
REVOKE_SESSION = """
UPDATE accounts.login_sessions SET revoked_at = now(), revoked_reason = $2
WHERE id = $1 AND revoked_at IS NULL
"""
REVOKE_USER_SESSIONS = """
UPDATE accounts.login_sessions SET revoked_at = now(), revoked_reason = $2
WHERE user_id = $1 AND revoked_at IS NULL
RETURNING id
"""
SESSION_OF_TOKEN = "SELECT session_id FROM accounts.refresh_tokens WHERE token_hash = $1"
SELECT_VISIBLE_USER = f"""
SELECT {USER_COLUMNS} FROM accounts.users
WHERE id = $2 AND status = 'active'
  AND ($1::bigint IS NULL OR $1::bigint = $2 OR NOT {users_hidden("$1::bigint", "$2::bigint")})
"""
RECENTLY_REVOKED = """
SELECT id FROM accounts.login_sessions WHERE revoked_at IS NOT NULL AND revoked_at > $1
"""
# Of these logins, the ones no longer valid: revoked, expired, the user suspended, or gone.
INVALID_LOGINS = """
SELECT x.id FROM unnest($1::bigint[]) AS x(id)
LEFT JOIN accounts.login_sessions s ON s.id = x.id
LEFT JOIN accounts.users u ON u.id = s.user_id
WHERE s.id IS NULL OR s.revoked_at IS NOT NULL OR s.expires_at <= now() OR u.status <> 'active'
"""

# Suspension (services/moderation.py): the account's status and every live login change in one
# transaction, so no token issued before it is refreshed after it.
SUSPEND = f"""
UPDATE accounts.users SET status = 'suspended', suspended_at = now(), suspended_until = $2,
       suspended_reason = $3, updated_at = now()
WHERE id = $1
RETURNING {USER_COLUMNS}
"""
# Lifted by a moderator ($2 true), or only once its end has passed ($2 false).
UNSUSPEND = f"""
UPDATE accounts.users SET status = 'active', suspended_at = NULL, suspended_until = NULL,
       suspended_reason = NULL, updated_at = now()
WHERE id = $1 AND status = 'suspended' AND ($2 OR suspended_until <= now())
RETURNING {USER_COLUMNS}
"""
SUSPENSION_OF = """
SELECT suspended_until, suspended_reason, suspended_until <= now() AS over
FROM accounts.users WHERE id = $1 AND status = 'suspended'
"""
SUSPENDED_IDS = "SELECT id FROM accounts.users WHERE status = 'suspended'"
SUSPENSIONS_OVER = """
SELECT id FROM accounts.users
WHERE status = 'suspended' AND suspended_until <= now() ORDER BY suspended_until LIMIT $1
"""

# Housekeeping. One node purges at a time (the lock is taken by every batch's transaction);
# each statement deletes at most $2 rows and skips rows a refresh is holding, so a big backlog
# is worked off in short transactions. $1 is the retention in seconds.
TRY_PURGE_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('agora.purge_logins', 0))"
PURGE_REFRESH_TOKENS = """
DELETE FROM accounts.refresh_tokens WHERE token_hash = ANY(ARRAY(
    SELECT token_hash FROM accounts.refresh_tokens
    WHERE expires_at < now() OR used_at < now() - make_interval(secs => $1)
    LIMIT $2 FOR UPDATE SKIP LOCKED))
"""
# Revoked logins are kept for the retention, which is longer than an access token lives: a node
# starting up reads the recent ones (RECENTLY_REVOKED) to refuse their access tokens.
PURGE_REVOKED_LOGINS = """
DELETE FROM accounts.login_sessions WHERE id = ANY(ARRAY(
    SELECT id FROM accounts.login_sessions
    WHERE revoked_at IS NOT NULL AND revoked_at < now() - make_interval(secs => $1)
    LIMIT $2 FOR UPDATE SKIP LOCKED))
"""
PURGE_EXPIRED_LOGINS = """
DELETE FROM accounts.login_sessions WHERE id = ANY(ARRAY(
    SELECT id FROM accounts.login_sessions
    WHERE revoked_at IS NULL AND expires_at < now() - make_interval(secs => $1)
    LIMIT $2 FOR UPDATE SKIP LOCKED))
"""
# In this order: a login's tokens mostly go before the login (its delete cascades to the rest).
PURGES = {
    "purge_refresh_tokens": PURGE_REFRESH_TOKENS,
    "purge_revoked_logins": PURGE_REVOKED_LOGINS,
    "purge_expired_logins": PURGE_EXPIRED_LOGINS,
}


def public_user_columns(alias: str = "u", prefix: str = "u_") -> str:
    """The public face of a user, for joins from other domains' queries."""
    return ", ".join(
        f"{alias}.{c} AS {prefix}{c}"
        for c in ("id", "username", "display_name", "bio", "avatar_media_id", "created_at")
    )


PUBLIC_USER_COLUMNS = public_user_columns()
# Active users by lower-cased username (mentions, search's from:), in one statement.
USERS_BY_NAME = """
SELECT id, lower(username) AS name FROM accounts.users
WHERE lower(username) = ANY($1::text[]) AND status = 'active'
"""


class PublicUser(msgspec.Struct, frozen=True, gc=False):
    id: int
    username: str
    display_name: str
    bio: str
    avatar_media_id: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: Record, prefix: str = "u_") -> PublicUser:
        if prefix == "u_":
            return cls(
                row["u_id"],
                row["u_username"],
                row["u_display_name"],
                row["u_bio"],
                row["u_avatar_media_id"],
                row["u_created_at"],
            )
        return cls(
            row[f"{prefix}id"],
            row[f"{prefix}username"],
            row[f"{prefix}display_name"],
            row[f"{prefix}bio"],
            row[f"{prefix}avatar_media_id"],
            row[f"{prefix}created_at"],
        )


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str
    email: str
    password_hash: str
    display_name: str
    bio: str
    avatar_media_id: int | None
    role: Role
    status: str
    created_at: datetime

    @classmethod
    def of(cls, row: Record) -> UserRecord:
        return cls(*list(row.values())[:_USER_FIELDS])


class Refresh(Enum):
    ROTATED = "rotated"
    REUSED = "reused"  # a used token came back: the family is now revoked
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    SUSPENDED = "suspended"


@dataclass(frozen=True, slots=True)
class Suspension:
    until: datetime | None
    reason: str | None
    over: bool  # its end has passed (not lifted yet)


@dataclass(frozen=True, slots=True)
class RefreshResult:
    outcome: Refresh
    session_id: int | None = None
    user_id: int | None = None


class DuplicateUser(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_user(
        self, username: str, email: str, password_hash: str, display_name: str, role: str = "user"
    ) -> UserRecord:
        try:
            async with self.db.transaction("create_user") as tx:
                row = await tx.fetchrow(
                    "insert_user", INSERT_USER, username, email, password_hash, display_name, role
                )
                assert row is not None
                user = UserRecord.of(row)
                await append(
                    tx,
                    UserRegistered(
                        user_id=user.id, username=user.username, display_name=user.display_name
                    ),
                    user.id,
                )
        except asyncpg.UniqueViolationError as exc:
            field = "email" if "email" in (exc.constraint_name or "") else "username"
            raise DuplicateUser(field) from None
        return user

    async def get_user(self, user_id: int) -> UserRecord | None:
        row = await self.db.fetchrow("get_user", SELECT_USER, user_id)
        return UserRecord.of(row) if row else None

    async def get_visible_user(self, viewer_id: int | None, user_id: int) -> UserRecord | None:
        """The user if ``viewer_id`` may see them (active, no block either way), else None."""
        row = await self.db.fetchrow("get_visible_user", SELECT_VISIBLE_USER, viewer_id, user_id)
        return UserRecord.of(row) if row else None

    async def find_by_login(self, login: str) -> UserRecord | None:
        row = await self.db.fetchrow("find_user_by_login", SELECT_USER_BY_LOGIN, login)
        return UserRecord.of(row) if row else None

    async def update_profile(self, user_id: int, changes: dict[str, Any]) -> UserRecord | None:
        """Apply ``changes`` (profile fields) as the user; with a user.updated event when a
        field's value actually changed."""
        async with self.db.transaction("update_profile") as tx:
            row = await tx.fetchrow(
                "update_profile",
                UPDATE_PROFILE,
                user_id,
                "display_name" in changes,
                changes.get("display_name"),
                "bio" in changes,
                changes.get("bio"),
                "avatar_media_id" in changes,
                changes.get("avatar_media_id"),
            )
            if row is None:
                return None
            user = UserRecord.of(row)
            changed = [f for f in PROFILE_FIELDS if row[f] != row[f"old_{f}"]]
            if changed:
                await append(
                    tx,
                    UserUpdated(
                        user_id=user.id,
                        username=user.username,
                        display_name=user.display_name,
                        bio=user.bio,
                        avatar_media_id=user.avatar_media_id,
                        changed=changed,
                    ),
                    user.id,
                )
        return user

    async def update_password_hash(self, user_id: int, password_hash: str) -> None:
        await self.db.execute("rehash_password", UPDATE_PASSWORD_HASH, user_id, password_hash)

    async def set_role(self, username: str, role: str) -> UserRecord | None:
        row = await self.db.fetchrow("set_role", SET_ROLE, username, role)
        return UserRecord.of(row) if row else None

    async def open_session(
        self, user_id: int, token_hash: bytes, expires_at: datetime, user_agent: str
    ) -> int:
        async with self.db.transaction("open_login_session") as tx:
            session_id: int = await tx.fetchval(
                "insert_session", INSERT_SESSION, user_id, user_agent[:300], expires_at
            )
            await tx.execute("insert_refresh", INSERT_REFRESH, token_hash, session_id, expires_at)
        return session_id

    async def rotate_refresh(
        self, token_hash: bytes, new_hash: bytes, expires_at: datetime
    ) -> RefreshResult:
        async with self.db.transaction("rotate_refresh") as tx:
            row = await tx.fetchrow("lock_refresh", LOCK_REFRESH, token_hash)
            if row is None:
                return RefreshResult(Refresh.UNKNOWN)
            session_id, user_id = row["session_id"], row["user_id"]
            if row["status"] != "active":
                return RefreshResult(Refresh.SUSPENDED, session_id, user_id)
            if row["revoked_at"] is not None:
                return RefreshResult(Refresh.REVOKED, session_id, user_id)
            if row["used_at"] is not None:
                await tx.execute(
                    "revoke_session", REVOKE_SESSION, session_id, "refresh_token_reuse"
                )
                return RefreshResult(Refresh.REUSED, session_id, user_id)
            if row["expired"]:
                return RefreshResult(Refresh.EXPIRED, session_id, user_id)
            await tx.execute("mark_refresh_used", MARK_REFRESH_USED, token_hash)
            await tx.execute("insert_refresh", INSERT_REFRESH, new_hash, session_id, expires_at)
            await tx.execute("touch_session", TOUCH_SESSION, session_id, expires_at)
        return RefreshResult(Refresh.ROTATED, session_id, user_id)

    async def session_of_token(self, token_hash: bytes) -> int | None:
        value: int | None = await self.db.fetchval("session_of_token", SESSION_OF_TOKEN, token_hash)
        return value

    async def revoke_session(self, session_id: int, reason: str) -> None:
        await self.db.execute("revoke_session", REVOKE_SESSION, session_id, reason)

    async def revoke_user_sessions(self, user_id: int, reason: str) -> list[int]:
        rows = await self.db.fetch("revoke_user_sessions", REVOKE_USER_SESSIONS, user_id, reason)
        return [r["id"] for r in rows]

    async def revoked_since(self, since: datetime) -> list[int]:
        rows = await self.db.fetch("recently_revoked", RECENTLY_REVOKED, since)
        return [r["id"] for r in rows]

    async def invalid_logins(self, session_ids: list[int]) -> list[int]:
        """Those of ``session_ids`` that are revoked, expired, suspended or gone (one query)."""
        rows = await self.db.fetch("invalid_logins", INVALID_LOGINS, session_ids)
        return [r["id"] for r in rows]

    # -- suspension --------------------------------------------------------------------------

    async def suspend(
        self, user_id: int, until: datetime | None, reason: str, actor_id: int | None
    ) -> tuple[UserRecord, list[int]] | None:
        """Suspend the account and revoke every live login of it in one transaction (with a
        user.suspended event): the account and the logins revoked; None when no such user."""
        async with self.db.transaction("suspend_user") as tx:
            row = await tx.fetchrow("suspend_user", SUSPEND, user_id, until, reason)
            if row is None:
                return None
            rows = await tx.fetch(
                "revoke_user_sessions", REVOKE_USER_SESSIONS, user_id, "suspended"
            )
            await append(tx, UserSuspended(user_id=user_id, until=until, reason=reason), actor_id)
        return UserRecord.of(row), [r["id"] for r in rows]

    async def unsuspend(
        self, user_id: int, actor_id: int | None, only_if_over: bool = False
    ) -> UserRecord | None:
        """Lift the suspension (only once its end has passed, with ``only_if_over``): the
        account, or None when it was not suspended (or not over)."""
        async with self.db.transaction("unsuspend_user") as tx:
            row = await tx.fetchrow("unsuspend_user", UNSUSPEND, user_id, not only_if_over)
            if row is None:
                return None
            await append(tx, UserUnsuspended(user_id=user_id), actor_id)
        return UserRecord.of(row)

    async def suspension(self, user_id: int) -> Suspension | None:
        row = await self.db.fetchrow("suspension_of", SUSPENSION_OF, user_id)
        if row is None:
            return None
        return Suspension(row["suspended_until"], row["suspended_reason"], bool(row["over"]))

    async def suspended_ids(self) -> set[int]:
        return {r["id"] for r in await self.db.fetch("suspended_ids", SUSPENDED_IDS)}

    async def suspensions_over(self, limit: int = 100) -> list[int]:
        rows = await self.db.fetch("suspensions_over", SUSPENSIONS_OVER, limit)
        return [r["id"] for r in rows]

    async def purge_batch(self, name: str, retention: float, limit: int) -> int | None:
        """One batch of the purge ``name`` (a key of :data:`PURGES`): the rows deleted, or None
        when another node is purging."""
        async with self.db.transaction(name) as tx:
            if not await tx.fetchval("try_purge_lock", TRY_PURGE_LOCK):
                return None
            status = await tx.execute(name, PURGES[name], retention, limit)
        return int(status.rpartition(" ")[2])
