"""Notifications: groups (a single notification is a group of one), their sources, preferences.

The consumer side (:class:`agora.services.notifications.NotificationConsumer`) works on a batch
of events inside the runner's transaction: a few set-based statements for the whole batch
(lookups, the one admission filter, the grouping locks, the rendering of what changed) and one
statement per notification it adds (:data:`APPLY`). The read side lists, counts and marks read;
both re-check, on every read, that the caller may still see the subject (the one visibility
rule, :mod:`agora.storage.visibility`) and its actors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from agora.storage.accounts import PUBLIC_USER_COLUMNS, PublicUser
from agora.storage.db import Database, Record, Tx
from agora.storage.visibility import can_see, users_hidden

WINDOW_SECONDS = 12 * 3600.0  # reactions and comments on one post group within this window

# -- the consumer's statements ----------------------------------------------------------------

# Active users by lower-cased username (the mentions of a batch, in one statement).
USERS_BY_NAME = """
SELECT id, lower(username) AS name FROM accounts.users
WHERE lower(username) = ANY($1::text[]) AND status = 'active'
"""
CONVERSATION_MEMBERS = """
SELECT conversation_id, user_id FROM chat.members WHERE conversation_id = ANY($1::bigint[])
"""
# Of the candidate notifications ($1 their indexes), the ones that may be created: the kind is
# enabled for the recipient (and, with only_friends, the actor is a friend), the recipient is an
# active user, neither has blocked the other (nor is suspended), the recipient may see the post
# it is about (which still exists), and the comment it is about still exists.
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
  AND EXISTS (SELECT 1 FROM accounts.users u WHERE u.id = c.recipient AND u.status = 'active')
  AND NOT {users_hidden("c.recipient", "c.actor")}
  AND (c.post_id IS NULL
       OR (p.id IS NOT NULL AND {can_see("c.recipient", "p.author_id", "p.visibility")}))
  AND (c.comment_id IS NULL
       OR EXISTS (SELECT 1 FROM content.comments cm WHERE cm.id = c.comment_id))
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
# One notification: join the open group of (recipient, base key) or open one, and record the
# source; a source already there (the same user reacting again) changes nothing. A group that
# grows becomes unread and moves to the top. Mode $9: 'window' (the group is open for $13
# seconds from its first notification), 'unread' (open until read), 'single' (never grouped).
# Answers the group's id and whether it is new; no row when nothing changed.
APPLY = """
WITH cur AS (
    SELECT id FROM notifications.groups
    WHERE $9::text <> 'single' AND user_id = $1::bigint AND base_key = $3::text
      AND CASE WHEN $9::text = 'window'
               THEN created_at > $8::timestamptz - make_interval(secs => $13::float8)
               ELSE read_at IS NULL END
    ORDER BY created_at DESC
    LIMIT 1
),
created AS (
    INSERT INTO notifications.groups (user_id, kind, base_key, subject_type, subject_id, post_id,
                                      actor_id, actor_ids, count, created_at, updated_at, sort_key)
    SELECT $1, $2, $3, $4, $5, $6, $7, ARRAY[$7::bigint], 1, $8, $8, agora.next_id($8)
    WHERE NOT EXISTS (SELECT 1 FROM cur)
    RETURNING id
),
source AS (
    INSERT INTO notifications.sources
        (notification_id, source_key, event_id, actor_id, comment_id, created_at)
    SELECT t.id, $10, $11, $7, $12, $8 FROM (SELECT id FROM cur UNION ALL SELECT id FROM created) t
    ON CONFLICT DO NOTHING
    RETURNING notification_id
),
grown AS (
    UPDATE notifications.groups g SET
        count = g.count + 1,
        actor_id = $7,
        actor_ids = (ARRAY[$7::bigint] || array_remove(g.actor_ids, $7::bigint))[1:3],
        updated_at = greatest(g.updated_at, $8),
        read_at = NULL,
        sort_key = greatest(g.sort_key, agora.next_id($8))
    FROM cur
    WHERE g.id = cur.id AND EXISTS (SELECT 1 FROM source)
    RETURNING g.id
)
SELECT id, true AS created FROM created
UNION ALL
SELECT id, false AS created FROM grown
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
        WHERE p.id = g.post_id AND {can_see("$1::bigint", "p.author_id", "p.visibility")}))
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
    mode: str  # 'window' | 'unread' | 'single' (see APPLY)
    source_key: int
    comment_id: int | None
    event_id: int
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

    async def apply(self, tx: Tx, c: Candidate) -> tuple[int, bool] | None:
        """Add one notification: (group id, whether the group is new), or None when it changed
        nothing (its source was already there)."""
        row = await tx.fetchrow(
            "notifications_apply",
            APPLY,
            c.recipient,
            c.kind,
            c.base_key,
            c.subject_type,
            c.subject_id,
            c.post_id,
            c.actor,
            c.at,
            c.mode,
            c.source_key,
            c.event_id,
            c.comment_id,
            WINDOW_SECONDS,
        )
        return None if row is None else (row["id"], row["created"])

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
