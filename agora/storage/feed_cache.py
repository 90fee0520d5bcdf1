"""The feed cache: one capped Redis sorted set of post ids per user (score = the id, which is
time-ordered), filled by fan-out on write, rebuilt from PostgreSQL when missing.

A set is *complete* (authoritative for its newest ``size`` posts) only when it holds the
sentinel member, written by a rebuild. Fan-out adds to a set whether or not it is complete, so a
post committed while a rebuild runs can never fall between the two. Invalidation deletes the set
and bumps a generation counter; a rebuild that read PostgreSQL before an invalidation sees the
new generation and throws its result away. Cached entries are only hints: every page is
re-checked against PostgreSQL with the visibility rule, so a stale id costs a shorter batch, never
a leak.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from agora.storage.db import MAX_ID
from agora.storage.redis import Keys

# Markers live above every post id, so trimming the lowest scores never removes them.
SENTINEL = b"complete"  # written by a rebuild: the set is authoritative for its window
SENTINEL_SCORE = MAX_ID + 1
TRUNCATED = b"truncated"  # older posts exist below the window: read PostgreSQL past it
TRUNCATED_SCORE = MAX_ID + 2

# Keep `cap` posts plus the two markers; mark the set truncated when that dropped anything.
_TRIM = """
local function trim(key, cap)
    if redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 3)) > 0 then
        redis.call('ZADD', key, ARGV[#ARGV - 1], ARGV[#ARGV])
    end
end
"""
# KEYS[1] feed; ARGV: post id, cap, ttl, truncated score, truncated
_ADD = (
    _TRIM
    + """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
trim(KEYS[1], tonumber(ARGV[2]))
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""
)
# KEYS[1] feed, KEYS[2] generation; ARGV: max score (exclusive), count, ttl, sentinel, truncated
# -> {0, generation} when the set is not complete, else {1, truncated?, id, id, ...}
_READ = """
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) then
    return {0, redis.call('GET', KEYS[2]) or '0'}
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
local ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '-inf', 'LIMIT', 0, ARGV[2])
table.insert(ids, 1, redis.call('ZSCORE', KEYS[1], ARGV[5]) and 1 or 0)
table.insert(ids, 1, 1)
return ids
"""
# KEYS[1] feed, KEYS[2] generation; ARGV: generation seen, cap, ttl, sentinel score, sentinel,
# ids..., truncated score, truncated -> 1 when written, 0 when an invalidation raced the rebuild
_FILL = (
    _TRIM
    + """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
for i = 6, #ARGV - 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i]) end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[5])
trim(KEYS[1], tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)


@dataclass(frozen=True, slots=True)
class CachedPage:
    complete: bool  # False: rebuild from PostgreSQL, then fill() with `generation`
    truncated: bool  # older posts exist below the cached window
    ids: list[int]
    generation: bytes


class FeedCache:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, size: int = 800, ttl: int = 24 * 3600
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.size = size
        self.ttl = ttl
        self._add = redis.register_script(_ADD)
        self._read = redis.register_script(_READ)
        self._fill = redis.register_script(_FILL)

    @property
    def enabled(self) -> bool:
        return self.size > 0

    async def add(self, user_ids: Iterable[int], post_id: int, chunk: int = 1000) -> None:
        """Fan a new post out to these users' feeds (one pipeline per ``chunk`` users)."""
        ids = list(user_ids)
        for start in range(0, len(ids), chunk):
            async with self.redis.pipeline(transaction=False) as pipe:
                for uid in ids[start : start + chunk]:
                    await self._add(
                        keys=[self.keys.feed(uid)],
                        args=[post_id, self.size, self.ttl, TRUNCATED_SCORE, TRUNCATED],
                        client=pipe,
                    )
                await pipe.execute()

    async def remove(self, user_ids: Iterable[int], post_id: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.zrem(self.keys.feed(uid), post_id)
            await pipe.execute()

    async def invalidate(self, user_ids: Iterable[int]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.delete(self.keys.feed(uid))
                pipe.incr(self.keys.feed_generation(uid))
                pipe.expire(self.keys.feed_generation(uid), self.ttl * 2)
            await pipe.execute()

    async def read(self, user_id: int, before_id: int, count: int) -> CachedPage:
        """Up to ``count`` ids below ``before_id``, newest first, if the set is complete."""
        reply = await self._read(
            keys=[self.keys.feed(user_id), self.keys.feed_generation(user_id)],
            args=[before_id, count, self.ttl, SENTINEL, TRUNCATED],
        )
        if int(reply[0]) == 0:
            generation = reply[1] if isinstance(reply[1], bytes) else str(reply[1]).encode()
            return CachedPage(False, True, [], generation)
        return CachedPage(True, bool(int(reply[1])), [int(x) for x in reply[2:]], b"")

    async def fill(self, user_id: int, generation: bytes, post_ids: list[int]) -> bool:
        """Write a rebuilt window (newest ``size`` ids) unless an invalidation raced it."""
        args: list[bytes | int] = [
            generation,
            self.size,
            self.ttl,
            SENTINEL_SCORE,
            SENTINEL,
            *post_ids,
            TRUNCATED_SCORE,
            TRUNCATED,
        ]
        written = await self._fill(
            keys=[self.keys.feed(user_id), self.keys.feed_generation(user_id)], args=args
        )
        return bool(written)
