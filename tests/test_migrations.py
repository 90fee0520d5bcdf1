"""The migration runner: ordered, checksummed, locked, safe with concurrent nodes."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from agora.config import Config
from agora.server.app import create_app
from agora.storage import migrations as runner
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


# What agora_meta.migrations holds on a database migrated before the files moved from
# migrations/ to agora/migrations/ (version, name, SHA-256 of the text), pinned from the files
# of the last commit before the move.
BEFORE_THE_MOVE = [
    (1, "0001_accounts", "b55c85f441211ddcc140b623ac5d53b2c015d44164357302e41a7ef0f3075463"),
    (2, "0002_social_content", "ea61dbf8195307161d17cb63da37fdf4edcb8b88cb6065666326f3dd77fa78d6"),
    (3, "0003_chat", "5ff772e3be742fec73a15d3bcb5097ae3fc05da33730580c04311eeb66445d0e"),
    (
        4,
        "0004_counter_triggers_in_cascades",
        "f00eb33f7a9bc462a61f1bf1f5b4a566bf1d0bdb56046c98b7bd38865dd3ef44",
    ),
    (
        5,
        "0005_chat_members_version",
        "89dedc0e695711481b8fe1c920106c69611027e0b1dd060c52225fccbcf0c039",
    ),
    (
        6,
        "0006_accounts_housekeeping",
        "b31a33977e12f9cfe888fe31d440567f45abc4dd74b8f0c5d90a6475efb3e45f",
    ),
    (7, "0007_events", "b6f6666ad9c8a8d8d366ec56af84eafc74fa5816e978571d26fb052e69b463ba"),
    (8, "0008_notifications", "b872e56faa6f1c9c0fe3d04f19a8787048a3e3ed040a5e8a2e6cb97aa5ab08fd"),
    (
        9,
        "0009_events_wake_after_commit",
        "1802fc4d26bcedc66c8d8e9710d42763be824df1df658daa9c4627097768379a",
    ),
    (10, "0010_search", "dbf216e574167cd934a2ed1a8fcef17c8773c5fa5c32652391ca49109b573811"),
    (11, "0011_search_windows", "69e39e83a91ca1df0378240f1c7927cd59087d3ad32911bc79d76fb1e8abc2c7"),
    (12, "0012_media", "c563de4149b190da1df23ea62182438ee83b1e3737f55b6d6e96f623a74cd0aa"),
    (13, "0013_moderation", "9d98698186913ad407b245d00d37ed56b9c24d3b5379841b9d940a529eed2544"),
    (14, "0014_stats", "9704ea7252da41b37fca8d025184708190f4d4b6bc79a88496df98e482ad3c14"),
]


def test_the_files_inside_the_package_are_those_databases_recorded() -> None:
    package = Path(runner.__file__).resolve().parents[1]
    assert (package / "migrations", package.name) == (runner.MIGRATIONS_DIR, "agora")
    found = discover()
    assert [(m.version, m.name, m.checksum) for m in found[: len(BEFORE_THE_MOVE)]] == (
        BEFORE_THE_MOVE
    )


async def test_a_database_migrated_before_the_move_is_up_to_date(empty_db: str) -> None:
    # The state a node of the previous layout left: the first fourteen, recorded as pinned.
    old = [m for m in discover() if m.version <= len(BEFORE_THE_MOVE)]
    await migrate(empty_db, old)
    conn = await asyncpg.connect(empty_db)
    try:
        rows = await conn.fetch("SELECT version, name, checksum FROM agora_meta.migrations")
    finally:
        await conn.close()
    assert sorted((r["version"], r["name"], r["checksum"]) for r in rows) == BEFORE_THE_MOVE
    # Only what was added since (none when this was written) is pending; nothing re-applies.
    assert await migrate(empty_db) == [m.name for m in discover()[len(BEFORE_THE_MOVE) :]]


def test_no_migrations_to_find_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="does not exist"):
        discover(tmp_path / "missing")
    (tmp_path / "README").write_text("not a migration")
    with pytest.raises(MigrationError, match="no migration files"):
        discover(tmp_path)


async def test_migrate_never_reports_success_with_nothing_to_apply(
    empty_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MigrationError, match="no migrations to apply"):
        await migrate(empty_db, [])
    monkeypatch.setattr(runner, "MIGRATIONS_DIR", tmp_path / "missing")
    with pytest.raises(MigrationError, match="does not exist"):
        await migrate(empty_db)
    conn = await asyncpg.connect(empty_db)
    try:
        assert await conn.fetchval("SELECT to_regclass('agora_meta.migrations')") is None
    finally:
        await conn.close()


async def test_a_node_without_migrations_does_not_start(
    empty_db: str, config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "MIGRATIONS_DIR", tmp_path)
    db = config.database.__class__(url=empty_db, pool_min=1, pool_max=2)
    app_runner = web.AppRunner(create_app(config.with_overrides(database=db)))
    try:
        with pytest.raises(MigrationError, match="no migration files"):
            await app_runner.setup()
    finally:
        await app_runner.cleanup()


def _migrate_with(
    directory: Path, database_url: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``agora migrate`` in a process whose runner looks in ``directory``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(AGORA_DATABASE_URL=database_url, AGORA_JWT_SECRET="c" * 40)
    code = (
        "import sys; from pathlib import Path; from agora.storage import migrations; "
        f"migrations.MIGRATIONS_DIR = Path({str(directory)!r}); "
        "from agora.cli import main; sys.exit(main(['migrate']))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_agora_migrate_fails_loudly_without_migrations(empty_db: str, tmp_path: Path) -> None:
    proc = _migrate_with(tmp_path / "missing", empty_db, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot migrate" in proc.stderr and "does not exist" in proc.stderr
    assert "applied" not in proc.stdout
    proc = _migrate_with(tmp_path, empty_db, tmp_path)  # there, but empty
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no migration files" in proc.stderr and "applied" not in proc.stdout
