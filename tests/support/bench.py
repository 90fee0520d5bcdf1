"""What the tests of the benchmark suite (tests/test_bench*.py) share: running ``python -m bench``
as its own process, reading the one JSON object it prints, and the services it runs on.

``bench_env`` is a fixture: import ``bench_env_fixture`` into the test module to use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import JWT_SECRET
from tests.support.services import ServiceSet

ROOT = Path(__file__).resolve().parents[2]


def bench(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bench ...`` from the repository root."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON object a command prints (nothing else may be on stdout)."""
    data = json.loads(proc.stdout)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module", name="bench_env")
def bench_env_fixture(
    services: ServiceSet,
    database_url: str,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The environment of a bench command: this session's database, Redis namespace and JWT
    secret, and a data dir of the module's own."""
    return {
        "AGORA_DATABASE_URL": database_url,
        "AGORA_REDIS_URL": services.redis_url,
        "AGORA_REDIS_PREFIX": redis_prefix,
        "AGORA_JWT_SECRET": JWT_SECRET,
        "AGORA_DATA_DIR": str(tmp_path_factory.mktemp("bench-var")),
    }
