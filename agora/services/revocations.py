"""Revoked logins, known to every node within a moment and checked without any I/O.

An access token stays cryptographically valid until it expires (15 min), so logging out, reusing
a refresh token or a suspension must also make each node refuse the token's ``sid`` at once.
Revocations are committed in PostgreSQL, then appended to a Redis stream that every node follows;
at start-up (and after losing Redis) a node reloads the recent ones from PostgreSQL. An entry is
kept only as long as an access token can live. Listeners (the WebSocket sessions) are told too.

A broadcast that Redis refuses is not lost: its session ids wait (a set, so repeats collapse,
bounded) and a background task sends them with growing pauses until Redis takes them or the
node stops. Every node also re-checks its open sessions against PostgreSQL once a minute
(services/housekeeping.py), which bounds what even a lost broadcast could cost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta

import redis.asyncio as aioredis

from agora.clock import Clock
from agora.storage.accounts import AccountStore
from agora.storage.redis import Keys, read_stream, stream_tail
from agora.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Listener = Callable[[int], None]
STREAM_MAXLEN = 100_000
BATCH = 500  # stream entries per pipeline
RETRY_FIRST = 0.5  # seconds before the first retry of a failed broadcast, doubling up to
RETRY_MAX = 10.0
MAX_UNSENT = STREAM_MAXLEN  # waiting broadcasts kept; past it the oldest are dropped (logged)


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
        self._unsent: dict[int, None] = {}  # session ids not yet in the stream, oldest first
        self._retrier: asyncio.Task[None] | None = None
        self._stopped = False

    def is_revoked(self, session_id: int) -> bool:
        return session_id in self._revoked

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def revoke(self, session_ids: list[int]) -> None:
        """Call after the revocation is committed in PostgreSQL. Refused here at once; other
        nodes hear it through the stream now or, if Redis fails, when a retry gets through."""
        self.mark(session_ids)
        for sid in session_ids:
            self._unsent[sid] = None
        if len(self._unsent) > MAX_UNSENT:
            for sid in list(itertools.islice(self._unsent, len(self._unsent) - MAX_UNSENT)):
                del self._unsent[sid]
            log.error("over %d revocations wait for Redis; dropped the oldest", MAX_UNSENT)
        if self._retrier is not None:
            return  # Redis failed a moment ago: the retry sends these too, callers do not wait
        if not await self._flush():
            log.warning(
                "could not broadcast %d revocation(s); retrying until Redis takes them",
                len(self._unsent),
            )
            if self._retrier is None and not self._stopped:
                self._retrier = asyncio.create_task(self._retry(), name="revocations-retry")

    def mark(self, session_ids: Iterable[int]) -> None:
        """Refuse these logins on this node (and tell the listeners), broadcasting nothing: for
        revocations this node found itself (the periodic re-check runs on every node)."""
        for sid in session_ids:
            self._mark(sid)

    @property
    def unsent(self) -> int:
        """Revocations waiting for Redis."""
        return len(self._unsent)

    async def _flush(self) -> bool:
        """Append every waiting revocation to the stream; False if Redis failed (they wait)."""
        while self._unsent:
            batch = list(itertools.islice(self._unsent, BATCH))
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for sid in batch:
                        pipe.xadd(
                            self._keys.revocations,
                            {b"sid": str(sid).encode()},
                            maxlen=STREAM_MAXLEN,
                            approximate=True,
                        )
                    await pipe.execute()
            except (OSError, aioredis.RedisError):
                return False
            for sid in batch:  # a repeat added meanwhile was sent too (entries are idempotent)
                self._unsent.pop(sid, None)
        return True

    async def _retry(self) -> None:
        delay = RETRY_FIRST
        try:
            while True:
                await self._clock.sleep(delay)
                if await self._flush():
                    log.info("delayed revocations broadcast")
                    return
                delay = min(delay * 2, RETRY_MAX)
        finally:
            self._retrier = None

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
        self._stopped = True
        await cancel_and_wait([self._task, self._retrier])
        if self._unsent:
            log.warning("stopping with %d revocation(s) never broadcast", len(self._unsent))

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
