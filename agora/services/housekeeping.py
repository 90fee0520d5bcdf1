"""Periodic jobs that keep logins honest and their tables small.

- :class:`SessionRecheck` (every node, every ``AGORA_SESSION_RECHECK`` seconds, 60 by default):
  the logins behind the node's open WebSocket sessions are checked against PostgreSQL in one
  query; one that is revoked, expired, gone or whose user is suspended is refused on this node
  from then on and its sessions close with 4001. So a revocation whose broadcast never arrived
  keeps a socket open for at most that long.
- :class:`LoginPurge` (every ``AGORA_PURGE_INTERVAL`` seconds, hourly by default; one node at a
  time, under a PostgreSQL advisory lock): deletes expired refresh tokens, tokens used longer
  ago than ``AGORA_LOGIN_RETENTION``, and logins revoked or expired longer ago than that, in
  batches of :data:`PURGE_BATCH` rows, each batch its own short transaction.

Both wait with the injected clock, so tests advance a ``ManualClock`` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from agora.clock import Clock
from agora.config import AuthConfig
from agora.protocol.frames import CloseCode
from agora.services.revocations import Revocations
from agora.storage.accounts import PURGES, AccountStore
from agora.tasks import cancel_and_wait

log = logging.getLogger(__name__)

PURGE_BATCH = 1000  # rows per delete statement


class OpenLogins(Protocol):
    """What the re-check needs of the node's session registry (actors/session.py)."""

    @property
    def by_login(self) -> Mapping[int, object]: ...

    def close_login(self, login_id: int, code: int, reason: str) -> None: ...


class Periodic:
    """Runs ``job`` every ``interval`` seconds of ``clock`` until stopped. A failed run is
    logged; the next one comes at its time."""

    def __init__(
        self, name: str, interval: float, clock: Clock, job: Callable[[], Awaitable[object]]
    ) -> None:
        self.name = name
        self._interval = interval
        self._clock = clock
        self._job = job
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await cancel_and_wait([self._task])

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self._job()
            except Exception:
                log.warning("%s failed; next run in %gs", self.name, self._interval, exc_info=True)


class SessionRecheck:
    """Closes this node's sessions whose login is no longer valid in PostgreSQL."""

    def __init__(self, sessions: OpenLogins, store: AccountStore, revocations: Revocations) -> None:
        self._sessions = sessions
        self._store = store
        self._revocations = revocations

    async def run_once(self) -> list[int]:
        """The logins found invalid (their sessions are closing)."""
        logins = list(self._sessions.by_login)
        if not logins:
            return []
        invalid = await self._store.invalid_logins(logins)
        if invalid:
            log.info("closing the sessions of %d login(s) no longer valid", len(invalid))
            self._revocations.mark(invalid)  # their access tokens are refused here too
            for sid in invalid:
                self._sessions.close_login(sid, CloseCode.REVOKED, "revoked")
        return invalid


class LoginPurge:
    """Deletes old refresh tokens and logins in bounded batches, one node at a time."""

    def __init__(self, store: AccountStore, retention: float, batch: int = PURGE_BATCH) -> None:
        self._store = store
        self._retention = retention
        self._batch = batch

    async def run_once(self) -> dict[str, int] | None:
        """Rows deleted per purge statement, or None when another node is purging (it holds
        the lock; what this run deleted before finding that stays deleted)."""
        deleted: dict[str, int] = {}
        for name in PURGES:
            deleted[name] = 0
            while True:
                count = await self._store.purge_batch(name, self._retention, self._batch)
                if count is None:
                    log.debug("another node is purging logins")
                    return None
                deleted[name] += count
                if count < self._batch:
                    break
        if any(deleted.values()):
            log.info("purged %s", ", ".join(f"{n}: {c}" for n, c in deleted.items() if c))
        return deleted


def housekeeping_jobs(
    auth: AuthConfig,
    clock: Clock,
    store: AccountStore,
    revocations: Revocations,
    sessions: OpenLogins,
) -> list[Periodic]:
    """The node's periodic jobs, not started."""
    recheck = SessionRecheck(sessions, store, revocations)
    purge = LoginPurge(store, auth.login_retention)
    return [
        Periodic("session-recheck", auth.session_recheck, clock, recheck.run_once),
        Periodic("login-purge", auth.purge_interval, clock, purge.run_once),
    ]
