"""What cannot run here (Docker) is at least checked for consistency with the tree."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agora.storage import migrations

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
    # The migrations land where the runner looks for them (next to the package's parent).
    site = "/usr/local/lib/python3.11/site-packages"
    assert f"COPY migrations {site}/migrations" in text
    assert migrations.MIGRATIONS_DIR == ROOT / "migrations"


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
