"""The node registry: node lives, heartbeats in a Redis sorted set, the live set, rendezvous.

A *life* is one run of a node: its name (``AGORA_NODE_ID``) and an incarnation drawn at random
when it starts, written ``name~incarnation``. The life is what the cluster knows (the member of
``nodes``, the field of ``where:{user}``, ``nodeusers:{life}``, ``inbox:{life}``), so a node
restarted under the same name never inherits, nor is confused with, what its previous life left.

Every ``heartbeat`` seconds a node writes its time into ``nodes`` and reads the others' times. A
life silent for longer than ``timeout`` is dead, but only a node that has itself been in touch
with Redis for a whole ``timeout`` (beats no further apart than ``max_gap``) may say so: after a
Redis outage or an event-loop stall everybody's last beat is old, and the node that noticed first
must not bury the others. Until it may judge, a node keeps whom it believed live.

The janitor (the owner of the key ``"janitor"``) buries dead lives: a script moves a life from
``nodes`` to ``graves`` only if its beat is still older than the cutoff (a life that beat in the
meantime stays), then its presence and inbox are cleared; the grave stays for a ``timeout`` so the
clearing is retried if it failed and repeated once nobody can still be posting to the old inbox.
A node that finds its own life gone (it was buried while it could not reach Redis) takes a new
incarnation, registers again and tells its ``on_reborn`` listeners, which restore its presence
and inbox under the new life; the janitor's clearing of the old life cannot touch the new one.
One that comes back in touch still registered tells its ``on_regained`` listeners, which put
back what may have expired meanwhile. A node leaving sets its beat to 0 and is buried at once;
a node starting buries its own name's previous lives at once: their sessions died with them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.storage.redis import Keys
from agora.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ChangeListener = Callable[[frozenset[str], frozenset[str]], Awaitable[None]]
DeadListener = Callable[[str], Awaitable[None]]
RebornListener = Callable[[str, str], Awaitable[None]]  # (old life, new life)
RegainedListener = Callable[[], Awaitable[None]]

LIFE_SEPARATOR = "~"  # not allowed in AGORA_NODE_ID

# KEYS: nodes, graves; ARGV: life, cutoff ms, now ms, force -> 1 when buried now. The check and
# the removal are one step, so a life that beat again after the janitor read its score stays.
_BURY = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
if ARGV[4] ~= '1' and tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""


def new_life(name: str) -> str:
    """A fresh life id for a node called ``name``."""
    return f"{name}{LIFE_SEPARATOR}{secrets.token_hex(4)}"


def name_of(life: str) -> str:
    """The node name of a life id (a bare name is its own name)."""
    return life.partition(LIFE_SEPARATOR)[0]


def _weight(name: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}|{key}".encode(), digest_size=8).digest(), "big")


def rendezvous(nodes: Iterable[str], key: str) -> str:
    """The node with the highest weight for ``key`` (highest random weight hashing).

    Weights hash the node's name, not its life, so a restarted or reborn node gets back the same
    keys; two lives of one name (for the moment before the old one is buried) are told apart by
    their ids, so every node picks the same one."""
    return max(nodes, key=lambda node: (_weight(name_of(node), key), node))


class NodeRegistry:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        name: str,
        clock: Clock,
        heartbeat: float = 2.0,
        timeout: float = 10.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.node_id = new_life(name)  # this life; a new one if this node is declared dead
        self.clock = clock
        self.heartbeat = heartbeat
        self.timeout = timeout
        # Beats further apart than this break contact: an outage that long could have kept the
        # others from beating, so their old beats say nothing about them.
        self.max_gap = max(heartbeat, min(2 * heartbeat, (timeout - heartbeat) / 2))
        self.live: frozenset[str] = frozenset({self.node_id})
        self.dead: frozenset[str] = frozenset()  # not live, or buried and not yet forgotten
        self.beats = 0  # heartbeat-loop iterations done, successful or not (for tests, metrics)
        self._contact_since: float | None = None  # monotonic start of unbroken contact
        self._last_contact: float | None = None  # monotonic start of the last successful beat
        self._registered = False
        self._buried_previous = False
        self._reborn_from: str | None = None  # a life replaced, its listeners not yet told
        self._stopped = False
        self._bury_script = redis.register_script(_BURY)
        self._on_change: list[ChangeListener] = []
        self._on_dead: list[DeadListener] = []
        self._on_reborn: list[RebornListener] = []
        self._on_regained: list[RegainedListener] = []
        self._task: asyncio.Task[None] | None = None
        self._beating = asyncio.Lock()  # the loop and refresh() never beat at once

    def owner(self, key: str) -> str:
        return rendezvous(self.live, key)

    def owns(self, key: str) -> bool:
        return self.owner(key) == self.node_id

    @property
    def judging(self) -> bool:
        """Whether this node has been in touch with Redis long enough to call others dead."""
        since = self._contact_since
        return since is not None and self.clock.monotonic() - since >= self.timeout

    def on_change(self, listener: ChangeListener) -> None:
        self._on_change.append(listener)

    def on_dead(self, listener: DeadListener) -> None:
        """``listener(life)`` clears what a buried life left; it may run more than once."""
        self._on_dead.append(listener)

    def on_reborn(self, listener: RebornListener) -> None:
        """``listener(old, new)``: this node was declared dead and now lives on as ``new``."""
        self._on_reborn.append(listener)

    def on_regained(self, listener: RegainedListener) -> None:
        """``listener()``: this node reached Redis again after losing touch (still the same
        life); what it wrote with an expiry may have expired meanwhile."""
        self._on_regained.append(listener)

    async def start(self) -> None:
        log.info("node %s starts as life %s", self.name, self.node_id)
        await self._beat()
        self._task = asyncio.create_task(self._loop(), name="node-heartbeat")

    async def stop(self) -> None:
        """Leave at once: score 0 marks this life dead, so the janitor clears up after it now
        rather than after the timeout."""
        self._stopped = True
        await cancel_and_wait([self._task])
        try:
            await self.redis.zadd(self.keys.nodes, {self.node_id: 0}, xx=True)
        except (OSError, aioredis.RedisError):
            log.warning("could not deregister node %s", self.node_id)

    async def refresh(self) -> None:
        """Beat now (another node announced itself or its leaving)."""
        try:
            await self._beat()
        except Exception:
            log.warning("node refresh failed", exc_info=True)

    async def _loop(self) -> None:
        while True:
            await self.clock.sleep(self.heartbeat)
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("node heartbeat failed", exc_info=True)
            finally:
                self.beats += 1

    async def _beat(self) -> None:
        async with self._beating:  # listeners and the janitor's burial run once per change
            if not self._stopped:
                await self._beat_once()

    async def _beat_once(self) -> None:
        started = self.clock.monotonic()
        now_ms = int(self.clock.time() * 1000)
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            # Once registered, only refresh: a life the janitor removed must not come back.
            pipe.zadd(k.nodes, {self.node_id: now_ms}, xx=self._registered)
            pipe.zrange(k.nodes, 0, -1, withscores=True)
            pipe.zrange(k.graves, 0, -1, withscores=True)
            _, raw_members, raw_graves = await pipe.execute()
        regained = self._touched(started)
        members = {m.decode(): float(score) for m, score in raw_members}
        graves = {m.decode(): float(score) for m, score in raw_graves}
        if self.node_id not in members:
            await self._reregister(now_ms)  # we were declared dead
            members[self.node_id] = now_ms
        self._registered = True
        buried_now: set[str] = set()
        if not self._buried_previous:
            for life in [m for m in members if name_of(m) == self.name and m != self.node_id]:
                # A previous life of this node (it crashed or was killed): its sessions are gone.
                await self._bury(life, now_ms, force=True)
                members.pop(life)
                buried_now.add(life)
            self._buried_previous = True

        judging = self.judging
        cutoff = now_ms - int(self.timeout * 1000)
        live = {m for m, score in members.items() if score >= cutoff} | {self.node_id}
        if not judging:  # whom we believed live stays live until we can tell, or it left
            live |= {m for m in self.live if members.get(m, 0) > 0}
        self.dead = frozenset((members.keys() - live) | graves.keys() | buried_now)
        if live != self.live:
            old, self.live = self.live, frozenset(live)
            log.info("cluster nodes: %s", ", ".join(sorted(live)))
            for listener in self._on_change:
                try:
                    await listener(old, self.live)
                except Exception:
                    log.exception("node change listener failed")
        if self._reborn_from is not None:
            old_life, self._reborn_from = self._reborn_from, None
            for reborn in self._on_reborn:
                try:
                    await reborn(old_life, self.node_id)
                except Exception:
                    log.exception("node reborn listener failed")
        elif regained:
            for back in self._on_regained:
                try:
                    await back()
                except Exception:
                    log.exception("node regained listener failed")
        if not self.owns("janitor"):
            return
        for life, score in members.items():
            # Leavers (score 0) asked to be buried; anyone else only when we can judge.
            if life not in live and (judging or score <= 0):
                await self._bury(life, cutoff if judging else 0)
        for life, buried in graves.items():  # earlier burials: finish or repeat the clearing
            await self._clear(life, forget=buried < cutoff)

    def _touched(self, started: float) -> bool:
        """A beat that started at ``started`` (monotonic) reached Redis; True when that ends a
        gap (this node was out of touch, or its event loop stalled)."""
        last = self._last_contact
        self._last_contact = started
        if last is not None and self.clock.monotonic() - last <= self.max_gap:
            return False
        self._contact_since = started
        if last is None:
            return False  # the first beat
        log.warning(
            "node %s was out of touch with Redis for %.1f s; it judges nobody for %.0f s",
            self.node_id,
            self.clock.monotonic() - last,
            self.timeout,
        )
        return True

    async def _reregister(self, now_ms: int) -> None:
        old = self.node_id
        self.node_id = new_life(self.name)
        if self._reborn_from is None:
            self._reborn_from = old
        self._registered = False  # if the next line fails, the next beat registers
        log.warning(
            "node life %s was declared dead (out of touch with Redis); it lives on as %s",
            old,
            self.node_id,
        )
        await self.redis.zadd(self.keys.nodes, {self.node_id: now_ms})

    async def _bury(self, life: str, cutoff_ms: int, *, force: bool = False) -> bool:
        """Move ``life`` to the graves if it is still dead, then clear what it left."""
        now_ms = int(self.clock.time() * 1000)
        buried = await self._bury_script(
            keys=[self.keys.nodes, self.keys.graves],
            args=[life, cutoff_ms, now_ms, "1" if force else "0"],
        )
        if not int(buried):
            return False
        log.warning("node %s is gone; clearing what it left", life)
        await self._clear(life, forget=False)
        return True

    async def _clear(self, life: str, *, forget: bool) -> None:
        for listener in self._on_dead:
            try:
                await listener(life)
            except Exception:
                log.exception("dead node listener failed")
                return  # the grave stays: the janitor tries again on its next beat
        if forget:  # buried a timeout ago: nobody posts to its inbox any more
            await self.redis.zrem(self.keys.graves, life)
