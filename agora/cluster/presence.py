"""Presence: which nodes hold each user's sessions, and online/offline transitions.

``where:{user}`` maps node -> session count; readers ignore nodes that are not live, so a dead
node's entries never route anything even before the janitor removes them. A user is online while
any live node holds a session. Friends hear of transitions only: ``online:{user}`` records what
was announced, so "online" is said once however many sessions open, and "offline" is said only
when, ``debounce`` seconds after the last session closed, none has come back (a reconnect inside
that window shows no blip).

:class:`Presence` writes ``where``; :class:`Placements` reads it for the router, from a cache
first and from Redis right after (see its docstring for why that is never less than a lookup).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import redis.asyncio as aioredis

from agora.cluster.nodes import NodeRegistry
from agora.storage.redis import Keys

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
# KEYS: where, online; ARGV: live nodes -> 1 when the user just went offline
_WENT_OFFLINE = """
local live = {}
for i = 1, #ARGV do live[ARGV[i]] = true end
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
    if live[node] then return 0 end
end
if redis.call('DEL', KEYS[2]) == 1 then return 1 end
return 0
"""

# KEYS: where of each user -> the nodes in each (one command, one reply parsed in C)
_WHERE = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HKEYS', key) end
return out
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
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.registry = registry
        self.node_id = registry.node_id
        self.announce = announce
        self.debounce = debounce
        self.ttl = ttl
        self.local: dict[int, int] = {}  # user -> sessions on this node
        self._came_online = redis.register_script(_CAME_ONLINE)
        self._went_offline = redis.register_script(_WENT_OFFLINE)
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_loop(), name="presence-refresh")

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in [self._refresher, *self._tasks]:
            if task:
                task.cancel()
        await asyncio.gather(
            *(t for t in [self._refresher, *self._tasks] if t), return_exceptions=True
        )

    async def connected(self, user_id: int) -> None:
        count = self.local.get(user_id, 0) + 1
        self.local[user_id] = count
        if count > 1:
            return
        k = self.keys
        became = await self._came_online(
            keys=[k.where(user_id), k.node_users(self.node_id), k.online(user_id)],
            args=[self.node_id, user_id, self.ttl],
        )
        if int(became):
            await self.announce(user_id, "online")

    async def disconnected(self, user_id: int) -> None:
        count = self.local.get(user_id, 0) - 1
        if count > 0:
            self.local[user_id] = count
            return
        self.local.pop(user_id, None)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hdel(self.keys.where(user_id), self.node_id)
                pipe.srem(self.keys.node_users(self.node_id), user_id)
                await pipe.execute()
        except (OSError, aioredis.RedisError):
            log.warning("could not clear presence of user %d", user_id)
        self.check_later(user_id)

    def check_later(self, user_id: int) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            task = loop.create_task(self._check_offline(user_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        handle = loop.call_later(self.debounce, fire)
        self._timers.add(handle)

    async def _check_offline(self, user_id: int) -> None:
        if user_id in self.local:
            return
        went = await self._went_offline(
            keys=[self.keys.where(user_id), self.keys.online(user_id)],
            args=sorted(self.registry.live),
        )
        if int(went):
            await self.announce(user_id, "offline")

    async def is_online(self, user_id: int) -> bool:
        return bool(await self.redis.exists(self.keys.online(user_id)))

    async def clear_node(self, node_id: str) -> None:
        """The janitor's part: forget a dead node's sessions, then let the debounce decide."""
        key = self.keys.node_users(node_id)
        users = [int(u) for u in await self.redis.smembers(key)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid in users:
                pipe.hdel(self.keys.where(uid), node_id)
            pipe.delete(key)
            await pipe.execute()
        for uid in users:
            self.check_later(uid)

    async def _refresh_loop(self) -> None:
        """Keep this node's entries from expiring while its sessions are open."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for uid in list(self.local):
                        pipe.hset(self.keys.where(uid), self.node_id, self.local.get(uid, 1))
                        pipe.expire(self.keys.where(uid), self.ttl)
                        pipe.expire(self.keys.online(uid), self.ttl)
                    if self.local:
                        pipe.sadd(self.keys.node_users(self.node_id), *self.local)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("presence refresh failed", exc_info=True)


Post = Callable[[str, list[int]], None]  # (node, users there) -> hand them the frames


@dataclass(slots=True)
class _Routing:
    users: list[int]
    post: Post
    sent: dict[str, set[int]] = field(default_factory=dict)  # node -> users posted there


class Placements:
    """Which nodes hold sessions of which users, for routing deliveries.

    Looking ``where`` up in Redis before every delivery put a Redis round trip between a commit
    and every remote session. Instead :meth:`route` posts at once to the nodes the cache names,
    then confirms against Redis and posts to any node the cache missed (a session that opened
    since), so what reaches a node is never less than a lookup made after the commit would have
    sent: a session registered in ``where`` before its ``ready`` gets every later frame.

    Order: confirmations run one at a time, in the order :meth:`route` was called (those asked
    for while one is in flight share the next round trip). Whenever one lands it updates the
    cache and, in routing order, brings every routing not yet confirmed up to date with it
    before anything newer can be routed. So a delivery routed later never reaches a node before
    one routed earlier: per session, frames keep their order. A stale entry only costs a
    delivery to a node that has none of those users any more (it drops it). Nodes known dead and
    this node are never posted to.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        registry: NodeRegistry,
        max_entries: int = 200_000,
        window: float = 0.005,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.registry = registry
        self.node_id = registry.node_id
        self.max_entries = max_entries
        self.window = window
        self._where = redis.register_script(_WHERE)
        self._cache: OrderedDict[int, frozenset[str]] = OrderedDict()
        self._queued: list[_Routing] = []
        self._confirming: asyncio.Task[None] | None = None
        self.lookups = 0  # Redis round trips made

    def route(self, users: list[int], post: Post) -> None:
        """Post to every other live node holding sessions of ``users``: the cached ones now, the
        rest once Redis has answered (not at all while Redis is unreachable: those sessions get
        the frames with ``sync``; PostgreSQL holds every message)."""
        if not users:
            return
        routing = _Routing(users, post)
        self._catch_up([routing])
        self._queued.append(routing)
        if self._confirming is None:
            self._confirming = asyncio.get_running_loop().create_task(
                self._confirm(), name="placements-confirm"
            )

    def _catch_up(self, routings: list[_Routing]) -> None:
        """Post each routing, in order, to the cached nodes it has not been posted to yet."""
        cache, skip = self._cache, self.registry.dead | {self.node_id}
        for routing in routings:
            late: dict[str, list[int]] = {}
            for user in routing.users:
                for node in cache.get(user, ()):
                    if node in skip:
                        continue
                    sent = routing.sent.setdefault(node, set())
                    if user not in sent:
                        sent.add(user)
                        late.setdefault(node, []).append(user)
            for node, node_users in late.items():
                routing.post(node, node_users)

    async def _confirm(self) -> None:
        try:
            while self._queued:
                await asyncio.sleep(self.window)  # let routings gather: one lookup for all
                batch, self._queued = self._queued, []
                wanted = sorted({user for routing in batch for user in routing.users})
                try:
                    await self._lookup(wanted)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning(
                        "could not look up where %d user(s) are; remote delivery skipped",
                        len(wanted),
                    )
                    continue
                self._catch_up(batch + self._queued)
        finally:
            self._confirming = None

    async def _lookup(self, users: list[int]) -> None:
        """One round trip: the cache takes what Redis says of each user."""
        self.lookups += 1
        replies = await self._where(keys=[self.keys.where(uid) for uid in users])
        cache = self._cache
        for uid, nodes in zip(users, replies, strict=True):
            cache[uid] = frozenset(n.decode() for n in nodes)
            cache.move_to_end(uid)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)

    def cached(self, user_id: int) -> frozenset[str] | None:
        return self._cache.get(user_id)

    async def confirmed(self) -> None:
        """Return once every routing so far has been confirmed (or given up on)."""
        while self._confirming is not None:
            await asyncio.shield(self._confirming)

    async def stop(self) -> None:
        if self._confirming is not None:
            self._confirming.cancel()
            await asyncio.gather(self._confirming, return_exceptions=True)
