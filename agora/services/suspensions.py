"""Suspended accounts, known to every node and checked without any I/O per request.

A suspension revokes every login of the account (through :class:`~agora.services.revocations.
Revocations`, which closes WebSocket sessions on every node), so its tokens stop at once. This
set is the second lock: :meth:`AccountService.authenticate` also refuses any token of a
suspended account, so a login that raced the suspension (its password checked just before the
suspension committed) cannot get through either.

Each node loads the suspended ids from PostgreSQL at start, follows a Redis stream (one entry
per change, like the revocations stream) and reloads from PostgreSQL every ``reload_every``
seconds and after losing Redis, which bounds what a lost broadcast could cost.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.storage.accounts import AccountStore
from agora.storage.redis import Keys, read_stream, stream_tail
from agora.tasks import cancel_and_wait

log = logging.getLogger(__name__)

STREAM_MAXLEN = 10_000


class Suspensions:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        store: AccountStore,
        clock: Clock,
        reload_every: float = 60.0,
    ) -> None:
        self._redis = redis
        self._stream = keys.suspensions
        self._store = store
        self._clock = clock
        self._reload_every = reload_every
        self._ids: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    async def changed(self, user_id: int, suspended: bool) -> None:
        """Call after the change is committed: applied here at once, then broadcast. A
        broadcast Redis refuses is logged; the other nodes' next reload finds it (and the
        logins it revoked are broadcast, with retries, by the revocations)."""
        self._apply(user_id, suspended)
        try:
            await self._redis.xadd(
                self._stream,
                {b"uid": str(user_id).encode(), b"on": b"1" if suspended else b"0"},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        except (OSError, aioredis.RedisError):
            log.warning("could not broadcast the suspension change of user %s", user_id)

    def _apply(self, user_id: int, suspended: bool) -> None:
        if suspended:
            self._ids.add(user_id)
        else:
            self._ids.discard(user_id)

    async def reload(self) -> None:
        self._ids = await self._store.suspended_ids()

    async def start(self) -> None:
        last_id = await stream_tail(self._redis, self._stream)
        await self.reload()
        self._task = asyncio.create_task(self._follow(last_id), name="suspensions")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def _follow(self, last_id: bytes) -> None:
        next_reload = self._clock.monotonic() + self._reload_every
        while True:
            try:
                for entry_id, fields in await read_stream(self._redis, self._stream, last_id, 500):
                    last_id = entry_id
                    raw = fields.get(b"uid")
                    if raw is not None and raw.isdigit():
                        self._apply(int(raw), fields.get(b"on") == b"1")
                if self._clock.monotonic() >= next_reload:
                    await self.reload()
                    next_reload = self._clock.monotonic() + self._reload_every
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("suspension stream unavailable; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                try:
                    last_id = await stream_tail(self._redis, self._stream)
                    await self.reload()
                except Exception:
                    pass
