"""Presence: which nodes hold each user's sessions, and online/offline transitions.

``where:{user}`` maps node life -> session count; readers ignore lives that are not live, so a
dead node's entries never route anything even before the janitor removes them. A user is online
while any node life registered in ``nodes`` holds a session: whether a life is dead is the
janitor's judgement (made only by a node that could itself reach Redis all along), never the
guess of a node that just came back from an outage. Friends hear of transitions only:
``online:{user}`` records what was announced, so "online" is said once however many sessions
open, and "offline" is said only when, ``debounce`` seconds after the last session closed, none
has come back (a reconnect inside that window shows no blip). A node declared dead that comes
back under a new life places its sessions again (:meth:`Presence.reborn`), so its users stay
online, or are announced online again if the cut outlasted the timeout and the debounce.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal

import redis.asyncio as aioredis

from agora.clock import Clock, Timer
from agora.cluster.nodes import NodeRegistry
from agora.storage.redis import Keys
from agora.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Status = Literal["online", "offline"]
Announce = Callable[[int, Status], Awaitable[None]]

# KEYS: where, node users, online; ARGV: node, user, ttl -> 1 when the user just came online
_CAME_ONLINE = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[3]) then return 1 end
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 0
"""
# KEYS: where, online, nodes -> 1 when the user just went offline. A node life counts while it
# is registered and has not left: only the janitor's burial (or its own leaving) ends it, so an
# offline check made right after an outage does not take silent-but-alive nodes for dead.
_WENT_OFFLINE = """
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
    local beat = redis.call('ZSCORE', KEYS[3], node)
    if beat and tonumber(beat) > 0 then return 0 end
end
if redis.call('DEL', KEYS[2]) == 1 then return 1 end
return 0
"""


class Presence:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        registry: NodeRegistry,
        announce: Announce,
        debounce: float = 5.0,
        ttl: int = 120,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.registry = registry
        self.clock = clock or registry.clock
        self.announce = announce
        self.debounce = debounce
        self.ttl = ttl
        self.local: dict[int, int] = {}  # user -> sessions on this node
        self.leaving = False  # set by leave(): offline checks are left to the janitor
        self._stale: set[int] = set()  # gone from here, but Redis could not be told yet
        self._came_online = redis.register_script(_CAME_ONLINE)
        self._went_offline = redis.register_script(_WENT_OFFLINE)
        self._timers: set[Timer] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._placer: asyncio.Task[None] | None = None  # places every session once Redis is back
        self._lookup: tuple[set[int], asyncio.Future[dict[int, set[str]]]] | None = None
        registry.on_regained(self.regained)

    @property
    def node_id(self) -> str:
        """This node's current life (it changes when the node is reborn)."""
        return self.registry.node_id

    async def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_loop(), name="presence-refresh")

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        await cancel_and_wait([self._refresher, self._placer, *self._tasks])

    async def connected(self, user_id: int) -> None:
        count = self.local.get(user_id, 0) + 1
        self.local[user_id] = count
        self._stale.discard(user_id)
        if count > 1:
            return
        k = self.keys
        try:
            became = await self._came_online(
                keys=[k.where(user_id), k.node_users(self.node_id), k.online(user_id)],
                args=[self.node_id, user_id, self.ttl],
            )
        except (OSError, aioredis.RedisError):
            self._place_soon()  # the session is here: say so as soon as Redis listens
            raise
        if int(became):  # told in the background: the session's `ready` need not wait for it
            self._spawn(self.announce(user_id, "online"))

    async def idle(self) -> None:
        """Wait until no offline check, announcement or lookup is under way (for tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def disconnected(self, user_id: int) -> None:
        count = self.local.get(user_id, 0) - 1
        if count > 0:
            self.local[user_id] = count
            return
        self.local.pop(user_id, None)
        if self.leaving:
            return
        try:
            await self._unplace(user_id)
        except (OSError, aioredis.RedisError):
            log.warning("could not clear presence of user %d; will retry", user_id)
            self._stale.add(user_id)
        self.check_later(user_id)

    async def _unplace(self, user_id: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.where(user_id), self.node_id)
            pipe.srem(self.keys.node_users(self.node_id), user_id)
            await pipe.execute()

    def leave(self) -> None:
        """The node is shutting down: sessions that close from now on leave their entries to
        the janitor (a live node, told at once that this one left), which clears this node's
        ``where`` entries from ``nodeusers:{node}`` and runs their offline checks after the
        debounce, when this node is gone. Without it, friends on other nodes would never hear
        "offline" for users who do not reconnect elsewhere; and a node closing 10,000 sessions
        does not make 10,000 Redis round trips on its way out."""
        self.leaving = True

    def check_later(self, user_id: int) -> None:
        def fire() -> None:
            self._timers.discard(timer)
            self._spawn(self._check_offline(user_id))

        timer = self.clock.call_later(self.debounce, fire)
        self._timers.add(timer)

    async def _check_offline(self, user_id: int) -> None:
        if user_id in self.local:
            return
        k = self.keys
        try:
            if user_id in self._stale:
                await self._unplace(user_id)
                self._stale.discard(user_id)
            went = await self._went_offline(keys=[k.where(user_id), k.online(user_id), k.nodes])
        except (OSError, aioredis.RedisError):
            log.warning("offline check of user %d failed; trying again later", user_id)
            self.check_later(user_id)
            return
        if int(went):
            await self.announce(user_id, "offline")

    async def nodes_of(self, user_ids: Iterable[int]) -> dict[int, set[str]]:
        """Nodes holding sessions of each user (users with none are left out).

        Lookups asked for in the same turn of the event loop share one Redis round trip, so a
        burst of deliveries costs one pipeline, not one connection each. Nodes known dead are
        left out; a node that joined a moment ago is not (it may not be in our live set yet).
        """
        users = set(user_ids)
        if not users:
            return {}
        if self._lookup is None:
            future: asyncio.Future[dict[int, set[str]]] = asyncio.get_running_loop().create_future()
            self._lookup = (set(), future)
            asyncio.get_running_loop().call_soon(self._start_lookup)
        wanted, future = self._lookup
        wanted |= users
        found = await asyncio.shield(future)
        return {u: found[u] for u in users if u in found}

    def _start_lookup(self) -> None:
        assert self._lookup is not None
        wanted, future = self._lookup
        self._lookup = None
        self._spawn(self._run_lookup(sorted(wanted), future))

    async def _run_lookup(
        self, users: list[int], future: asyncio.Future[dict[int, set[str]]]
    ) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for uid in users:
                    pipe.hkeys(self.keys.where(uid))
                replies = await pipe.execute()
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        dead = self.registry.dead
        out: dict[int, set[str]] = {}
        for uid, nodes in zip(users, replies, strict=True):
            here = {n.decode() for n in nodes} - dead
            if here:
                out[uid] = here
        if not future.done():
            future.set_result(out)

    async def clear_node(self, node_id: str) -> None:
        """The janitor's part: forget a dead node's sessions, then let the debounce decide."""
        key = self.keys.node_users(node_id)
        users = [int(u) for u in await self.redis.smembers(key)]
        async with self.redis.pipeline(transaction=True) as pipe:  # all or nothing: retried
            for uid in users:
                pipe.hdel(self.keys.where(uid), node_id)
            pipe.delete(key)
            await pipe.execute()
        for uid in users:
            self.check_later(uid)

    async def reborn(self) -> None:
        """This node was declared dead and lives on under a new life: place every local session
        under it (the janitor clears the old life's entries, not these). Retried in the
        background until Redis takes it."""
        await self._place_now_or_soon()

    async def regained(self) -> None:
        """This node reached Redis again after losing touch: its entries may have expired
        meanwhile (or were never written), so place every local session again now rather
        than at the next periodic refresh."""
        await self._place_now_or_soon()

    async def _place_now_or_soon(self) -> None:
        try:
            await self._place_all()
        except (OSError, aioredis.RedisError):
            self._place_soon()

    def _place_soon(self) -> None:
        """Place every local session once Redis takes it (tried every heartbeat)."""
        if self._placer is None or self._placer.done():
            self._placer = asyncio.create_task(self._place_until_done(), name="presence-place")

    async def _place_until_done(self) -> None:
        log.warning("could not place this node's sessions in Redis; retrying every heartbeat")
        while True:
            await self.clock.sleep(self.registry.heartbeat)
            try:
                await self._place_all()
                return
            except (OSError, aioredis.RedisError):
                pass

    async def _place_all(self) -> None:
        """Write this life's entries for every local session (counts, expiries, the set the
        janitor reads) and announce "online" for those whose friends were told "offline"."""
        users = dict(self.local)
        stale = self._stale - users.keys()
        if not users and not stale:
            return
        k, life = self.keys, self.node_id
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid, count in users.items():
                pipe.hset(k.where(uid), life, count)
                pipe.expire(k.where(uid), self.ttl)
                pipe.set(k.online(uid), "1", nx=True, ex=self.ttl)
                pipe.expire(k.online(uid), self.ttl)
            if users:
                pipe.sadd(k.node_users(life), *users)
            for uid in stale:
                pipe.hdel(k.where(uid), life)
            if stale:
                pipe.srem(k.node_users(life), *stale)
            replies = await pipe.execute()
        self._stale -= stale
        for i, uid in enumerate(users):
            if replies[4 * i + 2] and uid in self.local:  # "offline" was said: say "online"
                self._spawn(self.announce(uid, "online"))

    async def _refresh_loop(self) -> None:
        """Keep this node's entries from expiring while its sessions are open (and put back
        any that expired while Redis was out of reach)."""
        while True:
            await self.clock.sleep(self.ttl / 3)
            try:
                await self._place_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("presence refresh failed", exc_info=True)
