"""Smoke tests of ``python -m bench search`` at tiny scale, in the style of tests/test_bench.py:
the command runs as its own process and must print exactly one JSON object on stdout. Nothing
here asserts on speed."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from bench.corpus import _WORDS
from bench.procs import BenchError
from bench.search import KINDS, make_query, parse_kinds, search_path
from bench.seed import LOREM
from tests.support.bench import (
    bench,
    bench_env_fixture,  # noqa: F401 (the fixture "bench_env")
    report,
)
from tests.test_bench import SEED, _remove_bench_data, assert_latency


@pytest.fixture(scope="module")
def seeded(bench_env: dict[str, str], database_url: str) -> Iterator[dict[str, Any]]:
    """The tiny seed (300 posts), replacing any earlier bench data; removed afterwards."""
    yield report(bench("seed", *SEED, "--reset", env=bench_env))
    asyncio.run(_remove_bench_data(database_url))


def test_queries_of_each_kind_are_what_a_user_would_type() -> None:
    rng = random.Random(3)
    seeded_text = f" {LOREM} "
    for _ in range(200):
        assert make_query("word", rng, 40) in _WORDS
        phrase = make_query("phrase", rng, 40)
        assert phrase.startswith('"') and phrase.endswith('"')
        assert 2 <= len(phrase[1:-1].split()) <= 3 and f" {phrase[1:-1]} " in seeded_text
        prefix = make_query("prefix", rng, 40)
        assert 4 <= len(prefix) <= 7 and any(f"bench_{n}".startswith(prefix) for n in range(1, 41))
    path = search_path("/base", "phrase", '"coffee and tea"', 20)
    query = parse_qs(urlsplit(path).query)
    assert urlsplit(path).path == "/base/api/v1/search"
    assert query == {"q": ['"coffee and tea"'], "type": ["posts"], "limit": ["20"]}
    assert parse_kinds("prefix, word,word") == ("prefix", "word")
    assert parse_kinds(",".join(KINDS)) == KINDS
    with pytest.raises(BenchError):
        parse_kinds("word,fuzzy")


def test_search_refuses_a_data_set_below_min_posts(
    seeded: dict[str, Any], bench_env: dict[str, str]
) -> None:
    proc = bench("search", env=bench_env, ok=False)  # --min-posts defaults to 200,000
    assert proc.returncode == 1 and proc.stdout == ""
    assert "300 bench posts" in proc.stderr and "bench seed" in proc.stderr


@pytest.mark.slow
def test_search_drives_each_kind_on_a_spawned_node(
    seeded: dict[str, Any], bench_env: dict[str, str]
) -> None:
    out = report(
        bench(
            "search",
            "--min-posts",
            "300",
            "--users",
            "3",
            "--concurrency",
            "3",
            "--duration",
            "1",
            "--warmup",
            "0.5",
            "--queries",
            "30",
            "--probe",
            "10",
            env=bench_env,
            timeout=180,
        )
    )
    assert out["target"] == "agora-search" and out["bench_posts"] == 300 and out["users"] == 3
    assert out["backend"] == "postgres" and out["met"] is None  # the goal is at concurrency 50
    assert list(out["kinds"]) == list(KINDS)
    for kind, k in out["kinds"].items():
        assert k["type"] == ("users" if kind == "prefix" else "posts")
        assert k["queries"] > 0 and k["queries_per_s"] > 0, (kind, k)
        assert k["errors"] == 0 and k["status"] == {"200": k["queries"]}, (kind, k)
        assert_latency(k["latency_ms"])
        probe = k["probe"]
        assert probe["requests"] == probe["pages"] == 10, (kind, probe)
        assert 0 <= k["items_per_page_mean"] <= 20
        assert k["node_cpu_pct"] > 0 and k["client_loop_lag_ms"]["max"] is not None
    # Every prefix (4-7 characters of bench_1..bench_40) names several seeded users.
    assert out["kinds"]["prefix"]["items_per_page_mean"] > 0
    assert out["node_rss_mib"] > 0
