"""``seed``: a realistic social graph and content, written straight into PostgreSQL.

Everything is generated server-side (``INSERT ... SELECT generate_series``), in one transaction,
so a failed run leaves nothing behind. Shape of the data:

- users ``bench_<n>`` / ``bench_<n>@bench.invalid``, all with one argon2id hash of
  ``bench-password`` (computed once), created over 90 to 30 days ago;
- friendships in both directions with average degree close to ``--friends``: each user draws
  ``friends / 2`` edges, half to a random user and half to one of the next ``4 * friends`` users
  on a ring (locality: friends of friends are often friends);
- posts over the last 30 days by skewed authors (author rank ~ N * U^3: the top 1% of users
  write about a fifth of the posts), visibility 55% friends / 40% public / 5% private, ids from
  ``agora.next_id(created_at)`` so they are time-ordered;
- reactions and top-level comments on public and friends posts (popular posts get more), by
  friends of the author, after the post.

The triggers that keep the post counters (``content.post_stats`` and the delta rows of
``content.post_stat_deltas``, migration 0015) are switched off for the load when the role may
(``session_replication_role = replica``, superusers only; otherwise they fire, slower), and
``post_stats`` is then rebuilt for the bench posts with one aggregate ``INSERT ... ON CONFLICT``
after deleting their deltas in the same transaction, exactly consistent with the rows either way.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from agora.storage.migrations import migrate
from bench.corpus import COMMENT_CHARS, POST_CHARS, filler
from bench.fixtures import password_hash
from bench.procs import BenchError, log
from bench.services import Services

BENCH_USERS = r"username LIKE 'bench\_%' AND email LIKE '%@bench.invalid'"
LOREM = filler(6000, seed=42)
REACTION_MIX = "ARRAY['like','like','like','like','love','love','haha','wow','sad','angry']"


class SeedError(BenchError):
    """The database cannot be seeded as asked; the message says why."""


async def seed(
    services: Services,
    *,
    users: int,
    friends: int,
    posts: int,
    reactions: int,
    comments: int,
    reset: bool,
) -> dict[str, Any]:
    """Seed the configured database; return counts and timings."""
    if users < 2 or not 0 <= friends < users or min(posts, reactions, comments) < 0:
        raise SeedError("need --users >= 2, 0 <= --friends < --users, and no negative counts")
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        return now

    at = started
    applied = await migrate(services.database_url)
    at = lap("migrate", at)
    hashed = await password_hash(services)
    at = lap("hash", at)

    conn = await asyncpg.connect(services.database_url)
    try:
        existing = await conn.fetchval(f"SELECT count(*) FROM accounts.users WHERE {BENCH_USERS}")
        if existing and not reset:
            raise SeedError(
                f"the database already holds {existing} bench users; pass --reset to replace them"
            )
        if existing:
            log(f"removing {existing} bench users and their content")
            async with conn.transaction():
                await remove_bench_data(conn)
            at = lap("reset", at)
        async with conn.transaction():
            fast = await conn.fetchval("SELECT current_setting('is_superuser') = 'on'")
            if fast:
                await conn.execute("SET LOCAL session_replication_role = replica")
            else:
                log("not a superuser: the post_stats triggers fire during the load (slower)")
            await conn.execute("SET LOCAL work_mem = '256MB'")
            counts = await _load(
                conn,
                lap,
                at,
                hashed,
                users=users,
                friends=friends,
                posts=posts,
                reactions=reactions,
                comments=comments,
            )
    finally:
        await conn.close()
    timings["total"] = round(time.perf_counter() - started, 2)
    return {
        "target": "seed",
        "database": services.describe(),
        "migrations_applied": applied,
        "triggers_disabled_for_load": bool(fast),
        **counts,
        "timings_s": timings,
    }


async def remove_bench_data(conn: asyncpg.Connection) -> None:
    """Delete the bench users and what hangs off them (call inside a transaction). Counters of
    bench posts go first; the delta rows the triggers on the reaction and comment deletes write
    for bench posts are deleted before the posts (the next fold would drop them anyway), while
    those for other posts (reactions and comments by bench users) stay: they are real changes
    of those posts' counts. Every foreign key still cascades (no replica mode here: tables
    added later may reference these rows)."""
    await conn.execute(f"""
        CREATE TEMP TABLE old_users ON COMMIT DROP AS
            SELECT id FROM accounts.users WHERE {BENCH_USERS};
        CREATE TEMP TABLE old_posts ON COMMIT DROP AS
            SELECT id FROM content.posts WHERE author_id IN (SELECT id FROM old_users);
        DELETE FROM content.post_stats WHERE post_id IN (SELECT id FROM old_posts);
        DELETE FROM content.reactions
            WHERE post_id IN (SELECT id FROM old_posts) OR user_id IN (SELECT id FROM old_users);
        DELETE FROM content.comments
            WHERE post_id IN (SELECT id FROM old_posts) OR author_id IN (SELECT id FROM old_users);
        DELETE FROM content.post_stat_deltas WHERE post_id IN (SELECT id FROM old_posts);
        DELETE FROM content.posts WHERE id IN (SELECT id FROM old_posts);
        DELETE FROM social.friendships
            WHERE user_id IN (SELECT id FROM old_users) OR friend_id IN (SELECT id FROM old_users);
        DELETE FROM accounts.users WHERE id IN (SELECT id FROM old_users);
    """)


async def _execute(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    """Run one statement; return the rows it inserted."""
    status = await conn.execute(sql, *args)
    return int(status.rsplit(" ", 1)[-1])


async def _load(
    conn: asyncpg.Connection,
    lap: Any,
    at: float,
    hashed: str,
    *,
    users: int,
    friends: int,
    posts: int,
    reactions: int,
    comments: int,
) -> dict[str, Any]:
    # bu: the new users by number n, with a random activity rank (1 = the heaviest poster).
    await conn.execute("""
        CREATE TEMP TABLE bu (n int PRIMARY KEY, id bigint NOT NULL, activity int NOT NULL)
        ON COMMIT DROP""")
    n_users = await _execute(
        conn,
        """
        WITH new AS (
            INSERT INTO accounts.users (id, username, email, password_hash, display_name,
                                        created_at, updated_at)
            SELECT agora.next_id(t), 'bench_' || n, 'bench_' || n || '@bench.invalid', $1,
                   'Bench User ' || n, t, t
            FROM (SELECT n, now() - interval '90 days'
                                + (n::float8 / $2::int) * interval '60 days' AS t
                  FROM generate_series(1, $2::int) n) s
            RETURNING id, username)
        INSERT INTO bu SELECT substr(username, 7)::int, id, row_number() OVER (ORDER BY random())
        FROM new""",
        hashed,
        users,
    )
    await conn.execute("CREATE UNIQUE INDEX ON bu (activity)")
    at = lap("users", at)

    half = friends // 2
    window = max(1, min(users - 1, 4 * friends))
    await conn.execute(
        """
        CREATE TEMP TABLE edges ON COMMIT DROP AS
        SELECT a, b, now() - random() * interval '30 days' AS t
        FROM (SELECT DISTINCT least(a, b) AS a, greatest(a, b) AS b
              FROM (SELECT u AS a,
                           CASE WHEN i % 2 = 0
                                THEN (u + floor(random() * $3::int)::int) % $1::int + 1
                                ELSE 1 + floor(random() * $1::int)::int END AS b
                    FROM generate_series(1, $1::int) u, generate_series(1, $2::int) i) e
              WHERE a <> b) d""",
        users,
        half,
        window,
    )
    friendship_rows = await _execute(
        conn,
        """
        INSERT INTO social.friendships (user_id, friend_id, created_at)
        SELECT d.u, d.f, e.t
        FROM edges e JOIN bu x ON x.n = e.a JOIN bu y ON y.n = e.b,
             LATERAL (VALUES (x.id, y.id), (y.id, x.id)) d(u, f)
        ORDER BY d.u, d.f""",
    )
    at = lap("friendships", at)

    low, high = POST_CHARS
    n_posts = await _execute(
        conn,
        f"""
        INSERT INTO content.posts (id, author_id, text, visibility, created_at, updated_at)
        SELECT agora.next_id(s.t), a.id,
               substr($2::text, 1 + floor(random() * (length($2::text) - {high}))::int,
                      {low} + floor(random() * {high - low + 1})::int),
               CASE WHEN s.v < 0.55 THEN 'friends' WHEN s.v < 0.95 THEN 'public' ELSE 'private' END,
               s.t, s.t
        FROM (SELECT now() - random() * interval '30 days' AS t,
                     1 + floor($3::int * power(random(), 3))::int AS k, random() AS v
              FROM generate_series(1, $1::int)) s
        JOIN bu a ON a.activity = s.k
        ORDER BY s.t""",
        posts,
        LOREM,
        users,
    )
    at = lap("posts", at)

    # Reactable posts in random order (k), each author's friends as an array (fa).
    await conn.execute("""
        CREATE TEMP TABLE bp ON COMMIT DROP AS
            SELECT row_number() OVER (ORDER BY random())::int AS k, p.id, p.author_id, p.created_at
            FROM content.posts p JOIN bu ON bu.id = p.author_id WHERE p.visibility <> 'private';
        CREATE UNIQUE INDEX ON bp (k);
        CREATE TEMP TABLE fa ON COMMIT DROP AS
            SELECT f.user_id, array_agg(f.friend_id) AS f
            FROM social.friendships f JOIN bu ON bu.id = f.user_id GROUP BY f.user_id;
        CREATE UNIQUE INDEX ON fa (user_id);
        ANALYZE bp; ANALYZE fa;""")
    reactable = await conn.fetchval("SELECT count(*) FROM bp")
    n_reactions = n_comments = 0
    if reactable and reactions:
        n_reactions = await _execute(
            conn,
            f"""
            INSERT INTO content.reactions (post_id, user_id, type, created_at)
            SELECT bp.id, fa.f[1 + floor(s.r1 * cardinality(fa.f))::int],
                   ({REACTION_MIX})[1 + floor(s.r2 * 10)::int],
                   bp.created_at + s.r3 * (now() - bp.created_at)
            FROM (SELECT 1 + floor($2::int * power(random(), 2))::int AS k,
                         random() AS r1, random() AS r2, random() AS r3
                  FROM generate_series(1, $1::int)) s
            JOIN bp ON bp.k = s.k JOIN fa ON fa.user_id = bp.author_id
            ON CONFLICT DO NOTHING""",
            reactions,
            reactable,
        )
    at = lap("reactions", at)
    if reactable and comments:
        c_low, c_high = COMMENT_CHARS
        n_comments = await _execute(
            conn,
            f"""
            INSERT INTO content.comments (id, post_id, author_id, text, created_at)
            SELECT agora.next_id(c.t), c.id, c.author, c.text, c.t
            FROM (SELECT bp.id,
                         CASE WHEN s.r0 < 0.1 THEN bp.author_id
                              ELSE fa.f[1 + floor(s.r1 * cardinality(fa.f))::int] END AS author,
                         substr($3::text, 1 + floor(s.r2 * (length($3::text) - {c_high}))::int,
                                {c_low} + floor(s.r3 * {c_high - c_low + 1})::int) AS text,
                         bp.created_at + s.r4 * (now() - bp.created_at) AS t
                  FROM (SELECT 1 + floor($2::int * power(random(), 2))::int AS k, random() AS r0,
                               random() AS r1, random() AS r2, random() AS r3, random() AS r4
                        FROM generate_series(1, $1::int)) s
                  JOIN bp ON bp.k = s.k JOIN fa ON fa.user_id = bp.author_id) c
            ORDER BY c.t""",
            comments,
            reactable,
            LOREM,
        )
    at = lap("comments", at)

    # The deltas the triggers wrote for bench posts (when they fired) are in the rebuilt rows.
    await conn.execute("""
        DELETE FROM content.post_stat_deltas
        WHERE post_id IN (SELECT p.id FROM content.posts p JOIN bu ON bu.id = p.author_id)""")
    stats_rows = await _execute(
        conn,
        """
        INSERT INTO content.post_stats (post_id, comment_count, like_count, love_count,
                                        haha_count, wow_count, sad_count, angry_count)
        SELECT p.id, coalesce(c.n, 0), coalesce(r.like_n, 0), coalesce(r.love_n, 0),
               coalesce(r.haha_n, 0), coalesce(r.wow_n, 0), coalesce(r.sad_n, 0),
               coalesce(r.angry_n, 0)
        FROM content.posts p
        JOIN bu ON bu.id = p.author_id
        LEFT JOIN (SELECT post_id, count(*) AS n FROM content.comments GROUP BY post_id) c
               ON c.post_id = p.id
        LEFT JOIN (SELECT post_id,
                          count(*) FILTER (WHERE type = 'like') AS like_n,
                          count(*) FILTER (WHERE type = 'love') AS love_n,
                          count(*) FILTER (WHERE type = 'haha') AS haha_n,
                          count(*) FILTER (WHERE type = 'wow') AS wow_n,
                          count(*) FILTER (WHERE type = 'sad') AS sad_n,
                          count(*) FILTER (WHERE type = 'angry') AS angry_n
                   FROM content.reactions GROUP BY post_id) r ON r.post_id = p.id
        ON CONFLICT (post_id) DO UPDATE SET
            comment_count = EXCLUDED.comment_count, like_count = EXCLUDED.like_count,
            love_count = EXCLUDED.love_count, haha_count = EXCLUDED.haha_count,
            wow_count = EXCLUDED.wow_count, sad_count = EXCLUDED.sad_count,
            angry_count = EXCLUDED.angry_count""",
    )
    at = lap("post_stats", at)

    await conn.execute("""
        ANALYZE accounts.users; ANALYZE social.friendships; ANALYZE content.posts;
        ANALYZE content.post_stats; ANALYZE content.reactions; ANALYZE content.comments""")
    lap("analyze", at)

    visibility = dict(
        await conn.fetch("""
        SELECT visibility, count(*) FROM content.posts p JOIN bu ON bu.id = p.author_id
        GROUP BY visibility""")
    )
    heavy = await conn.fetchval(
        """
        SELECT coalesce(sum(n), 0)::bigint FROM (
            SELECT count(*) AS n FROM content.posts p JOIN bu ON bu.id = p.author_id
            GROUP BY p.author_id ORDER BY n DESC LIMIT greatest(1, $1 / 100)) t""",
        users,
    )
    return {
        "users": n_users,
        "friendship_rows": friendship_rows,
        "avg_friends": round(friendship_rows / n_users, 1),
        "posts": n_posts,
        "posts_by_visibility": {k: visibility.get(k, 0) for k in ("friends", "public", "private")},
        "top_1pct_authors_post_share": round(heavy / n_posts, 3) if n_posts else 0,
        "reactions": n_reactions,
        "comments": n_comments,
        "post_stats_rows": stats_rows,
    }
