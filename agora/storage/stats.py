"""The analytics rollups (``stats.daily``): per-day counters, written by the stats consumer.

Only :class:`agora.services.stats.StatsConsumer` writes them, inside the runner's transaction;
``GET /admin/stats`` and ``agora admin stats`` read a range of days by primary key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from agora.storage.db import Database, Tx

COUNTERS = ("signups", "posts", "comments", "reactions", "messages")

# One statement per batch, the days in ascending order: two batches that both span midnight
# lock the two rows in the same order, so they wait for each other instead of deadlocking.
ADD_COUNTS = """
INSERT INTO stats.daily AS d (day, signups, posts, comments, reactions, messages)
SELECT * FROM unnest($1::date[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::bigint[])
ORDER BY 1
ON CONFLICT (day) DO UPDATE SET
    signups = d.signups + EXCLUDED.signups,
    posts = d.posts + EXCLUDED.posts,
    comments = d.comments + EXCLUDED.comments,
    reactions = d.reactions + EXCLUDED.reactions,
    messages = d.messages + EXCLUDED.messages
"""
DAYS = """
SELECT day, signups, posts, comments, reactions, messages FROM stats.daily
WHERE day BETWEEN $1 AND $2 ORDER BY day
"""


@dataclass(slots=True)
class DayCounts:
    """What was created on one UTC day."""

    signups: int = 0
    posts: int = 0
    comments: int = 0
    reactions: int = 0
    messages: int = 0

    def __bool__(self) -> bool:
        return any((self.signups, self.posts, self.comments, self.reactions, self.messages))


class StatsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, tx: Tx, counts: dict[date, DayCounts]) -> None:
        """Add ``counts`` to their days' rows, in ``tx`` (the consumer's transaction)."""
        days = sorted(day for day, c in counts.items() if c)
        if not days:
            return
        await tx.execute(
            "stats_add",
            ADD_COUNTS,
            days,
            *([getattr(counts[d], name) for d in days] for name in COUNTERS),
        )

    async def days(self, first: date, last: date) -> dict[date, DayCounts]:
        """The rows of ``first``..``last`` (inclusive); days without a row had no activity."""
        rows = await self.db.fetch("stats_days", DAYS, first, last)
        return {r["day"]: DayCounts(*(r[name] for name in COUNTERS)) for r in rows}
