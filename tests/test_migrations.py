"""The migration runner: ordered, checksummed, locked, safe with concurrent nodes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web

from agora.config import Config
from agora.server.app import create_app
from agora.storage.migrations import Migration, MigrationError, discover, migrate
from tests.support.services import ServiceSet, create_database, drop_database


@pytest.fixture
async def empty_db(services: ServiceSet) -> AsyncIterator[str]:
    name = f"agora_mig_{secrets.token_hex(4)}"
    await create_database(services.pg_admin_dsn, name)
    yield services.database_dsn(name)
    await drop_database(services.pg_admin_dsn, name)


def test_files_are_numbered_and_discovered_in_order() -> None:
    found = discover()
    assert found and [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].name == "0001_accounts"


async def test_applies_once_and_records_checksums(empty_db: str) -> None:
    applied = await migrate(empty_db)
    assert applied == [m.name for m in discover()]
    assert await migrate(empty_db) == []
    conn = await asyncpg.connect(empty_db)
    try:
        rows = await conn.fetch("SELECT version, checksum FROM agora_meta.migrations ORDER BY 1")
    finally:
        await conn.close()
    assert [(r["version"], r["checksum"]) for r in rows] == [
        (m.version, m.checksum) for m in discover()
    ]


async def test_edited_applied_migration_aborts(empty_db: str) -> None:
    first = Migration(1, "0001_t", "CREATE TABLE t (a int);")
    await migrate(empty_db, [first])
    edited = Migration(1, "0001_t", "CREATE TABLE t (a bigint);")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        await migrate(empty_db, [edited])


async def test_a_failing_migration_rolls_back_alone(empty_db: str) -> None:
    good = Migration(1, "0001_good", "CREATE TABLE good (a int);")
    bad = Migration(2, "0002_bad", "CREATE TABLE half (a int); SELECT no_such_function();")
    with pytest.raises(asyncpg.PostgresError):
        await migrate(empty_db, [good, bad])
    conn = await asyncpg.connect(empty_db)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.good') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('public.half') IS NOT NULL")
        assert await conn.fetchval("SELECT count(*) FROM agora_meta.migrations") == 1
    finally:
        await conn.close()


async def test_concurrent_migrators_on_an_empty_database(empty_db: str) -> None:
    results = await asyncio.gather(*[migrate(empty_db) for _ in range(4)])
    assert sorted(len(r) for r in results) == [0, 0, 0, len(discover())]


async def test_two_nodes_starting_at_once_both_come_up(empty_db: str, config: Config) -> None:
    db = config.database.__class__(url=empty_db, pool_min=1, pool_max=2)
    runners = [
        web.AppRunner(create_app(config.with_overrides(database=db, node_id=f"n{i}")))
        for i in range(2)
    ]
    await asyncio.gather(*[r.setup() for r in runners])
    try:
        conn = await asyncpg.connect(empty_db)
        try:
            count = await conn.fetchval("SELECT count(*) FROM agora_meta.migrations")
        finally:
            await conn.close()
        assert count == len(discover())
    finally:
        await asyncio.gather(*[r.cleanup() for r in runners])
