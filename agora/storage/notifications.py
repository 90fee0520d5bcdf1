"""Notifications: groups (a single notification is a group of one), their sources, preferences.

The consumer side (:class:`agora.services.notifications.NotificationConsumer`) works on a batch
of events inside the runner's transaction with a handful of set-based statements whatever the
batch's size: lookups, the one admission filter, the grouping locks, the latest groups, one
:data:`WRITE` of every new group and source, the rendering of what changed (events that delete
something add their own statements, in their place). The read side lists, counts and marks read;
both re-check, on every read, that the caller may still see the subject (the one visibility
rule, :mod:`agora.storage.visibility`) and its actors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from agora.storage.accounts import PUBLIC_USER_COLUMNS, USERS_BY_NAME, PublicUser
from agora.storage.db import Database, Record, Tx
from agora.storage.visibility import post_visible, users_hidden

WINDOW_SECONDS = 12 * 3600.0  # reactions and comments on one post group within this window

# -- the consumer's statements ----------------------------------------------------------------

CONVERSATION_MEMBERS = """
SELECT conversation_id, user_id FROM chat.members WHERE conversation_id = ANY($1::bigint[])
"""
# Of the candidate notifications ($1 their indexes), the ones that may be created: the kind is
# enabled for the recipient (and, with only_friends, the actor is a friend), the recipient is an
# active user, neither has blocked the other (nor is suspended), the recipient may see the post
# it is about (which still exists), and the comment it is about still exists. (Each check is
# a per-row subquery, not a join: a semi-join on users made the planner rescan the candidates
# once per user.)
ADMISSIBLE = f"""
SELECT c.i
FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[])
     AS c(i, recipient, actor, kind, post_id, comment_id)
LEFT JOIN notifications.settings s ON s.user_id = c.recipient AND s.kind = c.kind
LEFT JOIN content.posts p ON p.id = c.post_id
WHERE coalesce(s.enabled, true)
  AND (NOT coalesce(s.only_friends, false)
       OR EXISTS (SELECT 1 FROM social.friendships f
                  WHERE f.user_id = c.recipient AND f.friend_id = c.actor))
  AND (SELECT u.status FROM accounts.users u WHERE u.id = c.recipient) = 'active'
  AND NOT {users_hidden("c.recipient", "c.actor")}
  AND (c.post_id IS NULL
       OR (p.id IS NOT NULL AND {post_visible("c.recipient", "p")}))
  AND (c.comment_id IS NULL
       OR EXISTS (SELECT 1 FROM content.comments cm WHERE cm.id = c.comment_id AND NOT cm.held))
"""
# Serialise the writers of one (recipient, base key) for the rest of the transaction, so two
# batches cannot both open a group for it; the keys are taken in order (no deadlock). Taken in a
# statement of its own: the next statements' snapshots then see what the previous holder wrote.
LOCK_GROUPS = """
SELECT count(pg_advisory_xact_lock(k)) FROM (
    SELECT DISTINCT hashtextextended('agora.notification:' || u || ':' || b, 0) AS k
    FROM unnest($1::bigint[], $2::text[]) AS x(u, b)
    ORDER BY 1
) AS keys
"""
# The latest group of each (recipient, base key): the one a new notification may join (the
# consumer decides, from its window or read state, whether it is still open).
LATEST_GROUPS = """
SELECT x.u AS user_id, x.b AS base_key, g.id, g.created_at, g.read_at IS NOT NULL AS read
FROM unnest($1::bigint[], $2::text[]) AS x(u, b)
CROSS JOIN LATERAL (
    SELECT id, created_at, read_at FROM notifications.groups
    WHERE user_id = x.u AND base_key = x.b
    ORDER BY created_at DESC
    LIMIT 1
) AS g
"""
# A batch's notifications in one statement. New groups ($1-$12, one per new group, their
# count, actors and times as the consumer computed them from their sources) get fresh ids;
# sources ($13-$19) name an existing group ($13) or a new one (its 1-based index, $14). A
# source already there (the same user reacting again) is skipped; an existing group that gained
# sources grows: count, actors (the newest first, at most 3), latest activity, unread again, and
# a new sort key (to the top). Answers each new or grown group with the sources it gained.
WRITE = """
WITH new_ids AS (
    SELECT x.n, agora.next_id() AS id FROM generate_series(1, cardinality($1::bigint[])) AS x(n)
),
created AS (
    INSERT INTO notifications.groups (id, user_id, kind, base_key, subject_type, subject_id,
                                      post_id, actor_id, actor_ids, count, created_at,
                                      updated_at, sort_key)
    SELECT ni.id, g.user_id, g.kind, g.base_key, g.subject_type, g.subject_id, g.post_id,
           g.a1, array_remove(ARRAY[g.a1, g.a2, g.a3], NULL), g.n, g.created_at, g.updated_at,
           agora.next_id(g.updated_at)
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                $7::bigint[], $8::bigint[], $9::bigint[], $10::int[], $11::timestamptz[],
                $12::timestamptz[])
         WITH ORDINALITY AS g(user_id, kind, base_key, subject_type, subject_id, post_id,
                              a1, a2, a3, n, created_at, updated_at, i)
    JOIN new_ids ni ON ni.n = g.i
    RETURNING id, kind, count
),
inserted AS (
    INSERT INTO notifications.sources
        (notification_id, source_key, event_id, actor_id, comment_id, created_at)
    SELECT coalesce(s.group_id, ni.id), s.source_key, s.event_id, s.actor_id, s.comment_id, s.at
    FROM unnest($13::bigint[], $14::int[], $15::bigint[], $16::bigint[], $17::bigint[],
                $18::bigint[], $19::timestamptz[])
         AS s(group_id, new_index, source_key, event_id, actor_id, comment_id, at)
    LEFT JOIN new_ids ni ON ni.n = s.new_index
    ON CONFLICT DO NOTHING
    RETURNING notification_id, actor_id, event_id, created_at
),
gains AS (
    SELECT a.notification_id AS id, sum(a.n)::int AS n, max(a.latest) AS latest,
           array_agg(a.actor_id ORDER BY a.latest DESC, a.last_event DESC) AS actors
    FROM (SELECT notification_id, actor_id, count(*) AS n, max(created_at) AS latest,
                 max(event_id) AS last_event
          FROM inserted
          WHERE notification_id = ANY($13::bigint[])
          GROUP BY notification_id, actor_id) AS a
    GROUP BY a.notification_id
),
grown AS (
    UPDATE notifications.groups g SET
        count = g.count + gains.n,
        actor_id = gains.actors[1],
        actor_ids = (gains.actors || ARRAY(
            SELECT x.a FROM unnest(g.actor_ids) WITH ORDINALITY AS x(a, i)
            WHERE x.a <> ALL(gains.actors) ORDER BY x.i))[1:3],
        updated_at = greatest(g.updated_at, gains.latest),
        read_at = NULL,
        sort_key = greatest(g.sort_key, agora.next_id(gains.latest))
    FROM gains
    WHERE g.id = gains.id
    RETURNING g.id, g.kind, gains.n
)
SELECT id, kind, count AS gained FROM created
UNION ALL
SELECT id, kind, n AS gained FROM grown
"""
# A deleted comment takes its sources away (with the replies deleted along with it: every
# source of the post's groups whose comment is gone). Answers the groups to recount.
REMOVE_COMMENT_SOURCES = """
DELETE FROM notifications.sources s
USING notifications.groups g
WHERE g.post_id = ANY($1::bigint[]) AND s.notification_id = g.id AND s.comment_id IS NOT NULL
  AND (s.comment_id = ANY($2::bigint[])
       OR NOT EXISTS (SELECT 1 FROM content.comments c WHERE c.id = s.comment_id))
RETURNING s.notification_id
"""
# A block takes away what either of the two caused the other.
REMOVE_PAIR_SOURCES = """
DELETE FROM notifications.sources s
USING notifications.groups g
WHERE g.user_id IN ($1::bigint, $2::bigint) AND s.notification_id = g.id
  AND s.actor_id = CASE WHEN g.user_id = $1::bigint THEN $2::bigint ELSE $1::bigint END
RETURNING s.notification_id
"""
# Groups that lost sources: recounted from what is left (count, the 3 latest actors, the latest
# activity), or deleted when nothing is. Read state and place in the list stay.
RECOUNT = """
WITH agg AS (
    SELECT g.id,
           (SELECT count(*) FROM notifications.sources s WHERE s.notification_id = g.id) AS n,
           ARRAY(SELECT s.actor_id FROM notifications.sources s WHERE s.notification_id = g.id
                 GROUP BY s.actor_id ORDER BY max(s.created_at) DESC, s.actor_id DESC
                 LIMIT 3) AS actors,
           (SELECT max(s.created_at) FROM notifications.sources s
            WHERE s.notification_id = g.id) AS latest
    FROM notifications.groups g WHERE g.id = ANY($1::bigint[])
),
gone AS (
    DELETE FROM notifications.groups g USING agg WHERE g.id = agg.id AND agg.n = 0
    RETURNING g.id
),
kept AS (
    UPDATE notifications.groups g
    SET count = agg.n, actor_ids = agg.actors, actor_id = agg.actors[1], updated_at = agg.latest
    FROM agg WHERE g.id = agg.id AND agg.n > 0
    RETURNING g.id
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM kept) AS kept
"""
DELETE_FOR_POSTS = "DELETE FROM notifications.groups WHERE post_id = ANY($1::bigint[])"
_GROUP_COLUMNS = """
g.id, g.user_id, g.kind, g.base_key, g.subject_type, g.subject_id, g.post_id, g.count,
g.created_at, g.updated_at, g.read_at, g.sort_key
"""
# For pushes: each group with the actors its recipient may see (one may have been blocked since
# they acted).
GROUPS_BY_IDS = f"""
SELECT {_GROUP_COLUMNS},
       ARRAY(SELECT x.a FROM unnest(g.actor_ids) WITH ORDINALITY AS x(a, i)
             WHERE NOT {users_hidden("g.user_id", "x.a")} ORDER BY x.i) AS actor_ids
FROM notifications.groups g WHERE g.id = ANY($1::bigint[])
"""
USERS = f"SELECT {PUBLIC_USER_COLUMNS} FROM accounts.users u WHERE u.id = ANY($1::bigint[])"

# -- the read side ----------------------------------------------------------------------------

# What the viewer ($1) may still see: the post it is about (the visibility rule: a post made
# private, or whose author blocked the viewer, hides it), the comment it is about, the
# conversation they are still a member of. Actors hidden from the viewer (blocked either way,
# suspended) are left out; a notification with none left is hidden.
_SHOWN = f"""
    (g.post_id IS NULL OR EXISTS (
        SELECT 1 FROM content.posts p
        WHERE p.id = g.post_id AND {post_visible("$1::bigint", "p")}))
    AND (g.subject_type <> 'comment'
         OR EXISTS (SELECT 1 FROM content.comments c WHERE c.id = g.subject_id))
    AND (g.subject_type <> 'conversation'
         OR EXISTS (SELECT 1 FROM chat.members m
                    WHERE m.conversation_id = g.subject_id AND m.user_id = $1::bigint))
"""
_SHOWN_ACTORS = f"""
ARRAY(SELECT x.a FROM unnest(g.actor_ids) WITH ORDINALITY AS x(a, i)
      WHERE NOT {users_hidden("$1::bigint", "x.a")} ORDER BY x.i)
"""


def _list(unread_only: bool) -> str:
    return f"""
SELECT {_GROUP_COLUMNS}, v.actors AS actor_ids
FROM notifications.groups g
CROSS JOIN LATERAL (SELECT {_SHOWN_ACTORS} AS actors) AS v
WHERE g.user_id = $1::bigint AND g.sort_key < $2::bigint
  {"AND g.read_at IS NULL" if unread_only else ""}
  AND cardinality(v.actors) > 0
  AND {_SHOWN}
ORDER BY g.sort_key DESC
LIMIT $3
"""


LIST = _list(unread_only=False)
LIST_UNREAD = _list(unread_only=True)
UNREAD_COUNT = f"""
SELECT count(*) FROM notifications.groups g
WHERE g.user_id = $1::bigint AND g.read_at IS NULL
  AND EXISTS (SELECT 1 FROM unnest(g.actor_ids) AS x(a)
              WHERE NOT {users_hidden("$1::bigint", "x.a")})
  AND {_SHOWN}
"""
MARK_READ = """
UPDATE notifications.groups SET read_at = now()
WHERE id = ANY($2::bigint[]) AND user_id = $1 AND read_at IS NULL
"""
MARK_ALL_READ = """
UPDATE notifications.groups SET read_at = now() WHERE user_id = $1 AND read_at IS NULL
"""
SETTINGS = "SELECT kind, enabled, only_friends FROM notifications.settings WHERE user_id = $1"
# A partial change ($3/$4 null: keep what is there, or the default), answering every row the
# user has afterwards.
UPDATE_SETTINGS = """
WITH up AS (
    INSERT INTO notifications.settings (user_id, kind, enabled, only_friends)
    SELECT $1, i.kind, coalesce(i.enabled, s.enabled, true),
           coalesce(i.only_friends, s.only_friends, false)
    FROM unnest($2::text[], $3::boolean[], $4::boolean[]) AS i(kind, enabled, only_friends)
    LEFT JOIN notifications.settings s ON s.user_id = $1 AND s.kind = i.kind
    ON CONFLICT (user_id, kind)
    DO UPDATE SET enabled = EXCLUDED.enabled, only_friends = EXCLUDED.only_friends
    RETURNING kind, enabled, only_friends
)
SELECT kind, enabled, only_friends FROM up
UNION ALL
SELECT kind, enabled, only_friends FROM notifications.settings
WHERE user_id = $1 AND kind <> ALL($2::text[])
"""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A notification one event may cause, before the admission filter."""

    recipient: int
    actor: int
    kind: str
    base_key: str
    subject_type: str
    subject_id: int
    post_id: int | None
    mode: str  # 'window' (open for WINDOW_SECONDS from its first), 'unread', 'single'
    source_key: int
    comment_id: int | None
    event_id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class OpenGroup:
    """The latest group of a (recipient, base key)."""

    id: int
    created_at: datetime
    read: bool


@dataclass(frozen=True, slots=True)
class NewGroup:
    user_id: int
    kind: str
    base_key: str
    subject_type: str
    subject_id: int
    post_id: int | None
    actor_ids: list[int]  # most recent first, at most 3
    count: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewSource:
    group: int  # an existing group's id, or -k: the k-th new group of the same write
    source_key: int
    event_id: int
    actor_id: int
    comment_id: int | None
    at: datetime


@dataclass(frozen=True, slots=True)
class GroupRow:
    id: int
    user_id: int
    kind: str
    base_key: str
    subject_type: str
    subject_id: int
    post_id: int | None
    actor_ids: list[int]  # most recent first (on reads: those the viewer may see)
    count: int
    created_at: datetime
    updated_at: datetime
    read_at: datetime | None
    sort_key: int

    @classmethod
    def of(cls, row: Record) -> GroupRow:
        return cls(
            row["id"],
            row["user_id"],
            row["kind"],
            row["base_key"],
            row["subject_type"],
            row["subject_id"],
            row["post_id"],
            list(row["actor_ids"]),
            row["count"],
            row["created_at"],
            row["updated_at"],
            row["read_at"],
            row["sort_key"],
        )


@dataclass(frozen=True, slots=True)
class Setting:
    kind: str
    enabled: bool
    only_friends: bool


class NotificationStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- consumer side (inside the runner's transaction) -------------------------------------

    async def users_by_name(self, tx: Tx, names: Iterable[str]) -> dict[str, int]:
        rows = await tx.fetch("notifications_users_by_name", USERS_BY_NAME, list(names))
        return {r["name"]: r["id"] for r in rows}

    async def members(self, tx: Tx, conversation_ids: Iterable[int]) -> dict[int, list[int]]:
        rows = await tx.fetch(
            "notifications_conversation_members", CONVERSATION_MEMBERS, list(conversation_ids)
        )
        out: dict[int, list[int]] = {}
        for r in rows:
            out.setdefault(r["conversation_id"], []).append(r["user_id"])
        return out

    async def admissible(self, tx: Tx, candidates: Sequence[Candidate]) -> set[int]:
        """The indexes of the candidates that pass the admission filter."""
        if not candidates:
            return set()
        rows = await tx.fetch(
            "notifications_admissible",
            ADMISSIBLE,
            list(range(len(candidates))),
            [c.recipient for c in candidates],
            [c.actor for c in candidates],
            [c.kind for c in candidates],
            [c.post_id for c in candidates],
            [c.comment_id for c in candidates],
        )
        return {r["i"] for r in rows}

    async def lock_groups(self, tx: Tx, keys: Iterable[tuple[int, str]]) -> None:
        pairs = sorted(set(keys))
        if pairs:
            await tx.fetchval(
                "notifications_lock_groups",
                LOCK_GROUPS,
                [p[0] for p in pairs],
                [p[1] for p in pairs],
            )

    async def latest_groups(
        self, tx: Tx, keys: Iterable[tuple[int, str]]
    ) -> dict[tuple[int, str], OpenGroup]:
        pairs = sorted(set(keys))
        if not pairs:
            return {}
        rows = await tx.fetch(
            "notifications_latest_groups",
            LATEST_GROUPS,
            [p[0] for p in pairs],
            [p[1] for p in pairs],
        )
        return {
            (r["user_id"], r["base_key"]): OpenGroup(r["id"], r["created_at"], r["read"])
            for r in rows
        }

    async def write(
        self, tx: Tx, new: Sequence[NewGroup], sources: Sequence[NewSource]
    ) -> list[tuple[int, str, int]]:
        """Create ``new`` groups and add ``sources``: (group id, kind, sources it gained) for
        every new or grown group. A source's ``group`` is an existing group's id, or ``-k`` for the
        k-th (1-based) of ``new``."""
        if not sources:
            return []

        def actor(g: NewGroup, i: int) -> int | None:
            return g.actor_ids[i] if len(g.actor_ids) > i else None

        rows = await tx.fetch(
            "notifications_write",
            WRITE,
            [g.user_id for g in new],
            [g.kind for g in new],
            [g.base_key for g in new],
            [g.subject_type for g in new],
            [g.subject_id for g in new],
            [g.post_id for g in new],
            [actor(g, 0) for g in new],
            [actor(g, 1) for g in new],
            [actor(g, 2) for g in new],
            [g.count for g in new],
            [g.created_at for g in new],
            [g.updated_at for g in new],
            [s.group if s.group > 0 else None for s in sources],
            [-s.group if s.group < 0 else None for s in sources],
            [s.source_key for s in sources],
            [s.event_id for s in sources],
            [s.actor_id for s in sources],
            [s.comment_id for s in sources],
            [s.at for s in sources],
        )
        return [(r["id"], r["kind"], r["gained"]) for r in rows]

    async def remove_comments(
        self, tx: Tx, post_ids: Iterable[int], comment_ids: Iterable[int]
    ) -> None:
        rows = await tx.fetch(
            "notifications_remove_comment_sources",
            REMOVE_COMMENT_SOURCES,
            sorted(set(post_ids)),
            sorted(set(comment_ids)),
        )
        await self._recount(tx, {r["notification_id"] for r in rows})

    async def remove_between(self, tx: Tx, a: int, b: int) -> None:
        rows = await tx.fetch("notifications_remove_pair_sources", REMOVE_PAIR_SOURCES, a, b)
        await self._recount(tx, {r["notification_id"] for r in rows})

    async def _recount(self, tx: Tx, group_ids: set[int]) -> None:
        if group_ids:
            await tx.fetchrow("notifications_recount", RECOUNT, sorted(group_ids))

    async def delete_for_posts(self, tx: Tx, post_ids: Iterable[int]) -> None:
        await tx.execute("notifications_delete_for_posts", DELETE_FOR_POSTS, sorted(set(post_ids)))

    async def groups(self, tx: Tx, ids: Iterable[int]) -> list[GroupRow]:
        rows = await tx.fetch("notifications_groups_by_ids", GROUPS_BY_IDS, sorted(set(ids)))
        return [GroupRow.of(r) for r in rows]

    async def users(self, runner: Tx | Database, ids: Iterable[int]) -> dict[int, PublicUser]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        rows = await runner.fetch("notifications_users", USERS, wanted)
        return {r["u_id"]: PublicUser.of(r) for r in rows}

    # -- read side ------------------------------------------------------------------------------

    async def page(self, viewer: int, unread_only: bool, before: int, limit: int) -> list[GroupRow]:
        if unread_only:
            rows = await self.db.fetch(
                "notifications_list_unread", LIST_UNREAD, viewer, before, limit
            )
        else:
            rows = await self.db.fetch("notifications_list", LIST, viewer, before, limit)
        return [GroupRow.of(r) for r in rows]

    async def unread_count(self, viewer: int) -> int:
        return int(await self.db.fetchval("notifications_unread_count", UNREAD_COUNT, viewer))

    async def mark_read(self, viewer: int, ids: list[int]) -> None:
        await self.db.execute("notifications_mark_read", MARK_READ, viewer, ids)

    async def mark_all_read(self, viewer: int) -> None:
        await self.db.execute("notifications_mark_all_read", MARK_ALL_READ, viewer)

    async def settings(self, viewer: int) -> list[Setting]:
        rows = await self.db.fetch("notifications_settings", SETTINGS, viewer)
        return [Setting(r["kind"], r["enabled"], r["only_friends"]) for r in rows]

    async def update_settings(
        self, viewer: int, changes: Sequence[tuple[str, bool | None, bool | None]]
    ) -> list[Setting]:
        rows = await self.db.fetch(
            "notifications_update_settings",
            UPDATE_SETTINGS,
            viewer,
            [c[0] for c in changes],
            [c[1] for c in changes],
            [c[2] for c in changes],
        )
        return [Setting(r["kind"], r["enabled"], r["only_friends"]) for r in rows]
