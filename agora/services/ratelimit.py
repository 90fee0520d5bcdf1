"""Fixed-window counters in Redis, shared by every node."""

from __future__ import annotations

import redis.asyncio as aioredis

from agora.errors import rate_limited
from agora.storage.redis import Keys

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._hit = redis.register_script(_HIT)

    async def hit(self, bucket: str, limit: int, window: int) -> None:
        """Count one event; past ``limit`` within ``window`` seconds, raise 429."""
        count, ttl = await self._hit(keys=[self._keys.rate(bucket)], args=[window])
        if int(count) > limit:
            raise rate_limited(
                int(ttl) if int(ttl) > 0 else window, "too many attempts; try again later"
            )

    async def check(self, bucket: str, limit: int) -> None:
        """Raise 429 if ``bucket`` is already over ``limit``, without counting."""
        key = self._keys.rate(bucket)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = await pipe.execute()
        if count is not None and int(count) >= limit:
            raise rate_limited(
                int(ttl) if int(ttl) > 0 else 60, "too many attempts; try again later"
            )

    async def reset(self, bucket: str) -> None:
        await self._redis.delete(self._keys.rate(bucket))
