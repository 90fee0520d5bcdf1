"""``feed``: ``GET /api/v1/feed`` (or ``--path``) as seeded users, against baseline-http.

Without ``--url`` one node is spawned on the configured services. ``--users`` seeded users
(``bench_<n>``, drawn at random) sign in through ``POST /api/v1/auth/login``; the load then
rotates over their bearer tokens, one prebuilt request per user. Unless ``--no-baseline``,
baseline-http runs right after with the same concurrency and duration, once the node is stopped
so the two never share the CPU.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.baseline_http import baseline_http
from bench.fixtures import PASSWORD
from bench.httpclient import build_get, split_url
from bench.load import run_load
from bench.nodes import login_all, start_nodes
from bench.procs import BenchError, ServerProcess, log
from bench.seed import BENCH_USERS
from bench.services import Services

GOAL = {"ratio_rps_min": 0.4, "p99_ms_max": 50}
DEFAULT_POPULATION = 10_000


@dataclass(frozen=True)
class FeedOptions:
    concurrency: int
    duration: float
    warmup: float
    path: str
    users: int
    population: int | None  # draw from bench_1..bench_N; None: count them (or 10000 with --url)
    baseline: bool


async def _seeded_users(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count = int(await conn.fetchval(f"SELECT count(*) FROM accounts.users WHERE {BENCH_USERS}"))
    finally:
        await conn.close()
    if not count:
        raise BenchError("no bench users in the configured database: run `python -m bench seed`")
    return count


async def feed(
    options: FeedOptions, *, url: str | None = None, services: Services | None = None
) -> dict[str, Any]:
    """Run the feed benchmark against ``url``, or against a node spawned on ``services``."""
    node: ServerProcess | None = None
    try:
        if url is None:
            assert services is not None
            population = options.population or await _seeded_users(services.database_url)
            node = (await start_nodes(services, 1))[0]
            url = node.url
        else:
            population = options.population or DEFAULT_POPULATION
        picked = random.sample(range(1, population + 1), min(options.users, population))
        started = time.monotonic()
        tokens = await login_all(url, [f"bench_{n}" for n in picked], PASSWORD)
        if not tokens:
            raise BenchError(f"no seeded user could log in at {url}")
        log(
            f"{len(tokens)} users logged in ({time.monotonic() - started:.1f}s); driving GET "
            f"{options.path} with {options.concurrency} connections, {options.warmup:.0f}s "
            f"warm-up + {options.duration:.0f}s"
        )

        host, port, base = split_url(url)
        requests = [
            build_get(host, port, base + options.path, {"Authorization": f"Bearer {t}"})
            for t in tokens.values()
        ]
        cpu_before = node.cpu_seconds() if node else 0.0
        result = await run_load(
            host,
            port,
            requests,
            concurrency=options.concurrency,
            duration=options.duration,
            warmup=options.warmup,
        )
        figures = result.figures()
        node_rss = node.rss_mib() if node else None
        node_cpu = (
            round(100 * (node.cpu_seconds() - cpu_before) / (options.duration + options.warmup), 1)
            if node
            else None
        )
    finally:
        if node is not None:
            node.stop()

    baseline = (
        await baseline_http(options.concurrency, options.duration, options.warmup)
        if options.baseline
        else None
    )
    ratio = (
        round(figures["requests_per_s"] / baseline["requests_per_s"], 3)
        if baseline and baseline["requests_per_s"]
        else None
    )
    p99 = figures["latency_ms"]["p99"]
    met = (
        None
        if ratio is None
        else ratio >= GOAL["ratio_rps_min"]
        and p99 is not None
        and p99 <= GOAL["p99_ms_max"]
        and figures["errors"] == 0
    )
    return {
        "target": "agora-feed",
        "url": url,
        "path": options.path,
        "users": len(tokens),
        "feed": figures,
        "baseline_http": baseline,
        "ratio_rps": ratio,
        "node_rss_mib": node_rss,
        "node_cpu_pct": node_cpu,
        "goal": GOAL,
        "met": met,
    }
