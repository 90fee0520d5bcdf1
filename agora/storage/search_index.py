"""What the Elasticsearch backend reads from PostgreSQL: documents to index, and a viewer's
coarse audience.

The indexer (:mod:`agora.search.indexer`) loads the rows its events name inside the runner's
transaction: the document is always the row as it is now (a missing row is a deletion), never
the event's payload, so a late or repeated event cannot write stale text. ``agora search
reindex`` (:mod:`agora.search.reindex`) copies whole tables in id-keyset batches. A search
(:mod:`agora.search.elastic`) reads the viewer's friend ids and conversation ids to pre-filter
the audience in the index; the service re-checks every candidate with the one visibility rule
anyway (:mod:`agora.storage.search`).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from agora.storage.db import Database, Record, Tx

# A viewer's friends whose friends-only posts the index may return (the newest friendships
# first); posts of friends past the cap are missing from Elasticsearch's results (never shown
# to someone else: the re-check still applies).
MAX_FRIENDS = 5000
# Likewise the conversations searched (the newest first: ids are time-ordered).
MAX_CONVERSATIONS = 10000

USERS_BY_IDS = """
SELECT id, username, display_name, created_at FROM accounts.users WHERE id = ANY($1::bigint[])
"""
POSTS_BY_IDS = """
SELECT id, author_id, visibility, text, created_at, cardinality(media_ids) > 0 AS has_media
FROM content.posts WHERE id = ANY($1::bigint[])
"""
MESSAGES_BY_IDS = """
SELECT id, conversation_id, seq, sender_id, text, created_at
FROM chat.messages WHERE id = ANY($1::bigint[])
"""
# Reindex batches: the rows after id $1, in id order.
USERS_AFTER = """
SELECT id, username, display_name, created_at FROM accounts.users
WHERE id > $1 ORDER BY id LIMIT $2
"""
POSTS_AFTER = """
SELECT id, author_id, visibility, text, created_at, cardinality(media_ids) > 0 AS has_media
FROM content.posts WHERE id > $1 ORDER BY id LIMIT $2
"""
MESSAGES_AFTER = """
SELECT id, conversation_id, seq, sender_id, text, created_at
FROM chat.messages WHERE id > $1 ORDER BY id LIMIT $2
"""
VIEWER_FRIENDS = """
SELECT friend_id FROM social.friendships WHERE user_id = $1
ORDER BY created_at DESC, friend_id DESC LIMIT $2
"""
VIEWER_CONVERSATIONS = """
SELECT conversation_id FROM chat.members WHERE user_id = $1
ORDER BY conversation_id DESC LIMIT $2
"""


class UserDoc(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    username: str
    display_name: str
    created_at: datetime


class PostDoc(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    author_id: int
    visibility: str
    text: str
    created_at: datetime
    has_media: bool


class MessageDoc(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    conversation_id: int
    seq: int
    sender_id: int
    text: str
    created_at: datetime


Doc = UserDoc | PostDoc | MessageDoc


def _users(rows: list[Record]) -> list[UserDoc]:
    return [UserDoc(**r) for r in rows]


def _posts(rows: list[Record]) -> list[PostDoc]:
    return [PostDoc(**r) for r in rows]


def _messages(rows: list[Record]) -> list[MessageDoc]:
    return [MessageDoc(**r) for r in rows]


class SearchIndexStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the indexer: inside the runner's transaction ------------------------------------------

    async def users(self, tx: Tx, ids: list[int]) -> list[UserDoc]:
        return _users(await tx.fetch("search_index_users", USERS_BY_IDS, ids))

    async def posts(self, tx: Tx, ids: list[int]) -> list[PostDoc]:
        return _posts(await tx.fetch("search_index_posts", POSTS_BY_IDS, ids))

    async def messages(self, tx: Tx, ids: list[int]) -> list[MessageDoc]:
        return _messages(await tx.fetch("search_index_messages", MESSAGES_BY_IDS, ids))

    # -- reindex: one autocommit statement per batch --------------------------------------------

    async def users_after(self, after: int, limit: int) -> list[UserDoc]:
        return _users(await self.db.fetch("search_reindex_users", USERS_AFTER, after, limit))

    async def posts_after(self, after: int, limit: int) -> list[PostDoc]:
        return _posts(await self.db.fetch("search_reindex_posts", POSTS_AFTER, after, limit))

    async def messages_after(self, after: int, limit: int) -> list[MessageDoc]:
        return _messages(
            await self.db.fetch("search_reindex_messages", MESSAGES_AFTER, after, limit)
        )

    # -- a search's audience --------------------------------------------------------------------

    async def friend_ids(self, viewer: int) -> list[int]:
        rows = await self.db.fetch("search_viewer_friends", VIEWER_FRIENDS, viewer, MAX_FRIENDS)
        return [r["friend_id"] for r in rows]

    async def conversation_ids(self, viewer: int) -> list[int]:
        rows = await self.db.fetch(
            "search_viewer_conversations", VIEWER_CONVERSATIONS, viewer, MAX_CONVERSATIONS
        )
        return [r["conversation_id"] for r in rows]
