"""The wheel is the unit of deployment: built from the tree, installed in an empty venv, it runs
with no checkout present. What cannot run here (Docker) is at least checked for consistency."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml

from agora.storage import migrations
from tests.support.node import free_port
from tests.support.services import ServiceSet, create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_copies_what_exists_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        m = re.match(r"^COPY (?!--from)(.+) (\S+)$", line)
        if m:
            for source in m.group(1).split():
                assert (ROOT / source).exists(), source
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "STOPSIGNAL SIGTERM" in text
    # The runtime stage installs the wheel and copies nothing by hand: what the node reads from
    # disk (migrations, templates, static files) is package data (test_the_wheel_... below).
    runtime = text.split("\nFROM ")[-1]
    assert "COPY --from=build /wheels /wheels" in runtime
    assert [line for line in runtime.splitlines() if line.startswith("COPY")] == [
        "COPY --from=build /wheels /wheels"
    ]
    assert re.search(r"pip install .*--no-index .*/wheels/agora-\*\.whl", runtime)
    assert "MALLOC_ARENA_MAX=2" in runtime
    assert migrations.MIGRATIONS_DIR == ROOT / "agora" / "migrations"


def test_compose_file_is_valid_and_configures_every_service() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    nodes = {k: v for k, v in doc["services"].items() if k.startswith("node")}
    assert len(nodes) >= 2
    ids = set()
    for node in nodes.values():
        env = node["environment"]
        for var in ("AGORA_DATABASE_URL", "AGORA_REDIS_URL", "AGORA_AMQP_URL", "AGORA_JWT_SECRET"):
            assert var in env
        ids.add(env["AGORA_NODE_ID"])
    assert len(ids) == len(nodes)


def test_make_and_ci_entry_points() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.MULTILINE) and re.search(
        r"^test:", makefile, re.MULTILINE
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


# --- the wheel, installed in an empty venv, from a directory with no checkout -------------------


def _clean_env(**extra: str) -> dict[str, str]:
    """No AGORA_* and nothing that would let the checkout or this venv leak into the new one."""
    drop = ("AGORA_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


def _run(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _build_wheel(out: Path, tmp: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of what the Dockerfile's build stage copies (so that a
    build/ or egg-info of the checkout plays no part, and parallel runs do not share one)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in ("agora", "bench"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    proc = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        tmp,
        _clean_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("agora-*.whl")
    return wheel


def _wait_http(url: str, proc: subprocess.Popen[str], log: Path, within: float = 60) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                return int(exc.code)
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {within}s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[str], log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"did not stop on SIGTERM:\n{log.read_text()}") from None


def _wait_for_line(text: str, proc: subprocess.Popen[str], log: Path, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        if text in log.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} within {within}s:\n{log.read_text()}")


@pytest.fixture
def fresh_database(services: ServiceSet) -> Iterator[str]:
    name = f"agora_wheel_{secrets.token_hex(4)}"
    asyncio.run(create_database(services.pg_admin_dsn, name))
    yield services.database_dsn(name)
    asyncio.run(drop_database(services.pg_admin_dsn, name))


async def _recorded(dsn: str) -> list[tuple[int, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, name, checksum FROM agora_meta.migrations ORDER BY version"
        )
    finally:
        await conn.close()
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_installed_in_an_empty_venv_runs_every_command(
    tmp_path: Path, services: ServiceSet, fresh_database: str, redis_prefix: str
) -> None:
    started = time.monotonic()
    wheel = _build_wheel(tmp_path / "dist", tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    expected = {m.name + ".sql" for m in migrations.discover()}
    assert expected and {f"agora/migrations/{n}" for n in expected} <= names
    for data in ("agora/server/templates/docs.html", "agora/server/static/docs.css"):
        assert data in names

    venv, cwd = tmp_path / "venv", tmp_path / "run"
    cwd.mkdir()
    env = _clean_env()
    proc = _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    python, agora = venv / "bin" / "python", venv / "bin" / "agora"
    # With its dependencies, from the index (pip's cache makes the second time fast).
    proc = _run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd, env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # The installed package, not the checkout, is what runs.
    proc = _run([str(python), "-c", "import agora; print(agora.__file__)"], cwd, env)
    assert proc.returncode == 0, proc.stderr
    installed = Path(proc.stdout.strip()).resolve()
    site = next((venv / "lib").glob("python3*/site-packages")).resolve()
    assert installed.is_relative_to(site), installed
    assert not installed.is_relative_to(ROOT.resolve())
    installed_migrations = installed.parent / "migrations"
    assert {p.name for p in installed_migrations.glob("*.sql")} == expected

    env = _clean_env(
        AGORA_DATABASE_URL=fresh_database,
        AGORA_REDIS_URL=services.redis_url,
        AGORA_REDIS_PREFIX=f"{redis_prefix}wheel{secrets.token_hex(3)}:",
        AGORA_JWT_SECRET="w" * 40,
        AGORA_DATA_DIR=str(tmp_path / "var"),
    )

    # agora migrate: every migration on a fresh database, recorded as the checkout's runner
    # records them (same names, same checksums), then nothing more to do.
    proc = _run([str(agora), "migrate"], cwd, env)
    assert proc.returncode == 0, proc.stderr
    assert f"applied {len(expected)} migration(s)" in proc.stdout
    assert asyncio.run(_recorded(fresh_database)) == [
        (m.version, m.name, m.checksum) for m in migrations.discover()
    ]
    proc = _run([str(agora), "migrate"], cwd, env)
    assert proc.returncode == 0 and "applied 0 migration(s)" in proc.stdout, proc.stderr

    # agora admin
    proc = _run(
        [str(agora), "admin", "create-user", "--username", "wheelie", "--email",
         "wheelie@example.test", "--password", "long enough pw", "--role", "admin"],
        cwd,
        env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "created user wheelie" in proc.stdout

    # agora serve: /healthz and /readyz against the database and the local Redis; the docs page
    # and its static files come from the package data.
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        node = subprocess.Popen(
            [str(agora), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        assert _wait_http(base + "/readyz", node, log) == 200, log.read_text()
        assert _wait_http(base + "/healthz", node, log) == 200
        assert _wait_http(base + "/api/docs", node, log) == 200
        assert _wait_http(base + "/api/static/docs.css", node, log) == 200
    finally:
        assert _stop(node, log) == 0, log.read_text()

    # agora worker: starts, then stops on SIGTERM.
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [str(agora), "worker"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
    try:
        _wait_for_line("consumers", worker, log)
    finally:
        assert _stop(worker, log) == 0, log.read_text()

    # The failure this replaced: an installation without its migrations migrated nothing and
    # said so with exit 0. Now every command that migrates fails, saying why.
    for sql in installed_migrations.glob("*.sql"):
        sql.unlink()
    proc = _run([str(agora), "migrate"], cwd, env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no migration files" in proc.stderr and "applied" not in proc.stdout
    shutil.rmtree(installed_migrations)
    for command in (["serve", "--port", str(free_port())], ["worker"], ["migrate"]):
        proc = _run([str(agora), *command], cwd, env, timeout=60)
        assert proc.returncode == 1, (command, proc.stdout + proc.stderr)
        assert "migrations directory" in proc.stderr and "does not exist" in proc.stderr
    print(f"wheel built, installed and run in {time.monotonic() - started:.1f} s")
