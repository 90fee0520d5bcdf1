"""Configuration is validated at start-up; a bad value exits 2 with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agora.config import ConfigError, ensure_jwt_secret, load_config

BAD_VALUES = {
    "AGORA_WS_RATE_LIMIT": "fast",
    "AGORA_DATABASE_URL": "mysql://root@localhost/agora",
    "AGORA_REDIS_URL": "localhost:6379",
    "AGORA_AMQP_URL": "http://guest@localhost",
    "AGORA_ELASTICSEARCH_URL": "localhost:9200",
    "AGORA_NODE_ID": "has spaces",
    "AGORA_JWT_SECRET": "short",
    "AGORA_ENV": "staging",
    "AGORA_LOG_LEVEL": "LOUD",
    "AGORA_WS_OUTBOUND_QUEUE": "-5",
    "AGORA_WS_MAX_SESSIONS_PER_USER": "0",
    "AGORA_DB_POOL_MAX": "0",
    "AGORA_ACCESS_TOKEN_TTL": "0",
    "AGORA_REFRESH_TOKEN_TTL": "soon",
    "AGORA_EVENTS_GATHER": "-0.1",
}


@pytest.mark.parametrize("variable", sorted(BAD_VALUES))
def test_bad_values_name_the_variable(variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({variable: BAD_VALUES[variable]})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable + ": ")


def test_defaults_with_nothing_set() -> None:
    config = load_config({})
    assert config.database.embedded and config.redis.embedded
    assert config.ws.rate_limit == 20 and config.ws.outbound_queue == 1000
    assert config.ws.max_sessions_per_user == 100
    assert config.amqp_url is None and config.elasticsearch_url is None
    assert config.data_dir.name == "var"


def test_the_relays_gather_window_is_configurable() -> None:
    assert load_config({}).events.gather == 0.005
    assert load_config({"AGORA_EVENTS_GATHER": "0.05"}).events.gather == 0.05
    assert load_config({"AGORA_EVENTS_GATHER": "0"}).events.gather == 0


def test_token_lifetimes_are_configurable() -> None:
    config = load_config({"AGORA_ACCESS_TOKEN_TTL": "90", "AGORA_REFRESH_TOKEN_TTL": "3600"})
    assert (config.auth.access_ttl, config.auth.refresh_ttl) == (90, 3600)
    assert load_config({}).auth.access_ttl == 900


def test_rate_limit_zero_means_no_limit() -> None:
    assert load_config({"AGORA_WS_RATE_LIMIT": "0"}).ws.rate_limit == 0


def test_production_requires_a_jwt_secret() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"AGORA_ENV": "production"})
    assert info.value.variable == "AGORA_JWT_SECRET"
    assert load_config({"AGORA_ENV": "production", "AGORA_JWT_SECRET": "k" * 40}).production


def test_generated_secret_is_kept_and_warned_about(tmp_path: Path) -> None:
    warnings: list[str] = []
    config = load_config({"AGORA_DATA_DIR": str(tmp_path)})
    first = ensure_jwt_secret(config, warnings.append)
    second = ensure_jwt_secret(config, warnings.append)
    assert first.auth.jwt_secret and first.auth.jwt_secret == second.auth.jwt_secret
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o777 == 0o600
    assert len(warnings) == 2 and "AGORA_JWT_SECRET" in warnings[0]


def _agora(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    return subprocess.run(
        [sys.executable, "-m", "agora", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "variable,value", [("AGORA_WS_RATE_LIMIT", "-1"), ("AGORA_DATABASE_URL", "nonsense")]
)
def test_cli_exits_2_with_one_line(variable: str, value: str, tmp_path: Path) -> None:
    proc = _agora(["serve", "--port", "0"], {variable: value}, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], proc.stderr


def test_cli_production_without_secret_exits_2(tmp_path: Path) -> None:
    proc = _agora(["serve"], {"AGORA_ENV": "production"}, tmp_path)
    assert proc.returncode == 2
    assert "AGORA_JWT_SECRET" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_emptied_generated_secret_is_refused(tmp_path: Path) -> None:
    config = load_config({"AGORA_DATA_DIR": str(tmp_path)})
    (tmp_path / "jwt_secret").write_text("\n")
    with pytest.raises(ConfigError) as info:
        ensure_jwt_secret(config, lambda _message: None)
    assert info.value.variable == "AGORA_JWT_SECRET" and "delete it" in str(info.value)
