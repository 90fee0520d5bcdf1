"""Search's SQL: the PostgreSQL backend's candidate queries, and the re-check every backend's
candidates go through before anyone sees them.

Candidates (``PostgresBackend``) are filtered only on what is asked (words, authors, dates,
media; for messages the viewer's conversations); the re-check (:data:`VISIBLE_USERS`,
:data:`VISIBLE_POSTS`, :data:`VISIBLE_MESSAGES`) applies the one visibility rule of
:mod:`agora.storage.visibility` in full: privacy, friendship, blocks, suspension, membership.

Posts and messages are searched in *windows*: the newest matches (by id, which is time order)
below an upper id are ranked by relevance with a recency boost, a page is taken by ``(score,
id)`` keyset, and the next window starts below the lowest id of this one. A common word
therefore reads a bounded number of rows, not every post that holds it; a rare one reads its
few matches through the GIN index.

The candidate statements run on a pool of their own with ``plan_cache_mode =
force_custom_plan``: the plans they need (an author's posts, media, a date range) depend on the
values, and only a plan made for the actual values can know them.
"""

from __future__ import annotations

from dataclasses import dataclass

from agora.storage.accounts import PUBLIC_USER_COLUMNS, USERS_BY_NAME, PublicUser
from agora.storage.chat import MessageRow
from agora.storage.content import VISIBLE, PostRow, post_select
from agora.storage.db import Database
from agora.storage.visibility import users_hidden

# The candidate pool's sessions: plans made for each query's values; a name within a typo of the
# query when at least 40% of the query's trigrams are found in one stretch of it (pg_trgm's
# default, 60%, misses "zefyrine" for "zephyrine": 6 of 13).
SEARCH_SETTINGS = {
    "plan_cache_mode": "force_custom_plan",
    "pg_trgm.word_similarity_threshold": "0.4",
}
FUZZY_SHARE = 0.5  # the built-in trigrams: the share of the query's found anywhere in the name
WINDOW = 200  # matches ranked together (messages; posts by from:, has:media or dates)
TEXT_WINDOW = 100  # posts by words alone (a window of a common word is a walk: below)
NAMES = 100  # people: candidates per source
START = 2.0  # a score above every real one: a cursor at the top of a window

# ts_headline: one fragment of about 10-30 words around the best match, marked with the
# private-use characters of agora.search.backend (MARK_START, MARK_END).
HEADLINE_OPTIONS = (
    "StartSel=\ue000, StopSel=\ue001, MaxFragments=1, MaxWords=30, MinWords=10, ShortWord=2"
)

# The text condition, built in SQL from the parsed query's words (stemming is PostgreSQL's).
# The function is immutable: in a custom plan its arguments are constants, so the planner folds
# it into a constant tsquery and estimates how common the words are.
TSQUERY = "search.query($1::text[], $2::text[], $3::text[], $4::text[])"


# The score: ts_rank (exact lexemes weigh 1.0, stemmed 0.4; normalization 32 maps it into
# [0, 1)) plus a floor so that a query of operators only (no text: no rank) still orders by
# age, divided by the square root of 1 + age in weeks, "as of" the search's first page.
def _score(as_of: str) -> str:
    return f"""(
    (coalesce(ts_rank(w.search, {TSQUERY}, 32), 0)::float8 + 0.01::float8)
    / sqrt(1::float8 + greatest(extract(epoch FROM ({as_of}::timestamptz - w.created_at))::float8,
                                0::float8) / 604800::float8)
)"""


def _ranked(window: str, as_of: str) -> str:
    """The rows of ``window`` (id, search, created_at) with their scores, best first."""
    return f"""
WITH win AS MATERIALIZED ({window})
SELECT w.id, {_score(as_of)} AS score FROM win w
ORDER BY score DESC, id DESC
"""


# A window is the newest matches below an id ($5, exclusive) and from an id ($6). Words alone
# (the common search) go through search.newest_posts (migration 0011): left to itself the
# planner walks the ids whenever it expects the words to be common, and when they are not (a
# word common long ago and rare now, words common apart and seldom together) it walks every
# post. There a walk reads WALK_BUDGET posts at most, and what it does not meet comes from the
# GIN index below them. A phrase walks first ($8 true; NULL: by the estimate): from the index,
# every post holding all its words is read to check their order, and for common words those
# are many more than the phrase's matches; the walk checks the posts it reads anyway.
# $1-$4 words, phrases, excluded words and phrases, $7 the as-of time.
WALK_BUDGET = 10_000
POST_TEXT_WINDOW = _ranked(
    f"""
    SELECT p.id, p.search, p.created_at
    FROM search.newest_posts({TSQUERY}, $5, $6, {TEXT_WINDOW}, {WALK_BUDGET}, $8) AS n(id)
    JOIN content.posts p ON p.id = n.id""",
    "$7",
)
# With from: or has:media, or no words: a plan made for the values: an author's posts through
# posts_author, media through posts_with_media, dates alone walking the ids (every row matches).
# $7 author ids (NULL: any), $8 has:media, $9 the as-of time; each condition of an absent
# operator folds to true in the custom plan.
POST_WINDOW = _ranked(
    f"""
    SELECT p.id, p.search, p.created_at FROM content.posts p
    WHERE p.id < $5 AND p.id >= $6
      AND ({TSQUERY} IS NULL OR p.search @@ {TSQUERY})
      AND ($7::bigint[] IS NULL OR p.author_id = ANY($7::bigint[]))
      AND (NOT $8::bool OR cardinality(p.media_ids) > 0)
    ORDER BY p.id DESC
    LIMIT {WINDOW}""",
    "$9",
)
# Messages: only the viewer's conversations (nobody else's would survive the re-check), through
# search.newest_messages (migration 0011). $7 sender ids (NULL: any), $8 the viewer, $9 as of.
MESSAGE_WINDOW = _ranked(
    f"""
    SELECT m.id, m.search, m.created_at
    FROM search.newest_messages({TSQUERY}, $8::bigint, $7::bigint[], $5, $6, {WINDOW}) AS n(id)
    JOIN chat.messages m ON m.id = n.id""",
    "$9",
)


# Users, in two steps that score alike: names starting with the query (username 3+, display
# name 2+, the closer the length the higher; the exact username 4), then, only when those do not
# fill the page, names within a typo of it (trigram word similarity, 0.4-1). Every source is
# bounded; a name matching both is scored (and so paged) as a prefix match.
# $1 the query as typed (lower-cased), $2 its LIKE prefix pattern, $3 excluded LIKE patterns,
# $4/$5 the keyset (score, id), $6 page size.
PREFIX_SCORES = 2.0  # every prefix match scores at least this, every typo match less


def _scored_users(sources: str, similarity: str) -> str:
    # Each candidate is looked up by id (OFFSET 0 keeps the lookup a nested loop: with a few
    # hundred candidates the planner would otherwise read every user and hash-join them).
    return f"""
WITH cand AS ({sources})
SELECT s.id, s.score
FROM cand CROSS JOIN LATERAL (
    SELECT u.id, u.status, search.name(u.username, u.display_name) AS name, CASE
        WHEN lower(u.username) = $1 THEN 4::float8
        WHEN lower(u.username) COLLATE "C" LIKE $2
            THEN 3::float8 + length($1)::float8 / length(u.username)::float8
        WHEN lower(u.display_name) COLLATE "C" LIKE $2
            THEN 2::float8 + length($1)::float8 / greatest(length(u.display_name), 1)::float8
        ELSE {similarity}::float8
    END AS score
    FROM accounts.users u WHERE u.id = cand.id
    OFFSET 0
) s
WHERE s.status = 'active'
  AND NOT (s.name LIKE ANY($3::text[]))
  AND (s.score, s.id) < ($4::float8, $5::bigint)
ORDER BY s.score DESC, s.id DESC
LIMIT $6
"""


USER_PREFIXES = _scored_users(
    f"""
    (SELECT u.id FROM accounts.users u WHERE lower(u.username) COLLATE "C" LIKE $2
     ORDER BY lower(u.username) COLLATE "C" LIMIT {NAMES})
    UNION
    (SELECT u.id FROM accounts.users u WHERE lower(u.display_name) COLLATE "C" LIKE $2
     ORDER BY lower(u.display_name) COLLATE "C" LIMIT {NAMES})""",
    "0",
)


def user_typos(trigram: str) -> str:
    """``trigram``: "pg_trgm" (its GIN index and word similarity) or "builtin" (migration
    0010's text[] trigrams: the share of the query's trigrams found in the name)."""
    if trigram == "pg_trgm":
        return _scored_users(
            f"""SELECT u.id FROM accounts.users u
            WHERE $1 <% search.name(u.username, u.display_name) LIMIT {NAMES}""",
            "word_similarity($1, search.name(u.username, u.display_name))",
        )
    shared = "(SELECT count(*) FROM unnest(u.name_trigrams) g WHERE g = ANY(search.trigrams($1)))"
    return _scored_users(
        f"""SELECT u.id FROM accounts.users u
        WHERE u.name_trigrams && search.trigrams($1)
          AND {shared} >= {FUZZY_SHARE} * cardinality(search.trigrams($1))
        LIMIT {NAMES}""",
        f"{shared}::float8 / greatest(cardinality(search.trigrams($1)), 1)",
    )


TRIGRAM_MODE = """
SELECT EXISTS (SELECT FROM pg_indexes
               WHERE schemaname = 'accounts' AND indexname = 'users_name_trgm')
"""

# -- the re-check: what the caller may see of the candidates, whatever the index said ----------
# $1 viewer, $2 candidate ids in rank order, $3 how many to keep (the first visible ones), $4 the
# words to highlight. Each row says its place among the candidates (`ord`, from 1).
_CANDIDATES = "unnest($2::bigint[]) WITH ORDINALITY AS c(id, ord)"
# Replacing the markers keeps a stored text from forging a highlight.
_SNIPPET = f"""coalesce(ts_headline('pg_catalog.english'::regconfig,
                         replace(replace({{text}}, E'\\uE000', ''), E'\\uE001', ''),
                         search.highlight($4::text[]), '{HEADLINE_OPTIONS}'),
                     left({{text}}, 150)) AS snippet"""

VISIBLE_USERS = f"""
SELECT c.ord, {PUBLIC_USER_COLUMNS}
FROM {_CANDIDATES} JOIN accounts.users u ON u.id = c.id
WHERE u.status = 'active' AND (u.id = $1::bigint OR NOT {users_hidden("$1::bigint", "u.id")})
ORDER BY c.ord LIMIT $3
"""
VISIBLE_POSTS = f"""
WITH ok AS MATERIALIZED (
    SELECT c.id, c.ord FROM {_CANDIDATES} JOIN content.posts p ON p.id = c.id
    WHERE {VISIBLE}
    ORDER BY c.ord LIMIT $3
)
{post_select(", ok.ord, " + _SNIPPET.format(text="p.text"))}
JOIN ok ON ok.id = p.id
ORDER BY ok.ord
"""
# A member sees a conversation's messages (history before they joined included, as the chat
# history endpoints show it), except those of a sender hidden from them (a block either way, a
# suspended sender) and those a moderator removed.
VISIBLE_MESSAGES = f"""
SELECT c.ord, m.id, m.conversation_id, m.seq, m.sender_id, m.client_id, m.text, m.created_at,
       {PUBLIC_USER_COLUMNS}, {_SNIPPET.format(text="m.text")}
FROM {_CANDIDATES}
JOIN chat.messages m ON m.id = c.id
JOIN chat.members mb ON mb.conversation_id = m.conversation_id AND mb.user_id = $1::bigint
JOIN accounts.users u ON u.id = m.sender_id
WHERE m.removed_at IS NULL
  AND (m.sender_id = $1::bigint OR NOT {users_hidden("$1::bigint", "m.sender_id")})
ORDER BY c.ord LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class Candidate:
    id: int
    score: float


@dataclass(frozen=True, slots=True)
class Found:
    """A candidate the viewer may see, with its place among the candidates (from 0)."""

    place: int
    snippet: str | None


@dataclass(frozen=True, slots=True)
class FoundUser(Found):
    user: PublicUser


@dataclass(frozen=True, slots=True)
class FoundPost(Found):
    post: PostRow


@dataclass(frozen=True, slots=True)
class FoundMessage(Found):
    message: MessageRow
    sender: PublicUser


class SearchStore:
    def __init__(self, db: Database, search_db: Database | None = None) -> None:
        self.db = db
        # Candidate queries (custom plans, see the module docstring); the re-check uses `db`.
        self.search_db = search_db or db

    async def user_ids(self, names: list[str]) -> list[int]:
        rows = await self.db.fetch(
            "search_users_by_name", USERS_BY_NAME, [n.lower() for n in names]
        )
        return [r["id"] for r in rows]

    async def trigram_mode(self) -> str:
        has = await self.search_db.fetchval("search_trigram_mode", TRIGRAM_MODE)
        return "pg_trgm" if has else "builtin"

    async def candidates(self, name: str, sql: str, *args: object) -> list[Candidate]:
        rows = await self.search_db.fetch(name, sql, *args)
        return [Candidate(r["id"], r["score"]) for r in rows]

    # -- the re-check ---------------------------------------------------------------------------

    async def visible_users(self, viewer: int, ids: list[int], keep: int) -> list[FoundUser]:
        rows = await self.db.fetch("search_visible_users", VISIBLE_USERS, viewer, ids, keep)
        return [FoundUser(r["ord"] - 1, None, PublicUser.of(r)) for r in rows]

    async def visible_posts(
        self, viewer: int, ids: list[int], keep: int, highlight: list[str]
    ) -> list[FoundPost]:
        rows = await self.db.fetch(
            "search_visible_posts", VISIBLE_POSTS, viewer, ids, keep, highlight
        )
        return [FoundPost(r["ord"] - 1, r["snippet"], PostRow.of(r)) for r in rows]

    async def visible_messages(
        self, viewer: int, ids: list[int], keep: int, highlight: list[str]
    ) -> list[FoundMessage]:
        rows = await self.db.fetch(
            "search_visible_messages", VISIBLE_MESSAGES, viewer, ids, keep, highlight
        )
        return [
            FoundMessage(
                r["ord"] - 1,
                r["snippet"],
                MessageRow(
                    r["id"],
                    r["conversation_id"],
                    r["seq"],
                    r["sender_id"],
                    r["client_id"],
                    r["text"],
                    r["created_at"],
                ),
                PublicUser.of(r),
            )
            for r in rows
        ]
