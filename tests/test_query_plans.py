"""Every query path has an index: with sequential scans disabled, no plan may still need one.

PostgreSQL falls back to a sequential scan (at a huge cost) when no index can serve a query, so
``enable_seqscan = off`` turns a missing index into a visible "Seq Scan" node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from agora.storage import (
    accounts,
    chat,
    content,
    events,
    media,
    moderation,
    notifications,
    search,
    search_index,
    social,
)
from tests.support.search import NO_PG_TRGM, has_pg_trgm

NOW = datetime.now(UTC)
OUR_SCHEMAS = {
    "accounts",
    "social",
    "content",
    "chat",
    "notifications",
    "events",
    "media",
    "moderation",
}
# Tables read whole on purpose: the relay claims every one of the 16 partitions it can.
WHOLE = {"events.relay_partitions"}

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
    "relationships": (social.RELATIONSHIPS, (1, [2, 3])),
    "incoming requests": (social.LIST_INCOMING, (1, 2**53, 20)),
    "outgoing requests": (social.LIST_OUTGOING, (1, 2**53, 20)),
    "friends": (social.LIST_FRIENDS, (1, NOW, 2**53, None, 20)),
    "friend ids": (social.FRIEND_IDS, (1,)),
    "blocks": (social.LIST_BLOCKS, (1, NOW, 2**53, 20)),
    "post": (content.GET_POST, (1, 2)),
    "posts by ids": (content.POSTS_BY_IDS, (1, [2, 3])),
    "react": (content.REACT, (1, 2, "like")),
    "create comment": (content.CREATE_COMMENT, (1, 2, 3, "hello")),
    "create post": (content.CREATE_POST, (1, "hello", "public")),
    "user posts": (content.USER_POSTS, (1, 2, 2**53, 20)),
    "feed ids": (content.FEED_IDS, (1, 2**53, 800)),
    "feed page": (content.FEED_PAGE, (1, 2**53, 21)),
    "top feed": (content.TOP_FEED, (1, NOW, 2**53, 0, float("inf"), 2**53, 200, 21, NOW)),
    "fold counters": (content.FOLD_COUNTERS, (5000,)),
    "comments": (content.LIST_COMMENTS, (1, 2, 0, 20)),
    "comment access": (content.COMMENT_ACCESS, (1, 2)),
    "conversation for member": (chat.CONVERSATION_FOR_MEMBER, (1, 2)),
    "conversations": (chat.LIST_CONVERSATIONS, (1, NOW, 2**53, 20)),
    "conversation with its last message": (chat.CONVERSATION_WITH_LAST, (1, 2)),
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
    "users by name": (accounts.USERS_BY_NAME, (["bob"],)),
    "notifications: conversation members": (notifications.CONVERSATION_MEMBERS, ([1, 2],)),
    "notifications: admissible": (
        notifications.ADMISSIBLE,
        ([0], [1], [2], ["reaction"], [3], [None]),
    ),
    "notifications: latest groups": (notifications.LATEST_GROUPS, ([1], ["reaction:post:3"])),
    "notifications: write": (
        notifications.WRITE,
        (
            [1],
            ["reaction"],
            ["reaction:post:3"],
            ["post"],
            [3],
            [3],
            [2],
            [None],
            [None],
            [1],
            [datetime.now(UTC)],
            [datetime.now(UTC)],
            [None, 7],
            [1, None],
            [2, 4],
            [9, 10],
            [2, 4],
            [None, None],
            [datetime.now(UTC)] * 2,
        ),
    ),
    "notifications: remove comment sources": (notifications.REMOVE_COMMENT_SOURCES, ([3], [4])),
    "notifications: remove pair sources": (notifications.REMOVE_PAIR_SOURCES, (1, 2)),
    "notifications: recount": (notifications.RECOUNT, ([1, 2],)),
    "notifications: delete for posts": (notifications.DELETE_FOR_POSTS, ([3],)),
    "notifications: groups by ids": (notifications.GROUPS_BY_IDS, ([1],)),
    "notifications: list": (notifications.LIST, (1, 2**53, 21)),
    "notifications: list unread": (notifications.LIST_UNREAD, (1, 2**53, 21)),
    "notifications: unread count": (notifications.UNREAD_COUNT, (1,)),
    "notifications: mark read": (notifications.MARK_READ, (1, [2, 3])),
    "notifications: mark all read": (notifications.MARK_ALL_READ, (1,)),
    "notifications: settings": (notifications.SETTINGS, (1,)),
    "notifications: update settings": (
        notifications.UPDATE_SETTINGS,
        (1, ["comment"], [True], [None]),
    ),
    "events: claim partitions": (events.CLAIM_PARTITIONS, (4, 1)),
    "events: unsent": (events.UNSENT, ([0, 1], 1000)),
    "events: mark sent": (events.MARK_SENT, ([1, 2],)),
    "events: backlog": (events.BACKLOG, ()),
    "events: purge sent": (events.PURGE_SENT, (3600.0, 1000)),
    "events: purge processed": (events.PURGE_PROCESSED, (3600.0, 1000)),
    "events: claim processed": (events.CLAIM_PROCESSED, ("c", [1, 2])),
    "events: lease": (events.LEASE, ("c", 100, 60.0)),
    "events: ack": (events.ACK, ([1, 2],)),
    "events: release": (events.RELEASE, ([1, 2],)),
    "events: dead letter": (events.DEAD_LETTER, (1, "t", "e", 5)),
    "events: dead letters": (events.DEAD_LETTERS, ("c", 100)),
    "events: replay": (events.REPLAY, ("c", [1])),
    "media: claim objects": (media.CLAIM_OBJECTS, (["a" * 64 + ".jpg"], [1])),
    "media: access": (media.UPLOAD_ACCESS, (1,)),
    "media: by ids": (media.UPLOADS_BY_IDS, ([1, 2],)),
    "media: attach": (media.ATTACH, (1, [2, 3], 4)),
    "media: own unattached": (media.OWN_UNATTACHED, (1, 2)),
    "media: delete for post": (media.DELETE_FOR_POST, (1,)),
    "media: orphans": (media.ORPHANS, (86400.0, 100)),
    "media: unused objects": (media.UNUSED_OBJECTS, (3600.0, 100)),
    "media: delete objects": (media.DELETE_OBJECTS, (["a"],)),
    "search: visible users": (search.VISIBLE_USERS, (1, [2, 3], 20)),
    "search: visible posts": (search.VISIBLE_POSTS, (1, [2, 3], 20, ["tea"])),
    "search: visible messages": (search.VISIBLE_MESSAGES, (1, [2, 3], 20, ["tea"])),
    "search index: users by ids": (search_index.USERS_BY_IDS, ([1, 2],)),
    "search index: posts by ids": (search_index.POSTS_BY_IDS, ([1, 2],)),
    "search index: messages by ids": (search_index.MESSAGES_BY_IDS, ([1, 2],)),
    "search index: users after": (search_index.USERS_AFTER, (0, 1000)),
    "search index: posts after": (search_index.POSTS_AFTER, (0, 1000)),
    "search index: messages after": (search_index.MESSAGES_AFTER, (0, 1000)),
    "search index: viewer friends": (search_index.VIEWER_FRIENDS, (1, 5000)),
    "search index: viewer conversations": (search_index.VIEWER_CONVERSATIONS, (1, 10000)),
    "moderation: report queue": (moderation.LIST_REPORTS, ("open", None, 0, 21)),
    "moderation: report queue by category": (moderation.LIST_REPORTS, ("open", "spam", 0, 21)),
    "moderation: lock report": (moderation.LOCK_REPORT, (1,)),
    "moderation: resolve": (moderation.RESOLVE, (1, "remove", None, 2, True, "post", 3)),
    "moderation: audit log": (moderation.LIST_AUDIT, (2**53, None, None, None, 21)),
    "moderation: audit log by target": (
        moderation.LIST_AUDIT,
        (2**53, "post.delete", "post", 3, 21),
    ),
    **{
        f"moderation: {kind} subject": (sql, (1, 2))
        for kind, sql in moderation._SUBJECT_SQL.items()
    },
    "suspend": (accounts.SUSPEND, (1, None, "r")),
    "unsuspend": (accounts.UNSUSPEND, (1, True)),
    "suspension of": (accounts.SUSPENSION_OF, (1,)),
    "suspended ids": (accounts.SUSPENDED_IDS, ()),
    "suspensions over": (accounts.SUSPENSIONS_OVER, (100,)),
    "remove message": (chat.REMOVE_MESSAGE, (1,)),
    "hold post": (content.HOLD_POST, (1,)),
    "publish post": (content.PUBLISH_POST, (1,)),
    "publish comment": (content.PUBLISH_COMMENT, (1,)),
}

# Search's candidate queries run with custom plans (storage/search.py): planned for these values.
_WORDS = (["coffee"], ["good morning"], ["tea"], [])
_NO_WORDS: tuple[list[str], ...] = ([], [], [], [])
CUSTOM_PLANNED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "search: posts by words": (search.POST_TEXT_WINDOW, (*_WORDS, 2**53, 0, NOW, None)),
    "search: posts by words and more": (
        search.POST_WINDOW,
        (*_WORDS, 2**53, 0, [2], True, NOW),
    ),
    "search: posts from authors": (
        search.POST_WINDOW,
        (*_NO_WORDS, 2**53, 0, [2, 3], False, NOW),
    ),
    "search: posts with media": (search.POST_WINDOW, (*_NO_WORDS, 2**53, 0, None, True, NOW)),
    "search: posts by date": (search.POST_WINDOW, (*_NO_WORDS, 2**53, 2**40, None, False, NOW)),
    "search: messages by words": (search.MESSAGE_WINDOW, (*_WORDS, 2**53, 0, None, 1, NOW)),
    "search: messages by date": (search.MESSAGE_WINDOW, (*_NO_WORDS, 2**53, 0, None, 1, NOW)),
    "search: messages from senders": (
        search.MESSAGE_WINDOW,
        (*_NO_WORDS, 2**53, 0, [2], 1, NOW),
    ),
    "search: users by prefix": (
        search.USER_PREFIXES,
        ("zephyr", "zephyr%", ["%quill%"], 8.0, 2**53, 21),
    ),
    **{
        f"search: users within a typo ({mode})": (
            search.user_typos(mode),
            ("zephyr", "zephyr%", ["%quill%"], 2.0, 0, 21),
        )
        for mode in ("pg_trgm", "builtin")
    },
}


def _seq_scans(plan: dict[str, Any]) -> list[str]:
    found = []
    table = f"{plan.get('Schema')}.{plan.get('Relation Name')}"
    seq_scan = plan.get("Node Type") == "Seq Scan" and plan.get("Schema") in OUR_SCHEMAS
    if seq_scan and table not in WHOLE:
        found.append(table)
    for child in plan.get("Plans", []):
        found += _seq_scans(child)
    return found


async def _plan(database_url: str, sql: str, args: tuple[Any, ...], mode: str) -> dict[str, Any]:
    """The plan of ``sql`` with sequential scans disabled."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            # Plan as the server will: after a few runs generic plans, functions inlined (the
            # search candidates' pool: custom plans, for the values of each query).
            await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
            explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON, VERBOSE) {sql}", *args)
    finally:
        await conn.close()
    plan: dict[str, Any] = (
        explained if isinstance(explained, list) else __import__("json").loads(explained)
    )[0]["Plan"]
    return plan


@pytest.mark.parametrize("name", sorted(QUERIES) + sorted(CUSTOM_PLANNED))
async def test_no_sequential_scans(database_url: str, name: str) -> None:
    sql, args = QUERIES[name] if name in QUERIES else CUSTOM_PLANNED[name]
    mode = "force_generic_plan" if name in QUERIES else "force_custom_plan"
    if "(pg_trgm)" in name and not await has_pg_trgm(database_url):
        pytest.skip(NO_PG_TRGM)
    plan = await _plan(database_url, sql, args, mode)
    assert _seq_scans(plan) == [], name


@pytest.mark.parametrize("name", ["conversations", "conversation with its last message"])
async def test_last_message_is_one_index_probe_per_conversation(
    database_url: str, name: str
) -> None:
    """GET /conversations: the page is cut to its LIMIT first, then each of its rows looks its
    newest message up in the unique index (conversation_id, seq = last_seq); no sort after."""
    sql, args = QUERIES[name]
    plan = await _plan(database_url, sql, args, "force_generic_plan")
    assert (plan["Node Type"], plan["Join Type"]) == ("Nested Loop", "Left"), plan
    sides = {p["Parent Relationship"]: p for p in plan["Plans"]}
    assert sides["Inner"]["Node Type"] == "Limit", sides["Inner"]
    (message,) = sides["Inner"]["Plans"]
    assert message["Node Type"] == "Index Scan" and message["Index Name"] == "messages_seq"
    assert "conversation_id = c.id" in message["Index Cond"], message  # both keys: one row
    assert "seq = c.last_seq" in message["Index Cond"], message
    if name == "conversations":
        assert sides["Outer"]["Node Type"] == "Limit", sides["Outer"]


# A post's counters (content.post_counts, migration 0015): its post_stats row and the sum of its
# pending deltas, each one index lookup per post, the sum run per post on the inner side of a
# nested loop: never a scan of the deltas table, however many deltas other posts have.
COUNTER_READS = {"post": 1, "posts by ids": 1, "user posts": 1, "feed page": 1, "top feed": 2}


def _with_ancestors(
    plan: dict[str, Any], ancestors: tuple[dict[str, Any], ...] = ()
) -> Iterator[tuple[dict[str, Any], tuple[dict[str, Any], ...]]]:
    yield plan, ancestors
    for child in plan.get("Plans", []):
        yield from _with_ancestors(child, (*ancestors, plan))


@pytest.mark.parametrize("name", sorted(COUNTER_READS))
async def test_counters_are_one_index_lookup_per_post(database_url: str, name: str) -> None:
    sql, args = QUERIES[name]
    plan = await _plan(database_url, sql, args, "force_generic_plan")
    nodes = list(_with_ancestors(plan))
    rows = {n["Alias"]: n for n, _ in nodes if n.get("Relation Name") == "post_stats"}
    deltas = [(n, up) for n, up in nodes if n.get("Relation Name") == "post_stat_deltas"]
    assert len(rows) == len(deltas) == COUNTER_READS[name], name
    for row in rows.values():
        assert (row["Node Type"], row["Index Name"]) == ("Index Scan", "post_stats_pkey"), row
        # By the post's id; on a small table (the suite's database late in a run) the planner
        # may instead walk the primary key in order for a merge join, still no heap scan.
        cond = row.get("Index Cond", f"({row['Alias']}.post_id = ")
        assert cond.startswith(f"({row['Alias']}.post_id = "), row
    summed = set()
    for scan, (*_, loop, aggregate) in deltas:
        index = scan if scan["Node Type"] != "Bitmap Heap Scan" else scan["Plans"][0]
        assert index["Node Type"] in {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}, scan
        assert index["Index Name"] == "post_stat_deltas_post", index
        cond = re.fullmatch(rf"\({scan['Alias']}\.post_id = (\w+)\.post_id\)", index["Index Cond"])
        assert cond is not None and cond[1] in rows, index["Index Cond"]  # this post's deltas
        summed.add(cond[1])
        assert (aggregate["Node Type"], aggregate["Parent Relationship"]) == ("Aggregate", "Inner")
        assert loop["Node Type"] == "Nested Loop", loop
    assert summed == set(rows)  # every post_stats row read has its own sum of deltas
