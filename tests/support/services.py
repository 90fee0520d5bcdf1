"""Find the real PostgreSQL and Redis of the machine, or start the embedded ones.

CI and the developers' machines run PostgreSQL on 127.0.0.1:5432 and Redis on 6379; a new
machine has neither, so ``make test`` falls back to the same embedded engines the node uses.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from agora.server.embedded import EmbeddedPostgres, EmbeddedRedis

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def _pg_answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


class ServiceSet:
    """The server-level DSNs for this test session, and what was started to provide them."""

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._pg: EmbeddedPostgres | None = None
        self._redis: EmbeddedRedis | None = None
        self.pg_admin_dsn = ""
        self.redis_url = ""
        self.amqp_url: str | None = None  # None: no broker answers at amqp_probe
        self.amqp_probe = ""

    def start(self) -> None:
        """``AGORA_TEST_PG`` / ``AGORA_TEST_REDIS`` name other servers, or ``embedded`` to use
        the embedded engines even where the machine has its own (as on a new machine)."""
        dsn = os.environ.get("AGORA_TEST_PG", DEFAULT_PG)
        if dsn != "embedded" and asyncio.run(_pg_answers(dsn)):
            self.pg_admin_dsn = dsn
        else:
            self._pg = EmbeddedPostgres(self._tmpdir())
            self.pg_admin_dsn = self._swap_db(self._pg.start(), "postgres")
        redis_url = os.environ.get("AGORA_TEST_REDIS", DEFAULT_REDIS)
        if redis_url != "embedded" and (
            "AGORA_TEST_REDIS" in os.environ or port_open("127.0.0.1", 6379)
        ):
            self.redis_url = redis_url
        else:
            self._redis = EmbeddedRedis(self._tmpdir())
            self.redis_url = self._redis.start()
        amqp = os.environ.get("AGORA_TEST_AMQP", DEFAULT_AMQP)
        where = urlsplit(amqp)
        self.amqp_probe = f"{where.hostname or '127.0.0.1'}:{where.port or 5672}"
        self.amqp_url = (
            amqp if port_open(where.hostname or "127.0.0.1", where.port or 5672) else None
        )

    @staticmethod
    def _swap_db(dsn: str, name: str) -> str:
        head, _, query = dsn.partition("?")
        return head.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")

    def database_dsn(self, name: str) -> str:
        return self._swap_db(self.pg_admin_dsn, name)

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="agora-test-")
        return Path(self._tmp.name)

    @property
    def embedded(self) -> list[str]:
        return [n for n, s in (("postgres", self._pg), ("redis", self._redis)) if s is not None]

    def stop(self) -> None:
        for service in (self._redis, self._pg):
            if service is not None:
                service.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


async def create_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
