"""`agora migrate` and `agora admin ...` act on the configured database and exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.support.api import unique


def _agora(args: list[str], database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(AGORA_DATABASE_URL=database_url, AGORA_JWT_SECRET="c" * 40)
    return subprocess.run(
        [sys.executable, "-m", "agora", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _role(database_url: str, username: str) -> str | None:
    conn = await asyncpg.connect(database_url)
    try:
        role: str | None = await conn.fetchval(
            "SELECT role FROM accounts.users WHERE username = $1", username
        )
        return role
    finally:
        await conn.close()


async def test_migrate_is_idempotent(database_url: str, tmp_path: Path) -> None:
    proc = _agora(["migrate"], database_url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "applied 0 migration(s)" in proc.stdout


async def test_admin_create_user_and_set_role(database_url: str, tmp_path: Path) -> None:
    name = unique("mod")
    proc = _agora(
        [
            "admin",
            "create-user",
            "--username",
            name,
            "--email",
            f"{name}@example.test",
            "--password",
            "long enough pw",
            "--role",
            "moderator",
        ],
        database_url,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert await _role(database_url, name) == "moderator"
    proc = _agora(
        ["admin", "set-role", "--username", name.upper(), "--role", "admin"], database_url, tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert await _role(database_url, name) == "admin"
    # Duplicates and unknown users fail with a message, not a traceback.
    proc = _agora(
        [
            "admin",
            "create-user",
            "--username",
            name,
            "--email",
            "x@example.test",
            "--password",
            "long enough pw",
        ],
        database_url,
        tmp_path,
    )
    assert proc.returncode == 1 and "already taken" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _agora(
        ["admin", "set-role", "--username", unique("ghost"), "--role", "admin"],
        database_url,
        tmp_path,
    )
    assert proc.returncode == 1 and "not found" in proc.stderr
