"""The node registry: heartbeats in a Redis sorted set, the live set, rendezvous ownership.

Every ``heartbeat`` seconds a node writes its time into ``nodes`` and reads who else wrote within
``timeout``. A node silent for longer is dead: its conversations hash to live nodes at once
(rendezvous hashing moves only what the dead node owned), and one live node (the owner of the
key ``"janitor"``) clears what it left in Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.storage.redis import Keys

log = logging.getLogger(__name__)

ChangeListener = Callable[[frozenset[str], frozenset[str]], Awaitable[None]]
DeadListener = Callable[[str], Awaitable[None]]


def _weight(node_id: str, key: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{node_id}|{key}".encode(), digest_size=8).digest(), "big"
    )


def rendezvous(nodes: Iterable[str], key: str) -> str:
    """The node with the highest weight for ``key`` (highest random weight hashing)."""
    return max(nodes, key=lambda node: _weight(node, key))


class NodeRegistry:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        node_id: str,
        clock: Clock,
        heartbeat: float = 2.0,
        timeout: float = 10.0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.clock = clock
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.live: frozenset[str] = frozenset({node_id})
        self.dead: frozenset[str] = frozenset()  # silent past the timeout, not yet cleared
        self._on_change: list[ChangeListener] = []
        self._on_dead: list[DeadListener] = []
        self._task: asyncio.Task[None] | None = None
        self._beating = asyncio.Lock()  # the loop and refresh() never beat at once

    def owner(self, key: str) -> str:
        return rendezvous(self.live, key)

    def owns(self, key: str) -> bool:
        return self.owner(key) == self.node_id

    def on_change(self, listener: ChangeListener) -> None:
        self._on_change.append(listener)

    def on_dead(self, listener: DeadListener) -> None:
        self._on_dead.append(listener)

    async def start(self) -> None:
        await self._beat()
        self._task = asyncio.create_task(self._loop(), name="node-heartbeat")

    async def stop(self) -> None:
        """Leave at once: score 0 marks this node dead, so the janitor cleans up after it now
        rather than after the timeout."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self.redis.zadd(self.keys.nodes, {self.node_id: 0})
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
            await asyncio.sleep(self.heartbeat)
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("node heartbeat failed", exc_info=True)

    async def _beat(self) -> None:
        async with self._beating:  # listeners and the janitor's burial run once per change
            await self._beat_once()

    async def _beat_once(self) -> None:
        now_ms = int(self.clock.time() * 1000)
        cutoff = now_ms - int(self.timeout * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.nodes, {self.node_id: now_ms})
            pipe.zrangebyscore(self.keys.nodes, cutoff, "+inf")
            pipe.zrangebyscore(self.keys.nodes, "-inf", f"({cutoff}")
            _, alive, dead = await pipe.execute()
        live = frozenset(n.decode() for n in alive) | {self.node_id}
        self.dead = frozenset(n.decode() for n in dead) - {self.node_id}
        if live != self.live:
            old, self.live = self.live, live
            log.info("cluster nodes: %s", ", ".join(sorted(live)))
            for listener in self._on_change:
                try:
                    await listener(old, live)
                except Exception:
                    log.exception("node change listener failed")
        if dead and self.owns("janitor"):
            for raw in dead:
                await self._bury(raw.decode())

    async def _bury(self, node_id: str) -> None:
        log.warning("node %s is gone; clearing what it left", node_id)
        for listener in self._on_dead:
            try:
                await listener(node_id)
            except Exception:
                log.exception("dead node listener failed")
                return  # try again on the next beat
        await self.redis.zrem(self.keys.nodes, node_id)
