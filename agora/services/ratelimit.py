"""Rate limits: token buckets in Redis, shared by every node, one Lua script per round trip.

A :class:`Rule` says how many actions (``limit``) a subject (an account, an address, an account
from an address) may take per ``period`` seconds. Each bucket is kept as GCRA's "theoretical
arrival time" (one Redis string per subject, expiring when the bucket is full again): a full
bucket allows ``limit`` actions at once, then one every ``period / limit`` seconds. Unlike a fixed
window there is no edge at which twice the limit gets through within a moment.

Every check goes through :meth:`Limiter.take`: the hits of one action (say the account's API
bucket and its posting bucket) pass or fail together, and nothing is counted when one of them is
refused. Concurrent checks of the whole node are batched into one ``EVALSHA`` while the previous
one is in flight (the way the chat committer shares commits), so the limiter costs the hot paths
one Redis round trip per batch rather than one per request.

Time comes from the node's :class:`~agora.clock.Clock` (wall time, so all nodes agree within
their clocks' skew), which lets tests move it instead of sleeping.

When Redis cannot be reached, checks fail open (the action is allowed, a warning is logged, and
``agora_ratelimit_failures_total`` counts it): limits protect the service, and a Redis outage
should not take every request down with it. Password hashing stays bounded by its own pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.config import Rule
from agora.errors import AppError, ErrorCode
from agora.storage.redis import Keys

log = logging.getLogger(__name__)

BATCH = 512  # actions per EVALSHA
TIMEOUT = 0.5  # seconds a batch may take before its actions are let through

# KEYS: every bucket of the batch. ARGV[1]: now (ms); then per action: its number of buckets,
# and per bucket: limit, period (ms), cost, write (1, or 0 to look without counting).
# Per action the reply holds: allowed (1/0), then for its tightest bucket (the one that refused
# it longest, else the one with the fewest left): its place in the action's hits (from 1), how
# many are left, ms until it is full, ms until the action would be allowed (0 when allowed).
_TAKE = """
local now = tonumber(ARGV[1])
local out = {}
local k, a = 1, 2
while a <= #ARGV do
  local n = tonumber(ARGV[a]); a = a + 1
  local ok, writes = 1, {}
  local t_index, t_left, t_full, t_wait = 1, -1, 0, 0
  for i = 1, n do
    local limit, period = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local cost, write = tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
    a = a + 4
    local step = period / limit
    local tat = tonumber(redis.call('GET', KEYS[k]) or '0')
    if tat < now then tat = now end
    local new = tat + cost * step
    local wait = new - period - now
    local left, full
    if wait > 0 or not write then
      left = math.floor((period - (tat - now)) / step)
      full = tat - now
    else
      left = math.floor((period - (new - now)) / step)
      full = new - now
      if cost > 0 then writes[#writes + 1] = {KEYS[k], new, math.ceil(new - now)} end
    end
    if wait > 0 then ok = 0 else wait = 0 end
    if wait > t_wait or (wait == t_wait and (t_left < 0 or left < t_left)) then
      t_index, t_left, t_full, t_wait = i, left, full, wait
    end
    k = k + 1
  end
  if ok == 1 then
    for _, w in ipairs(writes) do redis.call('SET', w[1], w[2], 'PX', math.max(1, w[3])) end
  end
  out[#out + 1] = ok
  out[#out + 1] = t_index
  out[#out + 1] = math.max(0, t_left)
  out[#out + 1] = math.ceil(t_full)
  out[#out + 1] = math.ceil(t_wait)
end
return out
"""


@dataclass(frozen=True, slots=True)
class Hit:
    """One bucket an action counts against: ``rule`` for ``subject`` (a user id, an address,
    or both). ``look`` checks that one more would be allowed without counting it."""

    rule: Rule
    subject: str
    cost: int = 1
    look: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer for one action: allowed or not, and the tightest of its buckets."""

    allowed: bool
    limit: int = 0
    remaining: int = 0
    reset: float = 0.0  # epoch seconds when that bucket is full again
    retry_after: float = 0.0  # seconds until the action would be allowed (0 when allowed)
    rule: str = ""

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` (GitHub's: ``Reset`` in epoch seconds), and ``Retry-After`` when
        refused."""
        if not self.limit:
            return {}
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out

    def error(self) -> AppError:
        """429 ``rate_limited`` with ``Retry-After`` and the ``X-RateLimit-*`` headers."""
        seconds = max(1, math.ceil(self.retry_after))
        what = self.rule.replace("_", " ")
        return AppError(
            ErrorCode.RATE_LIMITED,
            f"too many requests ({what}); try again in {seconds} s",
            headers=self.headers(),
        )


ALLOWED = Verdict(True)  # no bucket applies, or Redis could not be asked


class Limiter:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, clock: Clock, enabled: bool = True
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self.enabled = enabled
        self._script = redis.register_script(_TAKE)
        self._pending: list[tuple[Sequence[Hit], asyncio.Future[Verdict]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.failures = 0  # batches let through because Redis failed (a metric)
        self._warned = -math.inf

    async def take(self, hits: Sequence[Hit]) -> Verdict:
        """Count one action against ``hits`` (all or none); the verdict of its tightest bucket."""
        return await self.submit(hits)

    def submit(self, hits: Sequence[Hit]) -> asyncio.Future[Verdict]:
        """:meth:`take` as a future: futures submitted in order are resolved in order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        hits = [h for h in hits if h.rule.on] if self.enabled else []
        if not hits:
            future.set_result(ALLOWED)
            return future
        self._pending.append((hits, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return future

    async def check(self, hits: Sequence[Hit]) -> Verdict:
        """:meth:`take`, raising 429 when refused."""
        verdict = await self.take(hits)
        if not verdict.allowed:
            raise verdict.error()
        return verdict

    async def clear(self, rule: Rule, subject: str) -> None:
        """Empty one bucket (a successful login clears its failures)."""
        if not (self.enabled and rule.on):
            return
        try:
            await self._redis.delete(self._key(rule, subject))
        except (OSError, aioredis.RedisError):
            self._failed()

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    def _key(self, rule: Rule, subject: str) -> str:
        return self._keys.rate(f"{rule.name}:{subject}")

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                verdicts = await self._ask(batch)
                for (_, future), verdict in zip(batch, verdicts, strict=True):
                    if not future.done():
                        future.set_result(verdict)
        finally:
            self._flusher = None
            if self._pending:  # cancelled with actions waiting: let them through
                for _, future in self._pending:
                    if not future.done():
                        future.set_result(ALLOWED)
                self._pending = []

    async def _ask(
        self, batch: list[tuple[Sequence[Hit], asyncio.Future[Verdict]]]
    ) -> list[Verdict]:
        now = self._clock.time()
        keys: list[str] = []
        args: list[int | str] = [math.floor(now * 1000)]
        for hits, _ in batch:
            args.append(len(hits))
            for hit in hits:
                keys.append(self._key(hit.rule, hit.subject))
                args += [
                    hit.rule.limit,
                    max(1, round(hit.rule.period * 1000)),
                    hit.cost,
                    "0" if hit.look else "1",
                ]
        try:
            async with asyncio.timeout(TIMEOUT):
                reply = await self._script(keys=keys, args=args)
        except (OSError, aioredis.RedisError, TimeoutError):
            self._failed()
            return [ALLOWED] * len(batch)
        verdicts = []
        for i, (hits, _) in enumerate(batch):
            ok, index, left, full_ms, wait_ms = (int(x) for x in reply[5 * i : 5 * i + 5])
            rule = hits[index - 1].rule
            verdicts.append(
                Verdict(
                    allowed=bool(ok),
                    limit=rule.limit,
                    remaining=left,
                    reset=now + full_ms / 1000,
                    retry_after=wait_ms / 1000,
                    rule=rule.name,
                )
            )
        return verdicts

    def _failed(self) -> None:
        self.failures += 1
        now = self._clock.monotonic()
        if now - self._warned > 10:
            self._warned = now
            log.warning("rate limits cannot reach Redis; letting requests through")
