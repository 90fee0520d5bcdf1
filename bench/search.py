"""``search``: ``GET /api/v1/search`` on the seeded data set, one query kind at a time.

Without ``--url`` one node is spawned on the configured services with the per-account search
limit off (``AGORA_SEARCH_RATE_LIMIT=0``). ``--users`` seeded users (``bench_<n>``, drawn at
random) sign in through ``POST /api/v1/auth/login``, as for ``feed``. For each kind in turn
(``--kinds``) a list of ``--queries`` prebuilt requests is made, each a random user's token and a
random query of that kind, and driven closed-loop at ``--concurrency`` connections for
``--warmup`` + ``--duration`` seconds with the client of ``feed`` (bench/load.py):

- ``word``: one word of the corpus vocabulary (bench/corpus.py), ``type=posts``;
- ``phrase``: two or three adjacent words of the seeded text (``seed.LOREM``), quoted,
  ``type=posts``;
- ``prefix``: the first 4 to 7 characters of a random seeded username, ``type=users``.

Before each kind's load a sample of its requests (``--probe``) is sent once and decoded, for
the mean items per page (the load itself only reads status and length) and to fail clearly when
the node has no search endpoint. Per kind: queries/s, latency, errors by status, items per page,
CPU of the node, the bench (and its event-loop lag), PostgreSQL and the machine, and the node's
database time by statement from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg

from bench.corpus import _WORDS as VOCABULARY
from bench.events import _cpu_figures, _cpu_mark, _db_time, _scrape
from bench.fixtures import PASSWORD
from bench.httpclient import build_get, split_url
from bench.load import run_load
from bench.nodes import login_all, start_nodes
from bench.procs import BenchError, ServerProcess, cpu_seconds, log, own_cpu_seconds, rss_mib
from bench.seed import BENCH_USERS, LOREM
from bench.services import Services
from bench.stats import Recorder

KINDS = ("word", "phrase", "prefix")
KIND_TYPE = {"word": "posts", "phrase": "posts", "prefix": "users"}
GOAL = {"concurrency": 50, "p99_ms_max": 50, "queries_per_s_min": 1000}
DEFAULT_POPULATION = 10_000
PREFIX_CHARS = (4, 7)
PHRASE_WORDS = (2, 3)
PROBE_CONCURRENCY = 4
LOOP_TICK = 0.01  # seconds between the event-loop lag samples
_SEEDED_WORDS = LOREM.split()[:-1]  # the last word may be cut short by the seed's substr


@dataclass(frozen=True)
class SearchOptions:
    concurrency: int
    duration: float
    warmup: float
    kinds: tuple[str, ...]
    users: int
    population: int | None  # draw from bench_1..bench_N; None: count them (or 10000 with --url)
    queries: int  # prebuilt requests per kind
    limit: int
    probe: int  # requests per kind sent once and decoded before the load
    min_posts: int
    seed: int


def parse_kinds(text: str) -> tuple[str, ...]:
    """``word,phrase`` -> ``("word", "phrase")``; unknown or no kinds are a BenchError."""
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise BenchError(f"--kinds takes a comma-separated list of {', '.join(KINDS)}")
    return kinds


def make_query(kind: str, rng: random.Random, population: int) -> str:
    """One query of ``kind``, as a user would type it."""
    if kind == "word":
        return rng.choice(VOCABULARY)
    if kind == "phrase":
        size = rng.randint(*PHRASE_WORDS)
        at = rng.randrange(len(_SEEDED_WORDS) - size + 1)
        return '"' + " ".join(_SEEDED_WORDS[at : at + size]) + '"'
    if kind == "prefix":
        name = f"bench_{rng.randint(1, population)}"
        return name[: rng.randint(*PREFIX_CHARS)]
    raise ValueError(kind)


def search_path(base: str, kind: str, query: str, limit: int) -> str:
    return f"{base}/api/v1/search?" + urlencode(
        {"q": query, "type": KIND_TYPE[kind], "limit": limit}
    )


async def _database_figures(database_url: str) -> tuple[int, int]:
    """(bench users, bench posts) in the configured database."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(f"""
            SELECT (SELECT count(*) FROM accounts.users WHERE {BENCH_USERS}) AS users,
                   (SELECT count(*) FROM content.posts WHERE author_id IN
                       (SELECT id FROM accounts.users WHERE {BENCH_USERS})) AS posts""")
    finally:
        await conn.close()
    assert row is not None
    return int(row["users"]), int(row["posts"])


async def _unanalyzed(database_url: str) -> dict[str, Any]:
    """Columns of the searched tables with no planner statistics, and their dead rows. On a
    machine with autovacuum off, a migration that adds the search columns leaves them without
    statistics until someone runs ``VACUUM ANALYZE``: the plans are then guesses."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("""
            SELECT t.schemaname || '.' || t.relname AS tab, t.n_dead_tup AS dead,
                   array(SELECT a.attname::text FROM pg_attribute a
                         WHERE a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped
                           AND NOT EXISTS (SELECT 1 FROM pg_stats s
                                           WHERE s.schemaname = t.schemaname
                                             AND s.tablename = t.relname
                                             AND s.attname = a.attname)
                         ORDER BY a.attnum) AS missing
            FROM pg_stat_user_tables t
            WHERE (t.schemaname, t.relname) IN (('content', 'posts'), ('accounts', 'users'))""")
    finally:
        await conn.close()
    return {
        r["tab"]: {"dead_rows": r["dead"], "columns_without_stats": list(r["missing"])}
        for r in rows
    }


class _LoopLag:
    """How late this process's event loop runs a timer due every ``LOOP_TICK`` seconds: the
    load's own delay in reading responses (uvloop's timers have 1 ms resolution)."""

    def __init__(self) -> None:
        self.lag = Recorder()
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._due = perf_counter() + LOOP_TICK
        self._handle = asyncio.get_running_loop().call_later(LOOP_TICK, self._tick)

    def _tick(self) -> None:
        now = perf_counter()
        self.lag.record(max(0.0, now - self._due))
        self._due = now + LOOP_TICK
        self._handle = asyncio.get_running_loop().call_later(LOOP_TICK, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def _probe(
    http: aiohttp.ClientSession, url: str, sample: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Send each (path, token) once and decode the answer: items per page, statuses, and the
    error codes met (the first message of each is logged)."""
    statuses: dict[int, int] = {}
    codes: dict[str, int] = {}
    items: list[int] = []
    with_cursor = 0
    gate = asyncio.Semaphore(PROBE_CONCURRENCY)

    async def one(path: str, token: str) -> None:
        nonlocal with_cursor
        async with gate, http.get(url + path, headers={"Authorization": f"Bearer {token}"}) as r:
            statuses[r.status] = statuses.get(r.status, 0) + 1
            try:
                body = await r.json(content_type=None)
            except ValueError:
                body = None
            if r.status == 200 and isinstance(body, dict) and isinstance(body.get("items"), list):
                items.append(len(body["items"]))
                with_cursor += body.get("next_cursor") is not None
                return
            error = body.get("error") if isinstance(body, dict) else None
            code = str(error.get("code")) if isinstance(error, dict) else f"http_{r.status}"
            if code not in codes:
                message = error.get("message") if isinstance(error, dict) else None
                log(f"  probe: HTTP {r.status} {code}: {message!r} for {path}")
            codes[code] = codes.get(code, 0) + 1

    try:
        await asyncio.gather(*(one(path, token) for path, token in sample))
    except aiohttp.ClientError as exc:
        raise BenchError(f"probing {url}/api/v1/search failed: {exc}") from exc
    return {
        "requests": len(sample),
        "status": {str(k): v for k, v in sorted(statuses.items())},
        "error_codes": codes,
        "pages": len(items),
        "items_per_page_mean": round(sum(items) / len(items), 2) if items else None,
        "empty_pages": sum(1 for n in items if n == 0),
        "pages_with_next_cursor": with_cursor,
    }


async def _run_kind(
    kind: str,
    options: SearchOptions,
    url: str,
    tokens: list[str],
    population: int,
    pid: int | None,
    http: aiohttp.ClientSession,
) -> dict[str, Any]:
    rng = random.Random(f"{options.seed}-{kind}")
    host, port, base = split_url(url)
    pairs = [
        (
            search_path(base, kind, make_query(kind, rng, population), options.limit),
            rng.choice(tokens),
        )
        for _ in range(options.queries)
    ]
    log(f"{kind}: probing {min(options.probe, len(pairs))} queries, e.g. {pairs[0][0]}")
    probe = await _probe(http, f"http://{host}:{port}", pairs[: options.probe])
    if probe["requests"] and probe["status"] == {"404": probe["requests"]}:
        raise BenchError(
            f"GET {base}/api/v1/search answered 404 to every probe: this node has no search "
            "endpoint (is the search commit in this build?)"
        )
    requests = [build_get(host, port, path, {"Authorization": f"Bearer {t}"}) for path, t in pairs]
    log(
        f"{kind}: {options.concurrency} connections, {options.warmup:g}s warm-up + "
        f"{options.duration:g}s over {len(requests)} queries"
    )
    metrics_before = [await _scrape(http, url)]
    node_cpu_before = cpu_seconds(pid) if pid else 0.0
    mark_before, own_before, started = _cpu_mark(), own_cpu_seconds(), perf_counter()
    lag = _LoopLag()
    lag.start()
    try:
        result = await run_load(
            host,
            port,
            requests,
            concurrency=options.concurrency,
            duration=options.duration,
            warmup=options.warmup,
        )
    finally:
        lag.stop()
    seconds = perf_counter() - started
    node_cpu = round(100 * (cpu_seconds(pid) - node_cpu_before) / seconds, 1) if pid else None
    mark_after = _cpu_mark()
    own = 100 * (own_cpu_seconds() - own_before) / seconds
    metrics_after = [await _scrape(http, url)]

    f = result.figures()
    latency = f["latency_ms"]
    met = (
        None
        if options.concurrency != GOAL["concurrency"]
        else f["errors"] == 0
        and latency["p99"] is not None
        and latency["p99"] < GOAL["p99_ms_max"]
        and f["requests_per_s"] >= GOAL["queries_per_s_min"]
    )
    lag_summary = lag.lag.summary_ms()
    out = {
        "type": KIND_TYPE[kind],
        "examples": [p for p, _ in pairs[:3]],
        "queries": f["requests"],
        "queries_per_s": f["requests_per_s"],
        "latency_ms": latency,
        "errors": f["errors"],
        "status": f["status"],
        "socket_errors": f["socket_errors"],
        "protocol_errors": f["protocol_errors"],
        "timeouts": f["timeouts"],
        "items_per_page_mean": probe["items_per_page_mean"],
        "probe": probe,
        "mib_per_s": f["mib_per_s"],
        "node_cpu_pct": node_cpu,
        "client_cpu_pct": f["client_cpu_pct"],
        "client_loop_lag_ms": {k: lag_summary[k] for k in ("p50", "p99", "max")},
        "cpu_pct": _cpu_figures(mark_before, mark_after, (node_cpu or 0.0) + own),
        "node_db_time": _db_time(metrics_before, metrics_after, seconds),
        "met": met,
    }
    log(
        f"{kind}: {f['requests_per_s']:,.0f} queries/s, p50 {latency['p50']} ms, p99 "
        f"{latency['p99']} ms, {f['errors']} errors, {probe['items_per_page_mean']} items/page"
    )
    return out


async def search(
    options: SearchOptions,
    *,
    services: Services,
    url: str | None = None,
    pid: int | None = None,
) -> dict[str, Any]:
    """Run the search benchmark against ``url`` (its process ``pid``, if known, for CPU and
    RSS), or against a node spawned on ``services``."""
    seeded_users, seeded_posts = await _database_figures(services.database_url)
    if seeded_posts < options.min_posts:
        raise BenchError(
            f"the configured database ({services.describe()}) holds {seeded_posts:,} bench posts, "
            f"fewer than --min-posts {options.min_posts:,}: run `python -m bench seed` (200,000 "
            "posts by default), or lower --min-posts"
        )
    if url is None and not seeded_users:
        raise BenchError("no bench users in the configured database: run `python -m bench seed`")
    node: ServerProcess | None = None
    try:
        if url is None:
            population = options.population or seeded_users
            node = (await start_nodes(services, 1, AGORA_SEARCH_RATE_LIMIT="0"))[0]
            url, pid = node.url, node.pid
        else:
            population = options.population or DEFAULT_POPULATION
        tables = await _unanalyzed(services.database_url)
        for name, t in tables.items():
            if t["columns_without_stats"]:
                log(
                    f"warning: {name} has columns without planner statistics "
                    f"({', '.join(t['columns_without_stats'])}): run VACUUM ANALYZE first"
                )
        picked = random.Random(options.seed).sample(
            range(1, population + 1), min(options.users, population)
        )
        started = time.monotonic()
        logged_in = await login_all(url, [f"bench_{n}" for n in picked], PASSWORD)
        if not logged_in:
            raise BenchError(f"no seeded user could log in at {url}")
        tokens = list(logged_in.values())
        log(f"{len(tokens)} users logged in ({time.monotonic() - started:.1f}s)")

        kinds: dict[str, Any] = {}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for kind in options.kinds:
                kinds[kind] = await _run_kind(kind, options, url, tokens, population, pid, http)
        node_rss = rss_mib(pid) if pid else None
    finally:
        if node is not None:
            node.stop()

    met = [k["met"] for k in kinds.values()]
    return {
        "target": "agora-search",
        "url": url,
        "database": services.describe(),
        "backend": "elasticsearch" if services.config.elasticsearch_url else "postgres",
        "bench_posts": seeded_posts,
        "bench_users": seeded_users,
        "tables": tables,
        "users": len(tokens),
        "population": population,
        "parameters": {
            "concurrency": options.concurrency,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "kinds": list(options.kinds),
            "queries_per_kind": options.queries,
            "limit": options.limit,
            "probe": options.probe,
            "seed": options.seed,
        },
        "kinds": kinds,
        "node_rss_mib": node_rss,
        "goal": GOAL,
        "met": None if None in met else all(met),
    }
