"""``feed``: ``GET /api/v1/feed`` (or ``--path``) as seeded users, against baseline-http.

Without ``--url`` one node is spawned on the configured services. ``--users`` seeded users
(``bench_<n>``, drawn at random) sign in through ``POST /api/v1/auth/login``; the load then
rotates over their bearer tokens, one prebuilt request per user. Unless ``--no-baseline``,
baseline-http runs right after with the same concurrency and duration, once the node is stopped
so the two never share the CPU.

The spawned node runs with rate limits on (``--limits on``, scaled out of reach) or off;
``--limits both`` measures the limiter's cost instead: a fresh node per round, the variants
interleaved, no baseline (see bench/limits.py).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.baseline_http import baseline_http
from bench.events import _cpu_figures, _cpu_mark
from bench.fixtures import PASSWORD
from bench.httpclient import build_get, split_url
from bench.limits import (
    CHOICES,
    VARIANTS,
    diff,
    goal_met,
    limits_env,
    pct_change,
    probe,
    schedule,
    summarise,
)
from bench.limits import GOAL as LIMITS_GOAL
from bench.load import run_load
from bench.nodes import login_all, start_nodes
from bench.procs import BenchError, ServerProcess, log, own_cpu_seconds
from bench.seed import BENCH_USERS
from bench.services import Services

GOAL = {"ratio_rps_min": 0.4, "p99_ms_max": 50}
DEFAULT_POPULATION = 10_000
RELOGIN_AFTER_S = 600  # access tokens live 15 min (AGORA_ACCESS_TTL's default)


@dataclass(frozen=True)
class FeedOptions:
    concurrency: int
    duration: float
    warmup: float
    path: str
    users: int
    population: int | None  # draw from bench_1..bench_N; None: count them (or 10000 with --url)
    baseline: bool
    limits: str | None = None  # on | off | both; None: on (spawned node), the node's own (--url)
    rounds: int = 3  # with limits "both": rounds of each variant


async def _seeded_users(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        count = int(await conn.fetchval(f"SELECT count(*) FROM accounts.users WHERE {BENCH_USERS}"))
    finally:
        await conn.close()
    if not count:
        raise BenchError("no bench users in the configured database: run `python -m bench seed`")
    return count


def _check_limits(options: FeedOptions, url: str | None) -> None:
    if options.limits not in (None, *CHOICES):
        raise BenchError(f"--limits must be one of {', '.join(CHOICES)}")
    if url is not None and options.limits is not None:
        raise BenchError("--limits configures the spawned node; it cannot be used with --url")
    if options.limits == "both" and options.rounds < 2:
        raise BenchError("--limits both needs --rounds >= 2")


async def _drive(
    options: FeedOptions, url: str, tokens: dict[str, str], node: ServerProcess | None
) -> dict[str, Any]:
    """One closed-loop load on ``url`` rotating over ``tokens``: the load figures, and the
    node's RSS after it and CPU over warm-up + window (``None`` without a spawned node)."""
    host, port, base = split_url(url)
    requests = [
        build_get(host, port, base + options.path, {"Authorization": f"Bearer {t}"})
        for t in tokens.values()
    ]
    cpu_before = node.cpu_seconds() if node else 0.0
    own_before, mark = own_cpu_seconds(), _cpu_mark()
    result = await run_load(
        host,
        port,
        requests,
        concurrency=options.concurrency,
        duration=options.duration,
        warmup=options.warmup,
    )
    after = _cpu_mark()
    figures = result.figures()
    figures["node_rss_mib"] = node.rss_mib() if node else None
    node_cpu_s = node.cpu_seconds() - cpu_before if node else 0.0
    figures["node_cpu_pct"] = (
        round(100 * node_cpu_s / (options.duration + options.warmup), 1) if node else None
    )
    # The whole machine over the same span (other work on the box shows as everything_else).
    known = 100 * (node_cpu_s + own_cpu_seconds() - own_before) / (after.at - mark.at)
    figures["cpu_pct"] = _cpu_figures(mark, after, known)
    return figures


async def _login(url: str, picked: list[int]) -> dict[str, str]:
    started = time.monotonic()
    tokens = await login_all(url, [f"bench_{n}" for n in picked], PASSWORD)
    if not tokens:
        raise BenchError(f"no seeded user could log in at {url}")
    log(f"{len(tokens)} users logged in ({time.monotonic() - started:.1f}s)")
    return tokens


async def feed(
    options: FeedOptions, *, url: str | None = None, services: Services | None = None
) -> dict[str, Any]:
    """Run the feed benchmark against ``url``, or against a node spawned on ``services``."""
    _check_limits(options, url)
    if options.limits == "both":
        assert services is not None
        return await feed_limits(options, services)
    node: ServerProcess | None = None
    limits = None if url is not None else options.limits or "on"
    try:
        if url is None:
            assert services is not None
            population = options.population or await _seeded_users(services.database_url)
            node = (await start_nodes(services, 1, **limits_env(limits or "on")))[0]
            url = node.url
        else:
            population = options.population or DEFAULT_POPULATION
        picked = random.sample(range(1, population + 1), min(options.users, population))
        tokens = await _login(url, picked)
        log(
            f"driving GET {options.path} with {options.concurrency} connections, "
            f"{options.warmup:.0f}s warm-up + {options.duration:.0f}s"
            + (f", rate limits {limits}" if limits else "")
        )
        figures = await _drive(options, url, tokens, node)
        node_rss = figures.pop("node_rss_mib")
        node_cpu = figures.pop("node_cpu_pct")
        figures.pop("cpu_pct")
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
        "limits": limits,
        "feed": figures,
        "baseline_http": baseline,
        "ratio_rps": ratio,
        "node_rss_mib": node_rss,
        "node_cpu_pct": node_cpu,
        "goal": GOAL,
        "met": met,
    }


# Figures of a round that the variants' summaries give (medians over the rounds; errors summed).
ROUND_KEYS = (
    "requests_per_s",
    "latency_ms.p50",
    "latency_ms.p90",
    "latency_ms.p99",
    "latency_ms.p999",
    "latency_ms.mean",
    "errors",
    "node_cpu_pct",
    "node_cpu_us_per_request",
    "client_cpu_pct",
    "cpu_pct.machine",
    "cpu_pct.everything_else",
)
_TOP_KEYS = tuple(dict.fromkeys(k.split(".")[0] for k in ROUND_KEYS))


async def feed_limits(options: FeedOptions, services: Services) -> dict[str, Any]:
    """``--limits both``: the feed load on a fresh node per round, rate limits on and off
    interleaved (:func:`bench.limits.schedule`); medians per variant and the deltas."""
    population = options.population or await _seeded_users(services.database_url)
    picked = random.sample(range(1, population + 1), min(options.users, population))
    order = schedule(options.rounds)
    rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    tokens: dict[str, str] = {}
    logged_in_at = -math.inf
    for i, variant in enumerate(order):
        node = (await start_nodes(services, 1, **limits_env(variant)))[0]
        try:
            if time.monotonic() - logged_in_at > RELOGIN_AFTER_S:  # access tokens expire
                tokens = await _login(node.url, picked)
                logged_in_at = time.monotonic()
            log(
                f"round {i + 1}/{len(order)}: rate limits {variant}; GET {options.path} with "
                f"{options.concurrency} connections, {options.warmup:g}s warm-up + "
                f"{options.duration:g}s"
            )
            limit_header = await probe(node.url, next(iter(tokens.values())))
            figures = await _drive(options, node.url, tokens, node)
            figures["x_ratelimit_limit"] = limit_header
        finally:
            node.stop()
        rps = figures["requests_per_s"]
        figures["node_cpu_us_per_request"] = (
            round(figures["node_cpu_pct"] * 1e4 / rps, 1) if rps else None
        )
        log(
            f"  {rps:.0f} requests/s, p50 {figures['latency_ms']['p50']} ms, "
            f"p99 {figures['latency_ms']['p99']} ms, {figures['errors']} errors, other work on "
            f"the box {figures['cpu_pct']['everything_else']}% CPU"
        )
        rounds[variant].append({k: figures[k] for k in (*_TOP_KEYS, "status", "x_ratelimit_limit")})
    variants = {v: {**summarise(rounds[v], ROUND_KEYS), "rounds": rounds[v]} for v in VARIANTS}
    on, off = variants["on"], variants["off"]
    delta = {
        "requests_per_s_pct": pct_change(on["requests_per_s"], off["requests_per_s"]),
        "p50_ms": diff(on["latency_ms"]["p50"], off["latency_ms"]["p50"]),
        "p99_ms": diff(on["latency_ms"]["p99"], off["latency_ms"]["p99"]),
        "node_cpu_us_per_request": diff(
            on["node_cpu_us_per_request"], off["node_cpu_us_per_request"]
        ),
    }
    return {
        "target": "agora-feed-limits",
        "path": options.path,
        "users": len(tokens),
        "limits": "both",
        "rate_limit_scale": services.node_env("-").get("AGORA_RATE_LIMIT_SCALE"),
        "parameters": {
            "concurrency": options.concurrency,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "rounds": options.rounds,
        },
        "order": order,
        "variants": variants,
        "delta": delta,
        "goal": LIMITS_GOAL,
        "met": goal_met(
            delta["requests_per_s_pct"], [delta["p99_ms"]], on["errors"] + off["errors"]
        ),
    }
