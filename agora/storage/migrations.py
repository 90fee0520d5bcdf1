"""The one migration runner.

Numbered forward-only ``.sql`` files in ``agora/migrations/`` (``0001_accounts.sql``, ...),
package data that the wheel carries next to the code reading them. Under a PostgreSQL advisory
lock, each pending file runs in its own transaction and is recorded in ``agora_meta.migrations``
with its SHA-256. An applied file whose text changed aborts start-up:
the database no longer matches the code and a person has to decide.

Several nodes may start at once on an empty database: the lock makes the second wait for the
first and then find nothing to do. A runner that finds no migration files at all fails: an
installation without its migrations must not report an up-to-date database.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

# Inside the package (agora/migrations/), so a checkout, an editable install and an installed
# wheel all find them; a file's recorded name is its stem, not its path, so moving the directory
# changed nothing for a database already migrated.
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
# Any fixed 64-bit number; the same for every node of every version.
LOCK_KEY = 0x61676F72615F6D67  # "agora_mg"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS agora_meta;
CREATE TABLE IF NOT EXISTS agora_meta.migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""


class MigrationError(Exception):
    """The database cannot be brought to the code's schema; the message says why."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    directory = MIGRATIONS_DIR if directory is None else directory
    if not directory.is_dir():
        raise MigrationError(
            f"the migrations directory {directory} does not exist "
            "(an installation without its package data? reinstall Agora from its wheel)"
        )
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a number")
    if not found:
        raise MigrationError(
            f"no migration files (NNNN_name.sql) in {directory} "
            "(an installation without its package data? reinstall Agora from its wheel)"
        )
    return found


async def migrate(
    dsn_or_conn: str | asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[str]:
    """Apply what is pending; return the names applied (empty when up to date)."""
    migrations = discover() if migrations is None else migrations
    if not migrations:
        raise MigrationError("no migrations to apply: refusing to report the database up to date")
    own = isinstance(dsn_or_conn, str)
    conn = await asyncpg.connect(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn
    try:
        # Session-level lock, held across the per-file transactions below.
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            return await _apply_pending(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        if own:
            await conn.close()


async def _apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(_BOOTSTRAP)
    applied = {
        r["version"]: r
        for r in await conn.fetch(
            "SELECT version, name, checksum FROM agora_meta.migrations ORDER BY version"
        )
    }
    known = {m.version for m in migrations}
    for version, row in applied.items():
        if version not in known:
            raise MigrationError(
                f"migration {row['name']} is applied in the database but missing from the code "
                "(is this node older than the database?)"
            )
    done: list[str] = []
    for m in migrations:
        row = applied.get(m.version)
        if row is not None:
            if row["checksum"] != m.checksum:
                raise MigrationError(
                    f"migration {m.name}.sql was edited after it was applied "
                    f"(recorded checksum {row['checksum'][:12]}..., "
                    f"file now {m.checksum[:12]}...); "
                    "applied migrations are never edited: restore the file and add a new one"
                )
            continue
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO agora_meta.migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
        log.info("applied migration %s", m.name)
        done.append(m.name)
    return done
