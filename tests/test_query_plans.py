"""Every query path has an index: with sequential scans disabled, no plan may still need one.

PostgreSQL falls back to a sequential scan (at a huge cost) when no index can serve a query, so
``enable_seqscan = off`` turns a missing index into a visible "Seq Scan" node.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from agora.storage import accounts, chat, content, social

NOW = datetime.now(UTC)
OUR_SCHEMAS = {"accounts", "social", "content", "chat"}

QUERIES: dict[str, tuple[str, tuple[Any, ...]]] = {
    "user by login": (accounts.SELECT_USER_BY_LOGIN, ("someone",)),
    "visible user": (accounts.SELECT_VISIBLE_USER, (1, 2)),
    "refresh token": (accounts.LOCK_REFRESH, (b"x" * 32,)),
    "user sessions": (accounts.REVOKE_USER_SESSIONS.replace("UPDATE", "UPDATE", 1), (1, "r")),
    "recently revoked": (accounts.RECENTLY_REVOKED, (NOW,)),
    "invalid logins": (accounts.INVALID_LOGINS, ([1, 2],)),
    "purge refresh tokens": (accounts.PURGE_REFRESH_TOKENS, (3600.0, 1000)),
    "purge revoked logins": (accounts.PURGE_REVOKED_LOGINS, (3600.0, 1000)),
    "purge expired logins": (accounts.PURGE_EXPIRED_LOGINS, (3600.0, 1000)),
    "relationship": (social.RELATIONSHIP, (1, 2)),
    "incoming requests": (social.LIST_INCOMING, (1, 2**53, 20)),
    "outgoing requests": (social.LIST_OUTGOING, (1, 2**53, 20)),
    "friends": (social.LIST_FRIENDS, (1, NOW, 2**53, None, 20)),
    "friend ids": (social.FRIEND_IDS, (1,)),
    "blocks": (social.LIST_BLOCKS, (1, NOW, 2**53, 20)),
    "post": (content.GET_POST, (1, 2)),
    "posts by ids": (content.POSTS_BY_IDS, (1, [2, 3])),
    "user posts": (content.USER_POSTS, (1, 2, 2**53, 20)),
    "feed ids": (content.FEED_IDS, (1, 2**53, 800)),
    "feed page": (content.FEED_PAGE, (1, 2**53, 21)),
    "top feed": (content.TOP_FEED, (1, NOW, 2**53, 0, float("inf"), 2**53, 200, 21, NOW)),
    "comments": (content.LIST_COMMENTS, (1, 2, 0, 20)),
    "comment access": (content.COMMENT_ACCESS, (1, 2)),
    "conversation for member": (chat.CONVERSATION_FOR_MEMBER, (1, 2)),
    "conversations": (chat.LIST_CONVERSATIONS, (1, NOW, 2**53, 20)),
    "conversation members": (chat.MEMBERS_OF, ([1, 2],)),
    "conversation state": (chat.STATE, (1,)),
    "direct hidden": (chat.DIRECT_HIDDEN, (1,)),
    "commit messages": (chat.COMMIT, ([1], [2], ["c"], ["t"], [0], [1], [0], [0])),
    "mark read": (chat.MARK_READ, (1, 2, 3)),
    "messages after": (chat.MESSAGES_AFTER, (1, 0, 50)),
    "messages before": (chat.MESSAGES_BEFORE, (1, 2**53, 50)),
    "lock members": (chat.LOCK_MEMBERS, (1,)),
    "count members": (chat.COUNT_MEMBERS, (1, [2, 3])),
    "remove member": (chat.DELETE_MEMBER, (1, 2)),
    "direct by key": (chat.DIRECT_BY_KEY, ("1:2",)),
}


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan" and plan.get("Schema") in OUR_SCHEMAS:
        found.append(f"{plan['Schema']}.{plan['Relation Name']}")
    for child in plan.get("Plans", []):
        found += _seq_scans(child)
    return found


@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_no_sequential_scans(database_url: str, name: str) -> None:
    sql, args = QUERIES[name]
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            # Plan as the server will after a few runs: generic plans, functions inlined.
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON, VERBOSE) {sql}", *args)
    finally:
        await conn.close()
    plan = (explained if isinstance(explained, list) else __import__("json").loads(explained))[0][
        "Plan"
    ]
    assert _seq_scans(plan) == [], name
