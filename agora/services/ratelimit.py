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

A node also keeps small **leases**: when a bucket with room for many (``limit`` of 40 or more)
is asked, the script hands the node up to ``limit // 20`` tokens at once (at most 50), and the
node spends them locally, without any I/O, for ``LEASE_SECONDS``; what is left of a lease then is
given back to the bucket with the next request for it. The shared count is therefore never
exceeded; a subject moving between nodes may at worst wait for up to a twentieth of its limit
per other node, until that node's lease lapses. This keeps the check on the hot paths (every
API request, every chat message) a dictionary lookup most of the time.

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

LEASE_SECONDS = 1.0  # a lease's tokens are spent locally this long, then given back
LEASE_SHARE = 20  # a lease holds at most a twentieth of the limit...
LEASE_MAX = 50  # ...and at most this many tokens
SWEEP_EVERY = 10_000  # leases made between sweeps of the lapsed ones (bounded memory)

# KEYS: every bucket of the batch. ARGV[1]: now (ms); then per action: its number of buckets,
# and per bucket: limit, period (ms), the fewest and the most tokens to take (a lease takes
# up to its size but settles for one), tokens given back (a lapsed lease's rest), and write
# (1, or 0 to look without counting).
# Per action the reply holds: allowed (1/0), then for its tightest bucket (the one that refused
# it longest, else the one with the fewest left): its place in the action's hits (from 1), how
# many are left, ms until it is full, ms until the action would be allowed (0 when allowed);
# then for each bucket: the tokens taken, how many are left, ms until it is full.
_TAKE = """
local now = tonumber(ARGV[1])
local out = {}
local k, a = 1, 2
local function store(key, tat)
  if tat > now then
    redis.call('SET', key, tat, 'PX', math.max(1, math.ceil(tat - now)))
  else
    redis.call('DEL', key)
  end
end
while a <= #ARGV do
  local n = tonumber(ARGV[a]); a = a + 1
  local first, ok = k, 1
  local backed, took, taken, lefts, fulls = {}, {}, {}, {}, {}
  local t_index, t_left, t_full, t_wait = 1, -1, 0, 0
  for i = 1, n do
    local limit, period = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local least, most = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local back, write = tonumber(ARGV[a + 4]), ARGV[a + 5] == '1'
    a = a + 6
    local step = period / limit
    local tat = tonumber(redis.call('GET', KEYS[k]) or '0')
    backed[i] = false
    if back > 0 and tat > now then
      tat = math.max(now, tat - back * step)
      backed[i] = tat
    end
    if tat < now then tat = now end
    local room = math.floor((period - (tat - now)) / step + 1e-9)
    local take = math.max(least, math.min(most, room))
    local new = tat + take * step
    local wait = new - period - now
    local left, full
    took[i], taken[i] = false, 0
    if wait > 0 or not write then
      left, full = room, tat - now
    else
      left, full = room - take, new - now
      if take > 0 then took[i], taken[i] = new, take end
    end
    lefts[i], fulls[i] = left, full
    if wait > 0 then ok = 0 else wait = 0 end
    if wait > t_wait or (wait == t_wait and (t_left < 0 or left < t_left)) then
      t_index, t_left, t_full, t_wait = i, left, full, wait
    end
    k = k + 1
  end
  for i = 1, n do
    if ok == 1 and took[i] then
      store(KEYS[first + i - 1], took[i])
    elseif backed[i] then
      store(KEYS[first + i - 1], backed[i])
    end
    if ok == 0 then taken[i] = 0 end
  end
  out[#out + 1] = ok
  out[#out + 1] = t_index
  out[#out + 1] = math.max(0, t_left)
  out[#out + 1] = math.ceil(t_full)
  out[#out + 1] = math.ceil(t_wait)
  for i = 1, n do
    out[#out + 1] = taken[i]
    out[#out + 1] = math.max(0, lefts[i])
    out[#out + 1] = math.ceil(fulls[i])
  end
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


@dataclass(slots=True)
class _Lease:
    """Tokens of one bucket this node took ahead and spends without asking Redis."""

    tokens: int
    until: float  # monotonic time the lease lapses (its rest is then given back)
    left: int  # the bucket's count when the lease was taken, the lease's tokens not included
    reset: float  # epoch seconds the bucket is full again, were the lease spent


def lease_size(rule: Rule) -> int:
    """Tokens a node takes ahead for ``rule`` (1: none, every action asks Redis)."""
    size = min(LEASE_MAX, rule.limit // LEASE_SHARE)
    return size if size >= 2 else 1


class Limiter:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, clock: Clock, enabled: bool = True
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self.enabled = enabled
        self._script = redis.register_script(_TAKE)
        self._prefix = keys.rate("")
        self._pending: list[tuple[list[Hit], asyncio.Future[Verdict]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._leases: dict[str, _Lease] = {}
        self._leased = 0  # leases made since the last sweep
        self.failures = 0  # batches let through because Redis failed (a metric)
        self._warned = -math.inf

    async def take(self, hits: Sequence[Hit]) -> Verdict:
        """Count one action against ``hits`` (all or none); the verdict of its tightest bucket."""
        if self.enabled and self._leases:
            local = self._local(hits)
            if local is not None:
                return local
        return await self.submit(hits)

    def submit(self, hits: Sequence[Hit]) -> asyncio.Future[Verdict]:
        """:meth:`take` as a future (done at once when the node's leases cover the action)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        live = [h for h in hits if h.rule.on] if self.enabled else []
        if not live:
            future.set_result(ALLOWED)
            return future
        local = self._local(live)
        if local is not None:
            future.set_result(local)
            return future
        self._pending.append((live, future))
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
        key = self._key(rule, subject)
        self._leases.pop(key, None)
        try:
            await self._redis.delete(key)
        except (OSError, aioredis.RedisError):
            self._failed()

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    def _key(self, rule: Rule, subject: str) -> str:
        return f"{self._prefix}{rule.name}:{subject}"

    def _local(self, hits: Sequence[Hit]) -> Verdict | None:
        """The verdict when every bucket of the action has a live lease with a token left."""
        leases = []
        now = self._clock.monotonic()
        for hit in hits:
            lease = self._leases.get(self._key(hit.rule, hit.subject))
            if (
                lease is None
                or lease.tokens < 1
                or lease.until < now
                or hit.look
                or hit.cost != 1
                or not hit.rule.on
            ):
                return None
            leases.append(lease)
        tightest, rule = None, hits[0].rule
        for hit, lease in zip(hits, leases, strict=True):
            lease.tokens -= 1
            if tightest is None or lease.left + lease.tokens < tightest.left + tightest.tokens:
                tightest, rule = lease, hit.rule
        assert tightest is not None
        return Verdict(
            True,
            limit=rule.limit,
            remaining=tightest.left + tightest.tokens,
            reset=tightest.reset,
            rule=rule.name,
        )

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
                # A lease the previous batch brought may cover some of these already.
                remote = []
                for hits, future in batch:
                    local = self._local(hits) if self._leases else None
                    if local is None:
                        remote.append((hits, future))
                    elif not future.done():
                        future.set_result(local)
                if not remote:
                    continue
                verdicts = await self._ask(remote)
                for (_, future), verdict in zip(remote, verdicts, strict=True):
                    if not future.done():
                        future.set_result(verdict)
        finally:
            self._flusher = None
            if self._pending:  # cancelled with actions waiting: let them through
                for _, future in self._pending:
                    if not future.done():
                        future.set_result(ALLOWED)
                self._pending = []

    async def _ask(self, batch: list[tuple[list[Hit], asyncio.Future[Verdict]]]) -> list[Verdict]:
        now = self._clock.time()
        keys: list[str] = []
        args: list[int | str] = [math.floor(now * 1000)]
        leasing: set[str] = set()  # one lease per bucket and batch, taken by its first action
        for hits, _ in batch:
            args.append(len(hits))
            for hit in hits:
                key = self._key(hit.rule, hit.subject)
                keys.append(key)
                most, back = hit.cost, 0
                if not hit.look and key not in leasing:
                    leasing.add(key)
                    lease = self._leases.pop(key, None)  # its rest goes back with this request
                    back = lease.tokens if lease is not None else 0
                    if hit.cost == 1:
                        most = lease_size(hit.rule)
                args += [
                    hit.rule.limit,
                    max(1, round(hit.rule.period * 1000)),
                    hit.cost,
                    most,
                    back,
                    "0" if hit.look else "1",
                ]
        try:
            async with asyncio.timeout(TIMEOUT):
                reply = await self._script(keys=keys, args=args)
        except (OSError, aioredis.RedisError, TimeoutError):
            self._failed()
            return [ALLOWED] * len(batch)
        verdicts = []
        at, mono = 0, self._clock.monotonic()
        for hits, _ in batch:
            ok, index, left, full_ms, wait_ms = (int(x) for x in reply[at : at + 5])
            at += 5
            rule = hits[index - 1].rule
            verdict = Verdict(
                allowed=False,
                limit=rule.limit,
                remaining=left,
                reset=now + full_ms / 1000,
                retry_after=wait_ms / 1000,
                rule=rule.name,
            )
            tightest = -1
            for hit in hits:
                taken, left, full_ms = (int(x) for x in reply[at : at + 3])
                at += 3
                if not ok:
                    continue
                spare = 0 if hit.look else taken - hit.cost  # taken ahead: this node's lease
                if spare > 0:
                    self._lease(hit, spare, left, now + full_ms / 1000, mono)
                if tightest < 0 or left + spare < tightest:
                    tightest = left + spare
                    verdict = Verdict(
                        True,
                        limit=hit.rule.limit,
                        remaining=tightest,
                        reset=now + full_ms / 1000,
                        rule=hit.rule.name,
                    )
            verdicts.append(verdict)
        return verdicts

    def _lease(self, hit: Hit, tokens: int, left: int, reset: float, now: float) -> None:
        self._leases[self._key(hit.rule, hit.subject)] = _Lease(
            tokens, now + LEASE_SECONDS, left, reset
        )
        self._leased += 1
        if self._leased >= SWEEP_EVERY:  # lapsed leases of subjects gone quiet: let them go
            self._leased = 0
            old = now - 10 * LEASE_SECONDS
            self._leases = {k: v for k, v in self._leases.items() if v.until > old}

    def _failed(self) -> None:
        self.failures += 1
        now = self._clock.monotonic()
        if now - self._warned > 10:
            self._warned = now
            log.warning("rate limits cannot reach Redis; letting requests through")
