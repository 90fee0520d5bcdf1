"""How event consumers reach users' sessions (the :class:`agora.events.consumer.Reach` protocol).

- In a node (``agora serve``): :class:`RouterReach` pushes through the router, the one delivery
  path (local sessions, then one ``Deliver`` per other node holding sessions of the users).
- In ``agora worker``, which is not a cluster node (it owns nothing and has no sessions):
  :class:`StandaloneReach` looks the users up in Redis and appends one unnumbered ``Deliver``
  entry to the inbox of each live node that holds their sessions.

Pushes are best effort in both: a notification is stored before it is pushed, and a client
that missed the frame lists it.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.cluster.inbox import STREAM_MAXLEN, Deliver, group_by_node, unnumbered_entry
from agora.cluster.presence import Presence
from agora.cluster.router import Router
from agora.storage.redis import Keys


class RouterReach:
    def __init__(self, router: Router, presence: Presence) -> None:
        self.router = router
        self.presence = presence

    async def push(self, users: Iterable[int], frames: list[bytes]) -> None:
        await self.router.deliver(users, frames)

    async def online(self, users: Iterable[int]) -> set[int]:
        return set(await self.presence.nodes_of(users))


class StandaloneReach:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, clock: Clock, node_timeout: float = 10.0
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.clock = clock
        self.node_timeout = node_timeout

    async def _placements(self, users: list[int]) -> dict[int, set[str]]:
        cutoff_ms = int((self.clock.time() - self.node_timeout) * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self.keys.nodes, cutoff_ms, "+inf")
            for uid in users:
                pipe.hkeys(self.keys.where(uid))
            replies = await pipe.execute()
        live = {n.decode() for n in replies[0]}
        out: dict[int, set[str]] = {}
        for uid, nodes in zip(users, replies[1:], strict=True):
            here = {n.decode() for n in nodes} & live
            if here:
                out[uid] = here
        return out

    async def push(self, users: Iterable[int], frames: list[bytes]) -> None:
        by_node = group_by_node(await self._placements(sorted(set(users))))
        if not by_node:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for node, node_users in by_node.items():
                pipe.xadd(
                    self.keys.inbox(node),
                    unnumbered_entry([Deliver(node_users, frames)]),
                    maxlen=STREAM_MAXLEN,
                    approximate=True,
                )
            await pipe.execute()

    async def online(self, users: Iterable[int]) -> set[int]:
        return set(await self._placements(sorted(set(users))))
