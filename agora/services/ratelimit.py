"""Rate limits: token buckets in Redis, shared by every node, one Lua script per round trip.

A :class:`Rule` says how many actions (``limit``) a subject (an account, an address, an account
from an address) may take per ``period`` seconds. Each bucket is kept as GCRA's "theoretical
arrival time" (one Redis string per subject, expiring when the bucket is full again): a full
bucket allows ``limit`` actions at once, then one every ``period / limit`` seconds. Unlike a fixed
window there is no edge at which twice the limit gets through within a moment.

Every check goes through :meth:`Limiter.take` (or :meth:`Limiter.now`, which answers only when it
can without waiting): the hits of one action (say the account's API bucket and its posting
bucket) pass or fail together, and nothing is counted when one of them is refused. Checks that
wait for Redis are batched, the whole node's into one ``EVALSHA`` while the previous one is in
flight (the way the chat committer shares commits).

Most checks do not wait at all. For a bucket with room for many (a ``limit`` of 40 or more) the
node remembers what Redis last said was left; while that is well above empty (more than a
twentieth of the limit beyond what this node has admitted since) and fewer than a twentieth of
the limit are admitted here and not yet counted in Redis, the node admits the action at once
and counts it in Redis with the next batch (every ``FLUSH_EVERY`` seconds, all counts of a
bucket in one entry). Near the end of a bucket, and for small limits, every check waits for
Redis, so a node never admits past a limit by itself; several nodes spending one bucket at the
same moment may together pass it by at most a twentieth of the limit per other node, once. This
keeps the check on the hot paths (every API request, every chat message) a dictionary lookup.

Time comes from the node's :class:`~agora.clock.Clock` (wall time, so all nodes agree within
their clocks' skew), which lets tests move it instead of sleeping.

When Redis cannot be reached, checks fail open (the action is allowed, and a warning is logged
every 10 seconds): limits protect the service, and a Redis outage should not take every request
down with it. Password hashing stays bounded by its own pool.
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
FLUSH_EVERY = 0.2  # seconds between batches of counts of actions admitted without waiting
SHARE = 20  # a node admits without waiting while more than limit/SHARE are left...
MIN_ALLOWANCE = 2  # ...and only for limits of at least SHARE * MIN_ALLOWANCE
VIEW_TTL = 10.0  # seconds what Redis said about a bucket is trusted for that
SWEEP_EVERY = 2000  # batches between sweeps of views of buckets gone quiet

# KEYS: every bucket of the batch. ARGV[1]: now (ms); then per action: its number of buckets,
# and per bucket one argument "<limit> <period ms> <cost> <force><write>" (one string: redis-py
# packs each argument apart, which costs the node more than Lua's parsing costs Redis): force
# 1 counts the cost whatever is left (actions the node has admitted already), write 0 looks
# without counting.
# Per action the reply holds: allowed (1/0), then for its tightest bucket (the one that refused
# it longest, else the one with the fewest left): its place in the action's hits (from 1), how
# many are left, ms until it is full, ms until the action would be allowed (0 when allowed);
# then for each bucket: how many are left and ms until it is full.
_TAKE = """
local now = tonumber(ARGV[1])
local out = {}
local k, a = 1, 2
while a <= #ARGV do
  local n = tonumber(ARGV[a]); a = a + 1
  local first, ok = k, 1
  local new, lefts, fulls = {}, {}, {}
  local t_index, t_left, t_full, t_wait = 1, -1, 0, 0
  for i = 1, n do
    local l, p, c, f, w = string.match(ARGV[a], '(%d+) (%d+) (%d+) (%d)(%d)')
    local limit, period, cost = tonumber(l), tonumber(p), tonumber(c)
    local force, write = f == '1', w == '1'
    a = a + 1
    local step = period / limit
    local tat = tonumber(redis.call('GET', KEYS[k]) or '0')
    if tat < now then tat = now end
    local room = math.floor((period - (tat - now)) / step + 1e-9)
    local after = tat + cost * step
    local wait = after - period - now
    new[i] = false
    if force then
      after = math.min(after, now + 2 * period)
      new[i], wait = after, 0
      lefts[i], fulls[i] = math.max(0, room - cost), after - now
    elseif wait > 0 or not write then
      lefts[i], fulls[i] = room, tat - now
    else
      lefts[i], fulls[i] = room - cost, after - now
      if cost > 0 then new[i] = after end
    end
    if wait > 0 then ok = 0 else wait = 0 end
    if wait > t_wait or (wait == t_wait and (t_left < 0 or lefts[i] < t_left)) then
      t_index, t_left, t_full, t_wait = i, lefts[i], fulls[i], wait
    end
    k = k + 1
  end
  for i = 1, n do
    if ok == 1 and new[i] then
      redis.call('SET', KEYS[first + i - 1], new[i], 'PX', math.max(1, math.ceil(new[i] - now)))
    end
  end
  out[#out + 1] = ok
  out[#out + 1] = t_index
  out[#out + 1] = math.max(0, t_left)
  out[#out + 1] = math.ceil(t_full)
  out[#out + 1] = math.ceil(t_wait)
  for i = 1, n do
    out[#out + 1] = math.max(0, lefts[i])
    out[#out + 1] = math.ceil(fulls[i])
  end
end
return out
"""


@dataclass(slots=True)  # not frozen: made on every request, and frozen __init__ costs
class Hit:
    """One bucket an action counts against: ``rule`` for ``subject`` (a user id, an address,
    or both). ``look`` checks that one more would be allowed without counting it."""

    rule: Rule
    subject: str
    cost: int = 1
    look: bool = False


@dataclass(slots=True)
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


def allowance(rule: Rule) -> int:
    """How far from empty a bucket must be for this node to admit without waiting, and how many
    it may admit so before Redis has counted them (0: every check waits for Redis)."""
    share = rule.limit // SHARE
    return share if share >= MIN_ALLOWANCE else 0


@dataclass(slots=True)
class _View:
    """What this node knows of one bucket."""

    key: str
    rule: Rule
    left: int  # what Redis said was left, at its last answer
    reset: float  # epoch seconds the bucket is full again, as of that answer
    seen: float  # monotonic time of that answer
    unsent: int = 0  # admitted here, not yet sent to Redis
    sent: int = 0  # sent, Redis's answer not back yet


class Limiter:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, clock: Clock, enabled: bool = True
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.enabled = enabled
        self._script = redis.register_script(_TAKE)
        self._prefix = keys.rate("")
        self._pending: list[tuple[Sequence[Hit], asyncio.Future[Verdict]]] = []
        self._views: dict[str, _View] = {}
        self._unsent: set[str] = set()  # views with counts Redis has not had yet
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._batches = 0
        self.failures = 0  # batches let through because Redis failed
        self._warned = -math.inf

    # -- checks -------------------------------------------------------------------------------

    def now(self, hits: Sequence[Hit]) -> Verdict | None:
        """The verdict when it can be given without waiting (limits off, no bucket applies, or
        every bucket is well above empty as this node knows it); None: :meth:`take` it."""
        if not self.enabled:
            return ALLOWED
        views: list[_View] = []
        at = self._clock.monotonic()
        for hit in hits:
            rule = hit.rule
            if not rule.on:
                continue
            room = rule.limit // SHARE
            if room < MIN_ALLOWANCE or hit.look or hit.cost != 1:
                return None
            view = self._views.get(f"{self._prefix}{rule.name}:{hit.subject}")
            if view is None or at - view.seen > VIEW_TTL:
                return None
            pending = view.unsent + view.sent
            if pending >= room or view.left - pending <= room:
                return None
            views.append(view)
        if not views:
            return ALLOWED
        tightest, least = views[0], math.inf
        for view in views:
            view.unsent += 1
            self._unsent.add(view.key)
            left = view.left - view.unsent - view.sent
            if left < least:
                tightest, least = view, left
        if self._flusher is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._start)
        return Verdict(
            True,
            limit=tightest.rule.limit,
            remaining=tightest.left - tightest.unsent - tightest.sent,
            reset=tightest.reset,
            rule=tightest.rule.name,
        )

    async def take(self, hits: Sequence[Hit]) -> Verdict:
        """Count one action against ``hits`` (all or none); the verdict of its tightest bucket."""
        verdict = self.now(hits)
        if verdict is not None:
            return verdict
        return await self._wait(hits)

    def submit(self, hits: Sequence[Hit]) -> asyncio.Future[Verdict]:
        """:meth:`take` as a future (done at once when no wait is needed)."""
        verdict = self.now(hits)
        if verdict is not None:
            future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
            future.set_result(verdict)
            return future
        return self._wait(hits)

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
        key = f"{self._prefix}{rule.name}:{subject}"
        self._views.pop(key, None)
        self._unsent.discard(key)
        try:
            await self._redis.delete(key)
        except (OSError, aioredis.RedisError):
            self._failed()

    async def close(self) -> None:
        """Send the counts not sent yet (best effort) and stop."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unsent and self._flusher is None:
            self._start()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    # -- batches ---------------------------------------------------------------------------------

    def _wait(self, hits: Sequence[Hit]) -> asyncio.Future[Verdict]:
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._pending.append(([h for h in hits if h.rule.on], future))
        if self._flusher is None:
            self._start()
        return future

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending or self._unsent:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                await self._ask(batch)
                if not self._pending:
                    break  # counts that came meanwhile wait for the timer, to share a batch
        finally:
            self._flusher = None
            for _, future in self._pending:  # only when cancelled: let them through
                if not future.done():
                    future.set_result(ALLOWED)
            self._pending = []
            if self._unsent and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._start)

    async def _ask(self, batch: list[tuple[Sequence[Hit], asyncio.Future[Verdict]]]) -> None:
        now = self._clock.time()
        keys: list[str] = []
        args: list[int | str] = [math.floor(now * 1000)]
        counted: list[tuple[str, _View, int]] = []
        for key in self._unsent:  # first, what this node admitted already
            view = self._views.get(key)
            if view is None or not view.unsent:
                continue
            count, view.unsent = view.unsent, 0
            view.sent += count
            counted.append((key, view, count))
            keys.append(key)
            args += [1, f"{view.rule.limit} {_ms(view.rule.period)} {count} 11"]
        self._unsent.clear()
        for hits, _ in batch:
            args.append(len(hits))
            for hit in hits:
                keys.append(f"{self._prefix}{hit.rule.name}:{hit.subject}")
                args.append(
                    f"{hit.rule.limit} {_ms(hit.rule.period)} {hit.cost} 0{0 if hit.look else 1}"
                )
        try:
            async with asyncio.timeout(TIMEOUT):
                reply = await self._script(keys=keys, args=args) if keys else []
        except (OSError, aioredis.RedisError, TimeoutError):
            self._failed()
            for _, view, count in counted:
                view.sent -= count  # lost: they were admitted anyway
            for _, future in batch:
                if not future.done():
                    future.set_result(ALLOWED)
            return
        at, seen = 0, self._clock.monotonic()
        for _, view, count in counted:
            view.sent -= count
            view.left, view.reset, view.seen = (
                int(reply[at + 5]),
                now + int(reply[at + 6]) / 1000,
                seen,
            )
            at += 7
        for hits, future in batch:
            ok, index, left, full_ms, wait_ms = (int(x) for x in reply[at : at + 5])
            at += 5
            tightest = hits[index - 1].rule
            for hit in hits:
                hit_left, hit_full = int(reply[at]), int(reply[at + 1])
                at += 2
                if ok and not hit.look and allowance(hit.rule):  # refused: nothing counted
                    self._learn(hit, hit_left, now + hit_full / 1000, seen)
            if not future.done():
                future.set_result(
                    Verdict(
                        allowed=bool(ok),
                        limit=tightest.limit,
                        remaining=left,
                        reset=now + full_ms / 1000,
                        retry_after=wait_ms / 1000,
                        rule=tightest.name,
                    )
                )
        self._batches += 1
        if self._batches % SWEEP_EVERY == 0:  # buckets gone quiet: forget them
            self._views = {
                k: v
                for k, v in self._views.items()
                if v.unsent or v.sent or seen - v.seen < VIEW_TTL
            }

    def _learn(self, hit: Hit, left: int, reset: float, seen: float) -> None:
        key = f"{self._prefix}{hit.rule.name}:{hit.subject}"
        view = self._views.get(key)
        if view is None:
            self._views[key] = _View(key, hit.rule, left, reset, seen)
        else:
            view.left, view.reset, view.seen = left, reset, seen

    def _failed(self) -> None:
        self.failures += 1
        now = self._clock.monotonic()
        if now - self._warned > 10:
            self._warned = now
            log.warning("rate limits cannot reach Redis; letting requests through")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
