"""Analytics (issue 12, point 6): the rollup consumer and the figures admins read.

- :class:`StatsConsumer` (``name = "stats"``) adds each event to its UTC day's row of
  ``stats.daily`` inside the runner's transaction, which also records the event as handled: a
  redelivered event is not counted twice. Counted: ``user.registered`` (sign-ups),
  ``post.created``, ``comment.created``, ``reaction.set`` without ``previous`` (a new reaction;
  a changed one is not) and ``message.stored``. Deletions do not decrement: a day's figure is
  what was created that day. The day is the one of the event's ``occurred_at`` (the commit's
  time in PostgreSQL), so late handling never moves a count to another day.
- :class:`StatsService` answers ``GET /admin/stats`` and ``agora admin stats``: the rollup rows
  of the range (one index range scan of ``stats.daily``), active users from the HyperLogLogs of
  :mod:`agora.services.activity`, and the sessions online now from the node registry and each
  node's session count in Redis. Nothing reads posts, messages or users.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, date, timedelta
from typing import cast

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.errors import invalid
from agora.events.consumer import AfterCommit
from agora.events.types import (
    CommentCreated,
    Event,
    MessageStored,
    Payload,
    PostCreated,
    ReactionSet,
    UserRegistered,
)
from agora.protocol.stats import DayStats, StatsOut, Totals
from agora.services.activity import RETENTION_DAYS, window
from agora.services.roles import ADMIN_ROLES, require_role
from agora.storage.accounts import AccountStore
from agora.storage.db import Tx
from agora.storage.redis import Keys
from agora.storage.stats import DayCounts, StatsStore

DEFAULT_DAYS = 30
MAX_DAYS = 366
WEEK, MONTH = 7, 30

_COUNTER_OF: dict[type[Payload], str] = {
    UserRegistered: "signups",
    PostCreated: "posts",
    CommentCreated: "comments",
    ReactionSet: "reactions",
    MessageStored: "messages",
}


def tally(events: list[Event]) -> dict[date, DayCounts]:
    """What ``events`` add to each UTC day's counters."""
    counts: dict[date, DayCounts] = {}
    for event in events:
        p = event.payload
        name = _COUNTER_OF.get(type(p))
        if name is None or (isinstance(p, ReactionSet) and p.previous is not None):
            continue
        at = event.occurred_at  # aware (RFC 3339 on the wire); a naive one is taken as UTC
        day = (at.astimezone(UTC) if at.tzinfo else at).date()
        day_counts = counts.setdefault(day, DayCounts())
        setattr(day_counts, name, getattr(day_counts, name) + 1)
    return counts


class StatsConsumer:
    name = "stats"
    handles = frozenset(cls.type for cls in _COUNTER_OF)

    def __init__(self, store: StatsStore) -> None:
        self.store = store

    async def handle(self, events: list[Event], tx: Tx) -> AfterCommit | None:
        await self.store.add(tx, tally(events))
        return None


class StatsService:
    def __init__(
        self,
        store: StatsStore,
        accounts: AccountStore,
        redis: aioredis.Redis,
        keys: Keys,
        clock: Clock,
        node_timeout: float,
        retention_days: int = RETENTION_DAYS,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.node_timeout = node_timeout
        self.retention_days = retention_days

    def today(self) -> date:
        return self.clock.now().date()

    def span(self, first: date | None, last: date | None) -> tuple[date, date]:
        """The range asked for, with defaults (the 30 days ending today); 422 when it is
        reversed or longer than ``MAX_DAYS``."""
        last = last or self.today()
        first = first or last - timedelta(days=DEFAULT_DAYS - 1)
        if first > last:
            raise invalid({"from": "must not be after `to`"}, "the range of days is not valid")
        if (last - first).days + 1 > MAX_DAYS:
            raise invalid(
                {"to": f"the range may span at most {MAX_DAYS} days"},
                "the range of days is not valid",
            )
        return first, last

    async def for_admin(
        self, user_id: int, first: date | None = None, last: date | None = None
    ) -> StatsOut:
        """The figures, for an active admin (403 for anyone else)."""
        await require_role(self.accounts, user_id, ADMIN_ROLES)
        return await self.stats(first, last)

    async def stats(self, first: date | None = None, last: date | None = None) -> StatsOut:
        first, last = self.span(first, last)
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        rows = await self.store.days(first, last)
        oldest_kept = self.today() - timedelta(days=self.retention_days)
        kept = [d for d in days if d >= oldest_kept]
        dau, wau, mau = await self._active(kept, last, oldest_kept)
        sessions, users = await self._online()
        out_days = []
        totals = DayCounts()
        for day in days:
            c = rows.get(day, DayCounts())
            for f in fields(DayCounts):
                setattr(totals, f.name, getattr(totals, f.name) + getattr(c, f.name))
            out_days.append(
                DayStats(
                    day=day,
                    dau=dau.get(day),
                    signups=c.signups,
                    posts=c.posts,
                    comments=c.comments,
                    reactions=c.reactions,
                    messages=c.messages,
                )
            )
        return StatsOut(
            from_=first,
            to=last,
            days=out_days,
            totals=Totals(
                signups=totals.signups,
                posts=totals.posts,
                comments=totals.comments,
                reactions=totals.reactions,
                messages=totals.messages,
            ),
            wau=wau,
            mau=mau,
            online_sessions=sessions,
            online_users=users,
            generated_at=self.clock.now(),
        )

    async def _active(
        self, days: list[date], last: date, oldest_kept: date
    ) -> tuple[dict[date, int], int | None, int | None]:
        """Per-day active users of ``days``, and the weekly and monthly ones ending ``last``
        (None where the window reaches past the retention): one pipeline."""
        week, month = window(last, WEEK), window(last, MONTH)
        async with self.redis.pipeline(transaction=False) as pipe:
            for day in days:
                pipe.pfcount(self.keys.active(day.isoformat()))
            pipe.pfcount(*(self.keys.active(d.isoformat()) for d in week))
            pipe.pfcount(*(self.keys.active(d.isoformat()) for d in month))
            replies = cast(list[int], await pipe.execute())
        dau = dict(zip(days, replies[: len(days)], strict=True))
        wau = replies[-2] if week[0] >= oldest_kept else None
        mau = replies[-1] if month[0] >= oldest_kept else None
        return dau, wau, mau

    async def _online(self) -> tuple[int, int]:
        """Sessions open on the live nodes (each node's own count, written every few seconds)
        and their users (the presence sets of those nodes, ``nodeusers:<life>``)."""
        now_ms = self.clock.time() * 1000
        cutoff = now_ms - self.node_timeout * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(self.keys.nodes, 0, -1, withscores=True)
            pipe.hgetall(self.keys.node_sessions)
            raw_nodes, raw_sessions = await pipe.execute()
        registered = {m.decode(): float(s) for m, s in raw_nodes}
        live = {life for life, beat in registered.items() if beat > 0 and beat >= cutoff}
        counts = {k.decode(): int(v) for k, v in raw_sessions.items()}
        gone = [life for life in counts if life not in registered]
        async with self.redis.pipeline(transaction=False) as pipe:
            for life in sorted(live):
                pipe.scard(self.keys.node_users(life))
            if gone:  # lives buried since they last wrote: their fields go too
                pipe.hdel(self.keys.node_sessions, *gone)
            replies = await pipe.execute() if len(pipe) else []
        users = sum(int(n) for n in replies[: len(live)])
        sessions = sum(n for life, n in counts.items() if life in live)
        return sessions, users
