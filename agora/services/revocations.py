"""Revoked logins, known to every node within a moment and checked without any I/O.

An access token stays cryptographically valid until it expires (15 min), so logging out, reusing
a refresh token or a suspension must also make each node refuse the token's ``sid`` at once.
Revocations are committed in PostgreSQL, then appended to a Redis stream that every node follows;
at start-up (and after losing Redis) a node reloads the recent ones from PostgreSQL. An entry is
kept only as long as an access token can live. Listeners (the WebSocket sessions) are told too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.storage.accounts import AccountStore
from agora.storage.redis import Keys, read_stream, stream_tail

log = logging.getLogger(__name__)

Listener = Callable[[int], None]
STREAM_MAXLEN = 100_000


class Revocations:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        store: AccountStore,
        clock: Clock,
        keep_seconds: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._store = store
        self._clock = clock
        self._keep = keep_seconds + 60
        self._revoked: dict[int, float] = {}  # session id -> monotonic time it can be forgotten
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None

    def is_revoked(self, session_id: int) -> bool:
        return session_id in self._revoked

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def revoke(self, session_ids: list[int]) -> None:
        """Call after the revocation is committed in PostgreSQL."""
        for sid in session_ids:
            self._mark(sid)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid in session_ids:
                    pipe.xadd(
                        self._keys.revocations,
                        {b"sid": str(sid).encode()},
                        maxlen=STREAM_MAXLEN,
                        approximate=True,
                    )
                await pipe.execute()
        except (OSError, aioredis.RedisError):
            # Other nodes catch up from PostgreSQL when their stream reader reconnects.
            log.warning(
                "could not broadcast %d revocation(s); other nodes will reload them",
                len(session_ids),
            )

    def _mark(self, sid: int) -> None:
        fresh = sid not in self._revoked
        self._revoked[sid] = self._clock.monotonic() + self._keep
        if fresh:
            for listener in list(self._listeners):
                try:
                    listener(sid)
                except Exception:  # a listener's bug must not stop the others
                    log.exception("revocation listener failed")

    async def start(self) -> None:
        last_id = await self._stream_tail()
        await self._reload()
        self._task = asyncio.create_task(self._follow(last_id), name="revocations")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _stream_tail(self) -> bytes:
        return await stream_tail(self._redis, self._keys.revocations)

    async def _reload(self) -> None:
        since = self._clock.now() - timedelta(seconds=self._keep)
        for sid in await self._store.revoked_since(since):
            self._mark(sid)

    def _prune(self) -> None:
        now = self._clock.monotonic()
        for sid in [s for s, until in self._revoked.items() if until < now]:
            del self._revoked[sid]

    async def _follow(self, last_id: bytes) -> None:
        while True:
            try:
                for entry_id, fields in await read_stream(
                    self._redis, self._keys.revocations, last_id, 500
                ):
                    last_id = entry_id
                    raw = fields.get(b"sid")
                    if raw is not None and raw.isdigit():
                        self._mark(int(raw))
                self._prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("revocation stream unavailable; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                try:
                    last_id = await self._stream_tail()
                    await self._reload()
                except Exception:
                    pass
