"""Posts (with their counters and reactions), comments, and the feed's PostgreSQL queries.

Every read path filters with :func:`agora.storage.visibility.can_see`: the one visibility rule,
spliced into the SQL so that no query can forget a part of it.

A post's counters are its ``content.post_stats`` row plus its pending rows of
``content.post_stat_deltas`` (one per comment or reaction change, written by triggers: no
writer waits for another's commit), read together through the view ``content.post_counts``;
:meth:`PostStore.fold_counters` moves the deltas into ``post_stats`` (migration 0015).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import msgspec

from agora.events.types import (
    CommentCreated,
    CommentDeleted,
    PostCreated,
    PostDeleted,
    PostUpdated,
    PostVisibilityChanged,
    ReactionRemoved,
    ReactionSet,
)
from agora.protocol.content import ReactionType, Visibility
from agora.storage.accounts import PUBLIC_USER_COLUMNS, PublicUser
from agora.storage.db import Database, Record, Tx, id_floor
from agora.storage.events import append, events_from
from agora.storage.media import attach, delete_for_post
from agora.storage.moderation import hold
from agora.storage.social import FRIEND_IDS
from agora.storage.visibility import comment_visible, post_visible, users_hidden

REACTION_TYPES = ("like", "love", "haha", "wow", "sad", "angry")
_UPSERT_ATTEMPTS = 5  # see REACT
_COUNT_COLUMNS = tuple((t, f"{t}_count") for t in REACTION_TYPES)


# A post's media, in the order the author gave them (nothing read for a post without any).
_MEDIA = """CASE WHEN cardinality(p.media_ids) = 0 THEN NULL ELSE (
    SELECT json_agg(json_build_object(
        'id', m.id, 'content_type', m.content_type, 'size', m.size, 'width', m.width,
        'height', m.height, 'small_width', m.small_width, 'small_height', m.small_height,
        'blurhash', m.blurhash, 'description', m.description, 'focus_x', m.focus_x,
        'focus_y', m.focus_y) ORDER BY array_position(p.media_ids, m.id))
    FROM media.uploads m WHERE m.post_id = p.id) END AS media"""


# One page of posts is one statement: the posts, their author, counters, the viewer's reaction
# and the media. $1 is always the viewer (NULL when anonymous). Counters come from the view
# content.post_counts (migration 0015): the post's post_stats row plus its pending deltas, one
# index lookup of each per post, in the statement's one snapshot.
def post_select(extra_columns: str = "") -> str:
    return f"""
SELECT p.id, p.author_id, p.text, p.visibility, p.media_ids, p.created_at, p.updated_at, p.held,
       s.comment_count, s.like_count, s.love_count, s.haha_count, s.wow_count, s.sad_count,
       s.angry_count, r.type AS my_reaction, {PUBLIC_USER_COLUMNS}, {_MEDIA}{extra_columns}
FROM content.posts p
JOIN content.post_counts s ON s.post_id = p.id
JOIN accounts.users u ON u.id = p.author_id
LEFT JOIN content.reactions r ON r.post_id = p.id AND r.user_id = $1
"""


_POST_SELECT = post_select()
VISIBLE = post_visible("$1::bigint", "p")
GET_POST = _POST_SELECT + f"WHERE p.id = $2 AND {VISIBLE}"
POSTS_BY_IDS = (
    _POST_SELECT
    + f"""
WHERE p.id = ANY($2::bigint[]) AND {VISIBLE}
ORDER BY p.id DESC
"""
)
USER_POSTS = (
    _POST_SELECT
    + f"""
WHERE p.author_id = $2 AND p.id < $3 AND {VISIBLE}
ORDER BY p.id DESC LIMIT $4
"""
)
POST_ACCESS = f"""
SELECT p.author_id, p.visibility, {VISIBLE} AS visible
FROM content.posts p WHERE p.id = $2
"""
INSERT_POST = """
INSERT INTO content.posts (author_id, text, visibility, media_ids, held)
VALUES ($1, $2, $3, $4, $5)
RETURNING id
"""
# A post without media that the word filter let through, in one statement with its post.created.
_POST_CREATED = events_from(
    PostCreated,
    {
        "post_id": "i.id",
        "author_id": "i.author_id",
        "text": "i.text",
        "visibility": "i.visibility",
        "media_ids": "'[]'::jsonb",
    },
    aggregate_id="i.id",
    actor_id="i.author_id",
    source="ins i",
)
# Answers the new post as `post_select` would (nothing counted yet, no reaction, no media), and
# the author's friends (its audience, for the feed fan-out), so no read follows.
CREATE_POST = f"""
WITH ins AS (
    INSERT INTO content.posts (author_id, text, visibility, media_ids, held)
    VALUES ($1, $2, $3, '{{}}', false)
    RETURNING id, author_id, text, visibility, media_ids, created_at, updated_at, held
), event AS ({_POST_CREATED})
SELECT p.id, p.author_id, p.text, p.visibility, p.media_ids, p.created_at, p.updated_at, p.held,
       0 AS comment_count, 0 AS like_count, 0 AS love_count, 0 AS haha_count, 0 AS wow_count,
       0 AS sad_count, 0 AS angry_count, NULL::text AS my_reaction, {PUBLIC_USER_COLUMNS},
       NULL::json AS media, ARRAY({FRIEND_IDS}) AS friend_ids
FROM ins p JOIN accounts.users u ON u.id = p.author_id
"""
HOLD_POST = "UPDATE content.posts SET held = true WHERE id = $1 AND NOT held RETURNING author_id"
# A held post published by a moderator: its post.created is written then (not while held).
PUBLISH_POST = """
UPDATE content.posts SET held = false WHERE id = $1 AND held
RETURNING author_id, text, visibility, media_ids
"""
# The post after the edit and (from the locked row it replaced) before it, for its events.
UPDATE_POST = """
UPDATE content.posts p SET
    text = CASE WHEN $2 THEN $3 ELSE p.text END,
    visibility = CASE WHEN $4 THEN $5 ELSE p.visibility END,
    updated_at = clock_timestamp()
FROM (SELECT id, text, visibility FROM content.posts WHERE id = $1 FOR UPDATE) old
WHERE p.id = old.id
RETURNING p.author_id, p.text, p.visibility, old.text AS old_text,
          old.visibility AS old_visibility
"""
DELETE_POST = "DELETE FROM content.posts WHERE id = $1 RETURNING author_id"

# The feed: the viewer's and their friends' posts, newest first, before an id. Per author only
# the newest `limit` rows are read (index posts_author), so the cost is bounded by the number of
# friends, not by how much they ever posted. Friends are never blocked (a block ends the
# friendship); users_hidden still drops suspended ones.
_FEED_AUTHORS = f"""
SELECT $1::bigint AS author
UNION ALL
SELECT f.friend_id FROM social.friendships f
WHERE f.user_id = $1 AND NOT {users_hidden("$1::bigint", "f.friend_id")}
"""
FEED_IDS = f"""
SELECT fp.id
FROM ({_FEED_AUTHORS}) a
CROSS JOIN LATERAL (
    SELECT q.id FROM content.posts q
    WHERE q.author_id = a.author AND q.id < $2 AND (a.author = $1 OR q.visibility <> 'private')
    ORDER BY q.id DESC LIMIT $3
) fp
ORDER BY fp.id DESC LIMIT $3
"""
FEED_PAGE = (
    _POST_SELECT
    + f"""
WHERE p.id IN ({FEED_IDS}) AND {VISIBLE}
ORDER BY p.id DESC
"""
)
# rank=top: a window of recent posts scored by engagement with time decay (formula in the
# README). Scores are computed "as of" a fixed moment ($2) carried in the cursor, so pages agree;
# $3/$4 bound the window by id (index) and $9 by creation time. Ranking reads only posts and
# their counters; the page alone is then hydrated and re-checked with the visibility rule.
TOP_FEED = (
    post_select(", ranked.score")
    + f"""
JOIN (
    SELECT c.id, sc.score
    FROM (
        SELECT q.id, q.created_at FROM ({_FEED_AUTHORS}) a
        CROSS JOIN LATERAL (
            SELECT q.id, q.created_at FROM content.posts q
            WHERE q.author_id = a.author AND q.id <= $3 AND q.id >= $4 AND q.created_at >= $9
              AND (a.author = $1 OR q.visibility <> 'private')
            ORDER BY q.id DESC LIMIT $7
        ) q
    ) c
    JOIN content.post_counts st ON st.post_id = c.id
    CROSS JOIN LATERAL (
        SELECT (1 + st.like_count + st.love_count + st.haha_count + st.wow_count + st.sad_count
                + st.angry_count + 2 * st.comment_count)::float8
               / power(greatest(extract(epoch FROM ($2::timestamptz - c.created_at))::float8
                                / 3600.0::float8, 0::float8) + 2.0::float8, 1.5::float8) AS score
    ) sc
    WHERE (sc.score, c.id) < ($5::float8, $6::bigint)
    ORDER BY sc.score DESC, c.id DESC
    LIMIT $8
) ranked ON ranked.id = p.id
WHERE {VISIBLE}
ORDER BY ranked.score DESC, p.id DESC
"""
)

# The counter fold (migration 0015): the comment and reaction triggers insert delta rows, and
# this statement moves up to $1 of them into post_stats, all in one transaction: a fold lost in
# a crash is lost whole (deltas and sums together), so the counts stay exact. Only one fold runs
# at a time in the cluster (the advisory lock; `held` false: another one has it, nothing done).
# The fold never waits for a lock: delta rows and post_stats rows held by another transaction
# (a post being deleted) are skipped, and their deltas wait for the next fold, so it cannot
# deadlock with a delete taking several posts' rows in another order. The deltas of a post whose
# post_stats row is gone (the post was deleted) are deleted and counted nowhere. The snapshot is
# taken before the lock: a delta the previous fold deleted after it is skipped by FOR UPDATE, and
# the UPDATE adds to the newest post_stats row (READ COMMITTED re-reads it).
FOLD_LOCK = "hashtextextended('agora.fold_counters', 0)"
_SUMS = ", ".join(f"sum({c}) AS {c}" for c in ("comment_count", *dict(_COUNT_COLUMNS).values()))
_ADD = ", ".join(f"{c} = s.{c} + m.{c}" for c in ("comment_count", *dict(_COUNT_COLUMNS).values()))
FOLD_COUNTERS = f"""
WITH lock AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock({FOLD_LOCK}) AS held
), batch AS MATERIALIZED (
    SELECT d.id, d.post_id FROM content.post_stat_deltas d
    WHERE (SELECT held FROM lock)
    ORDER BY d.id LIMIT $1
    FOR UPDATE SKIP LOCKED
), posts AS MATERIALIZED (
    SELECT array_agg(DISTINCT post_id) AS ids FROM batch
), target AS MATERIALIZED (
    SELECT s.post_id FROM content.post_stats s
    WHERE s.post_id = ANY ((SELECT ids FROM posts)::bigint[])
    FOR UPDATE SKIP LOCKED
), gone AS MATERIALIZED (
    SELECT unnest(ids) AS post_id FROM posts
    EXCEPT
    SELECT s.post_id FROM content.post_stats s
    WHERE s.post_id = ANY ((SELECT ids FROM posts)::bigint[])
), moved AS (
    DELETE FROM content.post_stat_deltas d
    WHERE d.id = ANY (ARRAY(
        SELECT b.id FROM batch b
        WHERE b.post_id IN (SELECT post_id FROM target UNION ALL SELECT post_id FROM gone)))
    RETURNING d.*
), sums AS (
    SELECT post_id, {_SUMS} FROM moved GROUP BY post_id
), added AS (
    UPDATE content.post_stats s SET {_ADD}
    FROM sums m WHERE s.post_id = m.post_id
    RETURNING s.post_id
)
SELECT (SELECT held FROM lock) AS held, (SELECT count(*) FROM moved) AS moved,
       (SELECT count(*) FROM added) AS posts
"""
FOLD_BATCH = 5000  # delta rows per fold statement

CHECK_VISIBLE = f"SELECT p.author_id, {VISIBLE} AS visible FROM content.posts p WHERE p.id = $2"
DELETE_REACTION = """
DELETE FROM content.reactions WHERE post_id = $1 AND user_id = $2 RETURNING type
"""
# Reacting in one statement, its event included ($1 the viewer, $2 the post, $3 the type).
# `author_id` is NULL when the viewer may not see the post (nothing written). Otherwise
# `reaction` is the type set (NULL when it already was that type) and `previous` the type it
# replaced. The user's row is locked before the upsert (prev is read first: the insert's
# condition needs it), so `previous` is what the update replaced even when another of the
# user's reactions committed meanwhile. Both NULL: the user's first reaction was inserted by
# another transaction after prev looked; the update is then skipped and the caller runs the
# statement again (it then finds and locks that row). reaction.set is written when something
# changed.
_REACTION_SET = events_from(
    ReactionSet,
    {
        "post_id": "$2::bigint",
        "post_author_id": "t.author_id",
        "user_id": "$1::bigint",
        "reaction": "u.type",
        "previous": "(SELECT type FROM prev)",
    },
    aggregate_id="$2::bigint",
    actor_id="$1::bigint",
    source="upsert u, target t",
)
REACT = f"""
WITH target AS MATERIALIZED (
    SELECT p.author_id FROM content.posts p WHERE p.id = $2 AND {VISIBLE}
), prev AS MATERIALIZED (
    SELECT type FROM content.reactions WHERE post_id = $2 AND user_id = $1 FOR UPDATE
), upsert AS (
    INSERT INTO content.reactions AS r (post_id, user_id, type)
    SELECT $2, $1, $3 FROM target WHERE NOT EXISTS (SELECT FROM prev WHERE prev.type = $3)
    ON CONFLICT (post_id, user_id) DO UPDATE SET type = EXCLUDED.type, created_at = now()
    WHERE r.type <> EXCLUDED.type AND EXISTS (SELECT FROM prev)
    RETURNING r.type
), event AS ({_REACTION_SET})
SELECT (SELECT author_id FROM target) AS author_id, (SELECT type FROM upsert) AS reaction,
       (SELECT type FROM prev) AS previous
"""

_COMMENT_SELECT = f"""
SELECT c.id, c.post_id, c.parent_id, c.text, c.created_at, {PUBLIC_USER_COLUMNS}
FROM content.comments c JOIN accounts.users u ON u.id = c.author_id
"""
INSERT_COMMENT = """
INSERT INTO content.comments (post_id, author_id, parent_id, text, held)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, (SELECT author_id FROM content.posts WHERE id = $1) AS post_author_id,
          (SELECT author_id FROM content.comments WHERE id = $3) AS parent_author_id
"""
GET_COMMENT = _COMMENT_SELECT + "WHERE c.id = $1"
PUBLISH_COMMENT = """
UPDATE content.comments c SET held = false WHERE c.id = $1 AND c.held
RETURNING c.post_id, c.author_id, c.parent_id, c.text,
          (SELECT author_id FROM content.posts WHERE id = c.post_id) AS post_author_id,
          (SELECT author_id FROM content.comments WHERE id = c.parent_id) AS parent_author_id
"""
COMMENT_POST = "SELECT post_id FROM content.comments WHERE id = $1"
# Oldest first; comments by users hidden from the viewer are left out.
LIST_COMMENTS = (
    _COMMENT_SELECT
    + f"""
WHERE c.post_id = $2 AND c.id > $3 AND u.status = 'active'
  AND {comment_visible("$1::bigint", "c")}
ORDER BY c.id LIMIT $4
"""
)
COMMENT_ACCESS = f"""
SELECT c.author_id, p.author_id AS post_author_id,
       {VISIBLE} AS post_visible,
       {comment_visible("$1::bigint", "c")} AS comment_visible
FROM content.comments c JOIN content.posts p ON p.id = c.post_id
WHERE c.id = $2
"""
DELETE_COMMENT = "DELETE FROM content.comments WHERE id = $1 RETURNING post_id, author_id"
# A comment (not held) in one statement, its event included ($1 the author, $2 the post, $3 the
# parent or NULL, $4 the text): written only when the author may see the post and the parent
# is a comment of that post; answers the comment with its author, or a row telling which check
# failed (`post_author_id` NULL: no such post for this viewer; `parent_ok` false).
_COMMENT_CREATED = events_from(
    CommentCreated,
    {
        "comment_id": "i.id",
        "post_id": "i.post_id",
        "post_author_id": "t.author_id",
        "author_id": "$1::bigint",
        "parent_id": "i.parent_id",
        "parent_author_id": "(SELECT author_id FROM parent)",
        "text": "i.text",
    },
    aggregate_id="i.id",
    actor_id="$1::bigint",
    source="ins i, target t",
)
CREATE_COMMENT = f"""
WITH target AS MATERIALIZED (
    SELECT p.author_id FROM content.posts p WHERE p.id = $2 AND {VISIBLE}
), parent AS MATERIALIZED (
    SELECT c.author_id FROM content.comments c WHERE c.id = $3 AND c.post_id = $2
), ins AS (
    INSERT INTO content.comments (post_id, author_id, parent_id, text, held)
    SELECT $2, $1, $3, $4, false FROM target
    WHERE $3::bigint IS NULL OR EXISTS (SELECT FROM parent)
    RETURNING id, post_id, parent_id, text, created_at
), event AS ({_COMMENT_CREATED})
SELECT (SELECT author_id FROM target) AS post_author_id,
       ($3::bigint IS NULL OR EXISTS (SELECT FROM parent)) AS parent_ok,
       i.id, i.post_id, i.parent_id, i.text, i.created_at, {PUBLIC_USER_COLUMNS}
FROM (SELECT 1) one
LEFT JOIN ins i ON true
LEFT JOIN accounts.users u ON u.id = $1 AND i.id IS NOT NULL
"""


class PostMedia(msgspec.Struct, frozen=True, gc=False):
    """What a post shows of one of its images (agora.services.media makes its URLs)."""

    id: int
    content_type: str
    size: int
    width: int
    height: int
    small_width: int
    small_height: int
    blurhash: str
    description: str
    focus_x: float
    focus_y: float


class PostRow(msgspec.Struct, frozen=True, gc=False):
    id: int
    author: PublicUser
    text: str
    visibility: Visibility
    media: list[PostMedia]
    created_at: datetime
    updated_at: datetime
    comment_count: int
    reaction_counts: dict[str, int]
    my_reaction: ReactionType | None
    held: bool = False  # by the word filter: only its author gets to see it

    @classmethod
    def of(cls, row: Record) -> PostRow:
        counts = {t: n for t, column in _COUNT_COLUMNS if (n := row[column])}
        media = row["media"]
        return cls(
            row["id"],
            PublicUser.of(row),
            row["text"],
            row["visibility"],
            msgspec.convert(media, list[PostMedia]) if media else [],
            row["created_at"],
            row["updated_at"],
            row["comment_count"],
            counts,
            row["my_reaction"],
            row["held"],
        )


class MediaNotAttachable(Exception):
    """A media id of a new post is not the author's, unattached upload."""


@dataclass(frozen=True, slots=True)
class PostAccess:
    author_id: int
    visibility: str
    visible: bool


@dataclass(frozen=True, slots=True)
class PostEdit:
    """A post's visibility before and after an edit."""

    old_visibility: str
    visibility: str


@dataclass(frozen=True, slots=True)
class CommentRow:
    id: int
    post_id: int
    parent_id: int | None
    text: str
    created_at: datetime
    author: PublicUser

    @classmethod
    def of(cls, row: Record) -> CommentRow:
        return cls(
            row["id"],
            row["post_id"],
            row["parent_id"],
            row["text"],
            row["created_at"],
            PublicUser.of(row),
        )


class Refused(enum.Enum):
    """Why a one-statement write wrote nothing."""

    NO_POST = "no such post"
    NO_PARENT = "no such comment on this post"


@dataclass(frozen=True, slots=True)
class CommentAccess:
    author_id: int
    post_author_id: int
    post_visible: bool
    comment_visible: bool


class PostStore:
    """Every write is one transaction with its events (agora.events.types), each written after
    the statement of its change: that statement's row lock (the post's; for a reaction, the
    reacting user's row of the post) is held until commit, so one post's events, and one user's
    reactions to a post, are in commit order. Different users' reactions to one post share no
    lock (the counters they change are delta rows, see :meth:`fold_counters`): they are
    independent and may commit in either order."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, author_id: int, text: str, visibility: str, media_ids: list[int], held: bool = False
    ) -> int:
        """The new post's id; with media, the author's own unattached uploads are attached in
        the same transaction (:class:`MediaNotAttachable` and nothing written otherwise).
        ``held`` (the word filter matched): stored visible to its author only, with a report in
        the moderators' queue in the same transaction, and no post.created until published."""
        if not media_ids and not held:
            return (await self.create_plain(author_id, text, visibility))[0].id
        async with self.db.transaction("create_post") as tx:
            post_id: int = await tx.fetchval(
                "insert_post", INSERT_POST, author_id, text, visibility, media_ids, held
            )
            if media_ids and len(await attach(tx, post_id, author_id, media_ids)) != len(media_ids):
                raise MediaNotAttachable()
            if held:
                await hold(tx, "post", post_id, author_id, text)
                return post_id
            await append(
                tx,
                PostCreated(
                    post_id=post_id,
                    author_id=author_id,
                    text=text,
                    visibility=visibility,
                    media_ids=media_ids,
                ),
                author_id,
            )
        return post_id

    async def create_plain(
        self, author_id: int, text: str, visibility: str
    ) -> tuple[PostRow, list[int]]:
        """The usual post (no media, not held by the word filter): one statement, its
        post.created included, answering the new post as its author sees it and the author's
        friends."""
        row = await self.db.fetchrow("create_post", CREATE_POST, author_id, text, visibility)
        assert row is not None
        self.db.events_committed()
        return PostRow.of(row), list(row["friend_ids"])

    async def get(self, viewer_id: int | None, post_id: int) -> PostRow | None:
        row = await self.db.fetchrow("get_post", GET_POST, viewer_id, post_id)
        return PostRow.of(row) if row else None

    async def by_ids(self, viewer_id: int | None, post_ids: list[int]) -> list[PostRow]:
        """The posts of ``post_ids`` the viewer may see, newest first."""
        if not post_ids:
            return []
        rows = await self.db.fetch("posts_by_ids", POSTS_BY_IDS, viewer_id, post_ids)
        return [PostRow.of(r) for r in rows]

    async def by_author(
        self, viewer_id: int | None, author_id: int, before_id: int, limit: int
    ) -> list[PostRow]:
        rows = await self.db.fetch("user_posts", USER_POSTS, viewer_id, author_id, before_id, limit)
        return [PostRow.of(r) for r in rows]

    async def access(self, viewer_id: int | None, post_id: int) -> PostAccess | None:
        row = await self.db.fetchrow("post_access", POST_ACCESS, viewer_id, post_id)
        return PostAccess(row["author_id"], row["visibility"], row["visible"]) if row else None

    async def update(
        self,
        post_id: int,
        text: str | None,
        visibility: str | None,
        actor_id: int,
        hold_it: bool = False,
    ) -> PostEdit | None:
        """Edit the text and/or visibility (None: unchanged); None when the post is gone.
        A changed text writes post.updated, a changed visibility post.visibility_changed.
        ``hold_it`` (the new text matches the word filter): the post is held again, with a
        report in the queue, in the same transaction."""
        async with self.db.transaction("update_post") as tx:
            row = await tx.fetchrow(
                "update_post",
                UPDATE_POST,
                post_id,
                text is not None,
                text,
                visibility is not None,
                visibility,
            )
            if row is None:
                return None
            author_id = row["author_id"]
            if hold_it and await tx.fetchval("hold_post", HOLD_POST, post_id) is not None:
                await hold(tx, "post", post_id, author_id, row["text"], edited=True)
            if row["text"] != row["old_text"]:
                await append(
                    tx,
                    PostUpdated(
                        post_id=post_id,
                        author_id=author_id,
                        text=row["text"],
                        visibility=row["visibility"],
                    ),
                    actor_id,
                )
            if row["visibility"] != row["old_visibility"]:
                await append(
                    tx,
                    PostVisibilityChanged(
                        post_id=post_id,
                        author_id=author_id,
                        old=row["old_visibility"],
                        new=row["visibility"],
                    ),
                    actor_id,
                )
        return PostEdit(row["old_visibility"], row["visibility"])

    async def publish(
        self, post_id: int, actor_id: int, announce: bool = True
    ) -> tuple[int, str] | None:
        """Publish a held post (with its post.created, by ``actor_id``, unless ``announce`` is
        false: a post held by an edit was announced when first published): its (author,
        visibility), or None when it is gone or not held."""
        async with self.db.transaction("publish_post") as tx:
            row = await tx.fetchrow("publish_post", PUBLISH_POST, post_id)
            if row is None:
                return None
            if not announce:
                return row["author_id"], row["visibility"]
            await append(
                tx,
                PostCreated(
                    post_id=post_id,
                    author_id=row["author_id"],
                    text=row["text"],
                    visibility=row["visibility"],
                    media_ids=list(row["media_ids"]),
                ),
                actor_id,
            )
        return row["author_id"], row["visibility"]

    async def delete(self, post_id: int, actor_id: int) -> bool:
        """Delete the post (its comments and reactions go with it); False when it was gone."""
        async with self.db.transaction("delete_post") as tx:
            await delete_for_post(tx, post_id, actor_id)
            author_id = await tx.fetchval("delete_post", DELETE_POST, post_id)
            if author_id is None:
                return False
            await append(tx, PostDeleted(post_id=post_id, author_id=author_id), actor_id)
        return True

    # -- feed ------------------------------------------------------------------------------------

    async def feed_ids(self, viewer_id: int, before_id: int, limit: int) -> list[int]:
        rows = await self.db.fetch("feed_ids", FEED_IDS, viewer_id, before_id, limit)
        return [r["id"] for r in rows]

    async def feed_page(self, viewer_id: int, before_id: int, limit: int) -> list[PostRow]:
        rows = await self.db.fetch("feed_page", FEED_PAGE, viewer_id, before_id, limit)
        return [PostRow.of(r) for r in rows]

    async def top_feed(
        self,
        viewer_id: int,
        as_of: datetime,
        since: datetime,
        after: tuple[float, int],
        window_per_author: int,
        limit: int,
    ) -> list[tuple[PostRow, float]]:
        """Posts created in [since, as_of] ranked by score as of ``as_of``, below ``after``."""
        max_id = id_floor(as_of + timedelta(milliseconds=1)) - 1
        rows = await self.db.fetch(
            "top_feed",
            TOP_FEED,
            viewer_id,
            as_of,
            max_id,
            id_floor(since),
            after[0],
            after[1],
            window_per_author,
            limit,
            since,
        )
        return [(PostRow.of(r), r["score"]) for r in rows]

    # -- counters --------------------------------------------------------------------------------

    async def fold_counters(self, batch: int = FOLD_BATCH) -> int | None:
        """Move up to ``batch`` pending counter deltas into ``content.post_stats`` (one
        statement, :data:`FOLD_COUNTERS`): the number of delta rows moved, or None when another
        fold holds the cluster-wide lock. Reads are exact before, during and after."""
        row = await self.db.fetchrow("fold_counters", FOLD_COUNTERS, batch)
        assert row is not None
        return int(row["moved"]) if row["held"] else None

    async def fold_all_counters(self, batch: int = FOLD_BATCH) -> int:
        """Fold until a fold moves less than a full batch (or another node is folding): the
        delta rows moved. The node runs this every second (``counter-fold`` in
        agora/server/app.py)."""
        total = 0
        while (moved := await self.fold_counters(batch)) is not None:
            total += moved
            if moved < batch:
                break
        return total

    # -- reactions --------------------------------------------------------------------------

    async def visible_author(self, tx: Tx | Database, viewer_id: int, post_id: int) -> int | None:
        """The post's author if the viewer may see the post, else None."""
        row = await tx.fetchrow("check_post_visible", CHECK_VISIBLE, viewer_id, post_id)
        return row["author_id"] if row is not None and row["visible"] else None

    async def react(self, viewer_id: int, post_id: int, kind: str) -> bool:
        """Set the viewer's reaction; False when the post is gone or not visible. A new or
        changed reaction writes reaction.set; the same type again writes nothing. One
        statement (:data:`REACT`): no transaction left open between round trips, so the rows
        it locks are held only while it runs and commits."""
        try:
            for _ in range(_UPSERT_ATTEMPTS):
                row = await self.db.fetchrow("react", REACT, viewer_id, post_id, kind)
                assert row is not None
                if row["author_id"] is None:
                    return False
                if row["reaction"] is not None:
                    self.db.events_committed()
                    break
                if row["previous"] is not None:
                    break  # already that type: nothing written
                # Both NULL: the viewer's first reaction committed meanwhile (see REACT).
        except asyncpg.ForeignKeyViolationError:  # deleted meanwhile
            return False
        return True

    async def unreact(self, viewer_id: int, post_id: int) -> bool:
        """Remove the viewer's reaction (reaction.removed when there was one); False when the
        post is gone or not visible."""
        async with self.db.transaction("unreact") as tx:
            author_id = await self.visible_author(tx, viewer_id, post_id)
            if author_id is None:
                return False
            kind = await tx.fetchval("delete_reaction", DELETE_REACTION, post_id, viewer_id)
            if kind is not None:
                await append(
                    tx,
                    ReactionRemoved(
                        post_id=post_id, post_author_id=author_id, user_id=viewer_id, reaction=kind
                    ),
                    viewer_id,
                )
        return True


class CommentStore:
    """Like :class:`PostStore`: each write is one transaction with its event."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def post_of(self, comment_id: int) -> int | None:
        post_id: int | None = await self.db.fetchval("comment_post", COMMENT_POST, comment_id)
        return post_id

    async def create(
        self, post_id: int, author_id: int, parent_id: int | None, text: str, held: bool = False
    ) -> int | None:
        """The new comment's id (None: the post or parent is gone). ``held``: as for posts
        (:meth:`PostStore.create`), no comment.created until published."""
        try:
            async with self.db.transaction("create_comment") as tx:
                row = await tx.fetchrow(
                    "insert_comment", INSERT_COMMENT, post_id, author_id, parent_id, text, held
                )
                assert row is not None
                comment_id: int = row["id"]
                if held:
                    await hold(tx, "comment", comment_id, author_id, text)
                    return comment_id
                await append(
                    tx,
                    CommentCreated(
                        comment_id=comment_id,
                        post_id=post_id,
                        post_author_id=row["post_author_id"],
                        author_id=author_id,
                        parent_id=parent_id,
                        parent_author_id=row["parent_author_id"],
                        text=text,
                    ),
                    author_id,
                )
        except asyncpg.ForeignKeyViolationError:  # the post (or parent) was deleted meanwhile
            return None
        return comment_id

    async def create_visible(
        self, viewer_id: int, post_id: int, parent_id: int | None, text: str
    ) -> CommentRow | Refused:
        """A comment (not held) by ``viewer_id`` on a post they may see, under ``parent_id``
        when that is a comment of the post, with its comment.created: one statement
        (:data:`CREATE_COMMENT`). The new comment, or why nothing was written."""
        try:
            row = await self.db.fetchrow(
                "create_comment", CREATE_COMMENT, viewer_id, post_id, parent_id, text
            )
        except asyncpg.ForeignKeyViolationError:  # the post (or parent) was deleted meanwhile
            return Refused.NO_POST
        assert row is not None
        if row["post_author_id"] is None:
            return Refused.NO_POST
        if not row["parent_ok"]:
            return Refused.NO_PARENT
        if row["id"] is None:  # the post went between the statement's checks and its insert
            return Refused.NO_POST
        self.db.events_committed()
        return CommentRow.of(row)

    async def get(self, comment_id: int) -> CommentRow | None:
        row = await self.db.fetchrow("get_comment", GET_COMMENT, comment_id)
        return CommentRow.of(row) if row else None

    async def list(
        self, viewer_id: int | None, post_id: int, after_id: int, limit: int
    ) -> list[CommentRow]:
        rows = await self.db.fetch(
            "list_comments", LIST_COMMENTS, viewer_id, post_id, after_id, limit
        )
        return [CommentRow.of(r) for r in rows]

    async def access(self, viewer_id: int, comment_id: int) -> CommentAccess | None:
        row = await self.db.fetchrow("comment_access", COMMENT_ACCESS, viewer_id, comment_id)
        if row is None:
            return None
        return CommentAccess(
            row["author_id"], row["post_author_id"], row["post_visible"], row["comment_visible"]
        )

    async def publish(self, comment_id: int, actor_id: int) -> int | None:
        """Publish a held comment (with its comment.created): its post's id, or None when it is
        gone or not held."""
        async with self.db.transaction("publish_comment") as tx:
            row = await tx.fetchrow("publish_comment", PUBLISH_COMMENT, comment_id)
            if row is None:
                return None
            await append(
                tx,
                CommentCreated(
                    comment_id=comment_id,
                    post_id=row["post_id"],
                    post_author_id=row["post_author_id"],
                    author_id=row["author_id"],
                    parent_id=row["parent_id"],
                    parent_author_id=row["parent_author_id"],
                    text=row["text"],
                ),
                actor_id,
            )
        post_id: int = row["post_id"]
        return post_id

    async def delete(self, comment_id: int, actor_id: int) -> int | None:
        """Delete the comment (its replies go with it); its post's id, or None when it was
        gone."""
        async with self.db.transaction("delete_comment") as tx:
            row = await tx.fetchrow("delete_comment", DELETE_COMMENT, comment_id)
            if row is None:
                return None
            post_id: int = row["post_id"]
            await append(
                tx,
                CommentDeleted(comment_id=comment_id, post_id=post_id, author_id=row["author_id"]),
                actor_id,
            )
        return post_id
