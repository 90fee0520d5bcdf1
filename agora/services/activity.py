"""Who was active when: per-day HyperLogLogs in Redis, fed by a per-node tracker.

Every authenticated request and every WebSocket connect calls :meth:`ActivityTracker.seen`,
which only adds the user id to a local set of the current UTC day (no I/O, O(1)). Every
``interval`` seconds (and at shutdown) the node flushes those sets to Redis in one pipeline:
``PFADD active:<day>`` and an expiry ``retention_days`` after the day ends. The same flush
writes the node's count of open WebSocket sessions (``nodesessions``, one field per node life),
which is how the cluster knows the sessions online now.

Daily active users are ``PFCOUNT active:<day>``; weekly and monthly ones are one ``PFCOUNT``
over 7 or 30 days' keys, which counts the union (a user active on several days counts once).
A HyperLogLog's count has a standard error of 0.81 %, exact for small sets in practice (Redis
keeps a sparse representation below a few hundred elements), and costs at most 12 KB a day.
So a user is counted within ``interval`` seconds of being seen, and days older than
``retention_days`` have no daily-active figure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.storage.redis import Keys
from agora.tasks import cancel_and_wait

log = logging.getLogger(__name__)

DAY = 86_400
RETENTION_DAYS = 40  # the monthly window (30 days) and some slack for late readers
FLUSH_INTERVAL = 5.0
PFADD_CHUNK = 10_000  # ids per PFADD command

# (node life, open WebSocket sessions on it)
SessionGauge = Callable[[], tuple[str, int]]


def day_of(timestamp: float) -> date:
    """The UTC day of a Unix time."""
    return datetime.fromtimestamp(timestamp, tz=UTC).date()


def day_start(day: date) -> int:
    """The Unix time at which the UTC day begins."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


class ActivityTracker:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        clock: Clock,
        *,
        sessions: SessionGauge | None = None,
        interval: float = FLUSH_INTERVAL,
        retention_days: int = RETENTION_DAYS,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.sessions = sessions
        self.interval = interval
        self.retention_days = retention_days
        self._pending: dict[int, set[int]] = {}  # day number (days since the epoch) -> users
        self._day = -1
        self._current: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def seen(self, user_id: int) -> None:
        """Note that ``user_id`` is active now (the hot path: no I/O)."""
        day = int(self.clock.time()) // DAY
        if day != self._day:
            self._day = day
            self._current = self._pending.setdefault(day, set())
        self._current.add(user_id)

    @property
    def pending(self) -> int:
        return sum(len(users) for users in self._pending.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="activity-flush")

    async def stop(self) -> None:
        """Stop the timer, flush what is pending and take this node's session count out."""
        await cancel_and_wait([self._task])
        await self.flush(leaving=True)

    async def _run(self) -> None:
        while True:
            await self.flush()
            await self.clock.sleep(self.interval)

    async def flush(self, *, leaving: bool = False) -> None:
        """Write the pending activity (and this node's session count) in one pipeline. On a
        Redis error what was pending is kept for the next flush."""
        async with self._flushing:
            taken, self._pending, self._day = self._pending, {}, -1
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for number, users in sorted(taken.items()):
                        day = date.fromordinal(date(1970, 1, 1).toordinal() + number)
                        key = self.keys.active(day.isoformat())
                        ids = list(users)
                        for i in range(0, len(ids), PFADD_CHUNK):
                            pipe.pfadd(key, *ids[i : i + PFADD_CHUNK])
                        expires = day_start(day) + (self.retention_days + 1) * DAY
                        pipe.expireat(key, expires)
                    if self.sessions is not None:
                        life, count = self.sessions()
                        if leaving:
                            pipe.hdel(self.keys.node_sessions, life)
                        else:
                            pipe.hset(self.keys.node_sessions, life, count)
                    if len(pipe):
                        await pipe.execute()
            except (OSError, aioredis.RedisError) as exc:
                log.warning("activity: could not flush to Redis (%s); kept for the next try", exc)
                for number, users in taken.items():
                    self._pending.setdefault(number, set()).update(users)
                self._day = -1


def window(last: date, days: int) -> list[date]:
    """The ``days`` days ending with ``last`` (inclusive), oldest first."""
    return [last - timedelta(days=n) for n in range(days - 1, -1, -1)]
