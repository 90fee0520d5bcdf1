"""The PostgreSQL pool and named queries.

Every statement runs through :class:`Database` (autocommit, one statement) or a :class:`Tx`
(one named transaction), each with a name, so metrics and logs say what ran (Synapse's
``runInteraction("desc", f)``). Stores never touch the pool directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from asyncpg import Record as Record  # re-exported for the stores

# Mirrors agora.next_id() in migrations/0001: ms since 2025-01-01 above 12 bits of sequence.
ID_EPOCH_MS = 1_735_689_600_000
ID_SEQUENCE_BITS = 12
MAX_ID = 2**53 - 1


def id_floor(at: datetime) -> int:
    """The smallest id a row created at ``at`` can have (ids are time-ordered)."""
    ms = int(at.timestamp() * 1000) - ID_EPOCH_MS
    return max(0, ms) << ID_SEQUENCE_BITS


Observer = Callable[[str, float], None]


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename,
            schema="pg_catalog",
            encoder=_encode_json,
            decoder=msgspec.json.decode,
        )


async def _reset(conn: asyncpg.Connection) -> None:
    """Connections come back clean: transactions are context managers and nothing sets session
    state, so asyncpg's default reset (a round trip of RESET ALL and friends on every release)
    is skipped; a connection somehow left in a transaction is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class _Runner:
    """The four query verbs, timed and counted under a name."""

    _conn_or_pool: Any
    _observe: Observer
    _db: Database

    async def fetch(self, name: str, sql: str, *args: Any) -> list[Record]:
        start = time.perf_counter()
        try:
            return await self._conn_or_pool.fetch(sql, *args)  # type: ignore[no-any-return]
        finally:
            self._done(name, start)

    async def fetchrow(self, name: str, sql: str, *args: Any) -> Record | None:
        start = time.perf_counter()
        try:
            return await self._conn_or_pool.fetchrow(sql, *args)
        finally:
            self._done(name, start)

    async def fetchval(self, name: str, sql: str, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return await self._conn_or_pool.fetchval(sql, *args)
        finally:
            self._done(name, start)

    async def execute(self, name: str, sql: str, *args: Any) -> str:
        start = time.perf_counter()
        try:
            return await self._conn_or_pool.execute(sql, *args)  # type: ignore[no-any-return]
        finally:
            self._done(name, start)

    def _done(self, name: str, start: float) -> None:
        self._db.queries += 1
        self._observe(name, time.perf_counter() - start)


class Tx(_Runner):
    """One open transaction on one connection."""

    def __init__(self, db: Database, conn: asyncpg.Connection) -> None:
        self._db = db
        self._conn_or_pool = conn
        self._observe = db.observe
        self.wrote_events = False  # set by storage.events.append: tell the relay at commit


class Database(_Runner):
    """An asyncpg pool plus the bookkeeping of what ran.

    ``queries`` counts statements sent (tests use it to prove a page costs a bounded number
    of queries); ``observe(name, seconds)`` feeds the metrics.
    """

    def __init__(self, pool: asyncpg.Pool, observe: Observer | None = None) -> None:
        self._db = self
        self.pool = pool
        self._conn_or_pool = pool
        self.observe: Observer = observe or (lambda name, seconds: None)
        self._observe = self.observe
        self.queries = 0
        # Called after a commit that wrote domain events (the app points it at the relay).
        self.events_committed: Callable[[], None] = lambda: None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 20,
        observe: Observer | None = None,
        durable_commits: bool = True,
        settings: Mapping[str, str] | None = None,
    ) -> Database:
        """``durable_commits=False``: this pool's commits return before their WAL is flushed
        (``synchronous_commit = off``), for work that is redone after a crash anyway.
        ``settings``: more session settings of every connection (for a pool of one purpose).

        Statements are planned once per connection (``plan_cache_mode = force_generic_plan``):
        left to choose, PostgreSQL kept planning some statements on every execution (the chat
        commit, the notifications consumer's, the relationship lookup), and under bench mixed
        planning took a fifth as long as executing. tests/test_query_plans.py checks every
        statement's generic plan; search, whose plans depend on the words, sets its own."""
        settings = {
            "plan_cache_mode": "force_generic_plan",
            **(settings or {}),
            **({} if durable_commits else {"synchronous_commit": "off"}),
        }
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_reset,
            command_timeout=30,
            max_inactive_connection_lifetime=300,
            server_settings=settings,
        )
        assert pool is not None
        return cls(pool, observe)

    @asynccontextmanager
    async def transaction(
        self, name: str, *, isolation: str = "read_committed"
    ) -> AsyncIterator[Tx]:
        """``async with db.transaction("register_user") as tx:`` commits on success."""
        start = time.perf_counter()
        async with self.pool.acquire() as conn:
            async with conn.transaction(isolation=isolation):
                tx = Tx(self, conn)
                yield tx
            if tx.wrote_events:
                self.events_committed()
        self.observe(f"tx:{name}", time.perf_counter() - start)

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with self.pool.acquire(timeout=timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=timeout)
            return True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False

    async def close(self, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout)
        except TimeoutError:
            self.pool.terminate()
