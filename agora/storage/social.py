"""The social graph: friend requests, friendships (stored both ways) and blocks.

Every mutation of one pair of users runs in a transaction holding the pair's advisory lock, so
crossed requests, accept-versus-block and the like are serialised per pair, never lost. Starting
a friendship also locks both users' rows (in id order, so two such transactions never deadlock),
so that the friend counts checked in that transaction cannot change before it commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from agora.events.types import (
    FriendRequestAccepted,
    FriendRequestCancelled,
    FriendRequestDeclined,
    FriendRequestSent,
    FriendshipEnded,
    UserBlocked,
    UserUnblocked,
)
from agora.storage.accounts import PUBLIC_USER_COLUMNS, PublicUser, public_user_columns
from agora.storage.db import Database, Record, Tx
from agora.storage.events import append
from agora.storage.visibility import users_hidden

LOCK_PAIR = """
SELECT pg_advisory_xact_lock(hashtextextended(
    'agora.pair:' || least($1::bigint, $2::bigint) || ':' || greatest($1::bigint, $2::bigint), 0))
"""
# NO KEY UPDATE: exclusive among befriending transactions, yet it does not hold up rows that
# merely reference the user (their foreign-key checks take KEY SHARE).
LOCK_USERS = """
SELECT id FROM accounts.users WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE
"""
RELATIONSHIP = """
SELECT
    (SELECT status FROM accounts.users WHERE id = $2) AS other_status,
    EXISTS (SELECT 1 FROM social.friendships WHERE user_id = $1 AND friend_id = $2) AS friends,
    EXISTS (SELECT 1 FROM social.blocks WHERE blocker_id = $1 AND blocked_id = $2) AS i_blocked,
    EXISTS (SELECT 1 FROM social.blocks WHERE blocker_id = $2 AND blocked_id = $1) AS blocked_me,
    r.id AS request_id, r.from_user_id AS request_from
FROM (SELECT 1) AS one
LEFT JOIN social.friend_requests r
    ON r.status = 'pending'
   AND least(r.from_user_id, r.to_user_id) = least($1::bigint, $2::bigint)
   AND greatest(r.from_user_id, r.to_user_id) = greatest($1::bigint, $2::bigint)
"""
# What each of the users $2 is to $1, in the order of $2 (one statement for a page of people).
# Left out: $1 itself, unknown ids and users hidden from $1 (suspended, or blocking $1), except
# those $1 blocks, listed as GET /blocks lists them (a block ended their friendship and requests).
# The pending request of a pair, whichever way it points, is one lookup in its unique index.
RELATIONSHIPS = f"""
SELECT x.id,
       f.user_id IS NOT NULL AS friends,
       CASE WHEN r.from_user_id = x.id THEN r.id END AS incoming_request_id,
       CASE WHEN r.from_user_id = $1 THEN r.id END AS outgoing_request_id,
       b.blocker_id IS NOT NULL AS blocking
FROM unnest($2::bigint[]) WITH ORDINALITY AS x(id, n)
JOIN accounts.users u ON u.id = x.id
LEFT JOIN social.friendships f ON f.user_id = $1 AND f.friend_id = x.id
LEFT JOIN social.friend_requests r
    ON r.status = 'pending'
   AND least(r.from_user_id, r.to_user_id) = least($1::bigint, x.id)
   AND greatest(r.from_user_id, r.to_user_id) = greatest($1::bigint, x.id)
LEFT JOIN social.blocks b ON b.blocker_id = $1 AND b.blocked_id = x.id
WHERE x.id <> $1
  AND (b.blocker_id IS NOT NULL OR NOT {users_hidden("$1::bigint", "x.id")})
ORDER BY x.n
"""
_REQUEST_SELECT = f"""
SELECT r.id, r.from_user_id, r.to_user_id, r.status, r.created_at,
       {public_user_columns("f", "f_")}, {public_user_columns("t", "t_")}
FROM social.friend_requests r
JOIN accounts.users f ON f.id = r.from_user_id
JOIN accounts.users t ON t.id = r.to_user_id
"""
INSERT_REQUEST = """
INSERT INTO social.friend_requests (from_user_id, to_user_id) VALUES ($1, $2) RETURNING id
"""
SELECT_REQUEST = _REQUEST_SELECT + "WHERE r.id = $1"
REQUEST_PARTIES = (
    "SELECT from_user_id, to_user_id, status FROM social.friend_requests WHERE id = $1"
)
SET_REQUEST_STATUS = """
UPDATE social.friend_requests SET status = $2, updated_at = now() WHERE id = $1
RETURNING from_user_id, to_user_id
"""
LIST_INCOMING = (
    _REQUEST_SELECT
    + f"""
WHERE r.to_user_id = $1 AND r.status = 'pending' AND r.id < $2
  AND NOT {users_hidden("r.from_user_id", "r.to_user_id")}
ORDER BY r.id DESC LIMIT $3
"""
)
LIST_OUTGOING = (
    _REQUEST_SELECT
    + f"""
WHERE r.from_user_id = $1 AND r.status = 'pending' AND r.id < $2
  AND NOT {users_hidden("r.from_user_id", "r.to_user_id")}
ORDER BY r.id DESC LIMIT $3
"""
)
CANCEL_PENDING_BETWEEN = """
UPDATE social.friend_requests SET status = 'cancelled', updated_at = now()
WHERE status = 'pending'
  AND least(from_user_id, to_user_id) = least($1::bigint, $2::bigint)
  AND greatest(from_user_id, to_user_id) = greatest($1::bigint, $2::bigint)
RETURNING id, from_user_id, to_user_id
"""
ADD_FRIENDSHIP = """
INSERT INTO social.friendships (user_id, friend_id) VALUES ($1, $2), ($2, $1)
ON CONFLICT DO NOTHING
"""
REMOVE_FRIENDSHIP = """
DELETE FROM social.friendships
WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)
"""
COUNT_FRIENDS = "SELECT count(*) FROM social.friendships WHERE user_id = $1"
FRIEND_IDS = "SELECT friend_id FROM social.friendships WHERE user_id = $1"
FRIENDS_AMONG = """
SELECT friend_id FROM social.friendships WHERE user_id = $1 AND friend_id = ANY($2::bigint[])
"""
# Friends newest first; the viewer (if any) never sees users hidden from them.
LIST_FRIENDS = f"""
SELECT f.created_at AS since, {PUBLIC_USER_COLUMNS}
FROM social.friendships f
JOIN accounts.users u ON u.id = f.friend_id
WHERE f.user_id = $1 AND (f.created_at, f.friend_id) < ($2::timestamptz, $3::bigint)
  AND u.status = 'active'
  AND ($4::bigint IS NULL OR $4::bigint = f.friend_id
       OR NOT {users_hidden("$4::bigint", "f.friend_id")})
ORDER BY f.created_at DESC, f.friend_id DESC
LIMIT $5
"""
ADD_BLOCK = """
INSERT INTO social.blocks (blocker_id, blocked_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING created_at
"""
GET_BLOCK = "SELECT created_at FROM social.blocks WHERE blocker_id = $1 AND blocked_id = $2"
REMOVE_BLOCK = "DELETE FROM social.blocks WHERE blocker_id = $1 AND blocked_id = $2"
LIST_BLOCKS = f"""
SELECT b.created_at, {PUBLIC_USER_COLUMNS}
FROM social.blocks b JOIN accounts.users u ON u.id = b.blocked_id
WHERE b.blocker_id = $1 AND (b.created_at, b.blocked_id) < ($2::timestamptz, $3::bigint)
ORDER BY b.created_at DESC, b.blocked_id DESC
LIMIT $4
"""


_ANSWERS: dict[
    str, type[FriendRequestAccepted | FriendRequestDeclined | FriendRequestCancelled]
] = {
    "accepted": FriendRequestAccepted,
    "declined": FriendRequestDeclined,
    "cancelled": FriendRequestCancelled,
}


@dataclass(frozen=True, slots=True)
class Relationship:
    other_exists: bool
    other_active: bool
    friends: bool
    i_blocked: bool
    blocked_me: bool
    pending_request_id: int | None
    pending_from: int | None


@dataclass(frozen=True, slots=True)
class UserRelationship:
    """What ``user_id`` is to the one asking (see RELATIONSHIPS)."""

    user_id: int
    friends: bool
    incoming_request_id: int | None
    outgoing_request_id: int | None
    blocking: bool


@dataclass(frozen=True, slots=True)
class FriendRequest:
    id: int
    from_user_id: int
    to_user_id: int
    status: Literal["pending", "accepted", "declined", "cancelled"]
    created_at: datetime
    from_user: PublicUser
    to_user: PublicUser

    @classmethod
    def of(cls, row: Record) -> FriendRequest:
        return cls(
            row["id"],
            row["from_user_id"],
            row["to_user_id"],
            row["status"],
            row["created_at"],
            PublicUser.of(row, "f_"),
            PublicUser.of(row, "t_"),
        )


@dataclass(frozen=True, slots=True)
class Friend:
    user: PublicUser
    since: datetime


@dataclass(frozen=True, slots=True)
class Block:
    user: PublicUser
    created_at: datetime


class SocialStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- inside a pair transaction ------------------------------------------------------------
    # Each change writes its event (agora.events.types) in the same transaction, after the
    # change: the pair's lock, held until commit, keeps one pair's events in commit order.

    async def lock_pair(self, tx: Tx, a: int, b: int) -> None:
        await tx.execute("lock_pair", LOCK_PAIR, a, b)

    async def lock_users(self, tx: Tx, a: int, b: int) -> None:
        """Hold both users' rows until the transaction ends (before counting their friends)."""
        await tx.execute("lock_users", LOCK_USERS, [a, b])

    async def relationship(self, tx: Tx, me: int, other: int) -> Relationship:
        row = await tx.fetchrow("relationship", RELATIONSHIP, me, other)
        assert row is not None
        return Relationship(
            other_exists=row["other_status"] is not None,
            other_active=row["other_status"] == "active",
            friends=row["friends"],
            i_blocked=row["i_blocked"],
            blocked_me=row["blocked_me"],
            pending_request_id=row["request_id"],
            pending_from=row["request_from"],
        )

    async def create_request(self, tx: Tx, from_user: int, to_user: int) -> int:
        request_id: int = await tx.fetchval(
            "create_friend_request", INSERT_REQUEST, from_user, to_user
        )
        await append(
            tx,
            FriendRequestSent(request_id=request_id, from_id=from_user, to_id=to_user),
            from_user,
        )
        return request_id

    async def request_parties(self, tx: Tx, request_id: int) -> tuple[int, int, str] | None:
        row = await tx.fetchrow("friend_request_parties", REQUEST_PARTIES, request_id)
        return (row["from_user_id"], row["to_user_id"], row["status"]) if row else None

    async def set_request_status(
        self,
        tx: Tx,
        request_id: int,
        status: Literal["accepted", "declined", "cancelled"],
        actor_id: int,
    ) -> None:
        """Answer a pending request (the caller holds the pair's lock and saw it pending)."""
        row = await tx.fetchrow("set_friend_request_status", SET_REQUEST_STATUS, request_id, status)
        if row is not None:
            payload = _ANSWERS[status](
                request_id=request_id, from_id=row["from_user_id"], to_id=row["to_user_id"]
            )
            await append(tx, payload, actor_id)

    async def cancel_pending_between(self, tx: Tx, a: int, b: int) -> None:
        """Cancel the pair's pending request, if any, as ``a`` did (a block)."""
        rows = await tx.fetch("cancel_pending_requests", CANCEL_PENDING_BETWEEN, a, b)
        for row in rows:
            payload = FriendRequestCancelled(
                request_id=row["id"], from_id=row["from_user_id"], to_id=row["to_user_id"]
            )
            await append(tx, payload, a)

    async def add_friendship(self, tx: Tx, a: int, b: int) -> None:
        await tx.execute("add_friendship", ADD_FRIENDSHIP, a, b)

    async def remove_friendship(
        self, tx: Tx, a: int, b: int, reason: Literal["unfriend", "block"]
    ) -> bool:
        """End the friendship of ``a`` (who acts) and ``b``; False when there was none."""
        if await tx.execute("remove_friendship", REMOVE_FRIENDSHIP, a, b) == "DELETE 0":
            return False
        await append(tx, FriendshipEnded(user_id=a, friend_id=b, reason=reason), a)
        return True

    async def count_friends(self, tx: Tx, user_id: int) -> int:
        count: int = await tx.fetchval("count_friends", COUNT_FRIENDS, user_id)
        return count

    async def add_block(self, tx: Tx, blocker: int, blocked: int) -> tuple[datetime, bool]:
        created = await tx.fetchval("add_block", ADD_BLOCK, blocker, blocked)
        if created is not None:
            await append(tx, UserBlocked(blocker_id=blocker, blocked_id=blocked), blocker)
            return created, True
        existing: datetime = await tx.fetchval("get_block", GET_BLOCK, blocker, blocked)
        return existing, False

    async def remove_block(self, tx: Tx, blocker: int, blocked: int) -> bool:
        if await tx.execute("remove_block", REMOVE_BLOCK, blocker, blocked) == "DELETE 0":
            return False
        await append(tx, UserUnblocked(blocker_id=blocker, blocked_id=blocked), blocker)
        return True

    # -- reads ---------------------------------------------------------------------------------

    async def get_request(self, request_id: int) -> FriendRequest | None:
        row = await self.db.fetchrow("get_friend_request", SELECT_REQUEST, request_id)
        return FriendRequest.of(row) if row else None

    async def list_requests(
        self, user_id: int, incoming: bool, before_id: int, limit: int
    ) -> list[FriendRequest]:
        sql = LIST_INCOMING if incoming else LIST_OUTGOING
        rows = await self.db.fetch("list_friend_requests", sql, user_id, before_id, limit)
        return [FriendRequest.of(r) for r in rows]

    async def relationships(self, viewer_id: int, user_ids: list[int]) -> list[UserRelationship]:
        rows = await self.db.fetch("relationships", RELATIONSHIPS, viewer_id, user_ids)
        return [
            UserRelationship(
                r["id"],
                r["friends"],
                r["incoming_request_id"],
                r["outgoing_request_id"],
                r["blocking"],
            )
            for r in rows
        ]

    async def friend_ids(self, user_id: int) -> list[int]:
        rows = await self.db.fetch("friend_ids", FRIEND_IDS, user_id)
        return [r["friend_id"] for r in rows]

    async def friends_among(self, user_id: int, candidates: list[int]) -> set[int]:
        rows = await self.db.fetch("friends_among", FRIENDS_AMONG, user_id, candidates)
        return {r["friend_id"] for r in rows}

    async def list_friends(
        self, user_id: int, viewer_id: int | None, before: tuple[datetime, int], limit: int
    ) -> list[Friend]:
        rows = await self.db.fetch(
            "list_friends", LIST_FRIENDS, user_id, before[0], before[1], viewer_id, limit
        )
        return [Friend(PublicUser.of(r), r["since"]) for r in rows]

    async def list_blocks(
        self, user_id: int, before: tuple[datetime, int], limit: int
    ) -> list[Block]:
        rows = await self.db.fetch("list_blocks", LIST_BLOCKS, user_id, before[0], before[1], limit)
        return [Block(PublicUser.of(r), r["created_at"]) for r in rows]
