"""``baseline-http``: the ceiling of the stack for a feed page.

A bare aiohttp server on uvloop (no middleware, no database, no Redis) with one GET handler
answering a page of 20 posts, built from Agora's own wire types (``Page[PostOut]``) and encoded
with msgspec on every request, so the body has the shape and size of a real feed page. Whatever
the node adds on top (auth, SQL, Redis, visibility, presenters) shows as the gap to this.

Run as a child process: ``python -m bench.baseline_http --port P``.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiohttp import web

from agora.protocol.accounts import UserOut
from agora.protocol.common import Page
from agora.protocol.content import PostOut
from agora.protocol.cursor import encode_cursor
from bench.corpus import POST_CHARS, filler
from bench.httpclient import build_get
from bench.load import run_load
from bench.procs import log, serve_app, spawn_module

PATH = "/api/v1/feed?limit=20"
PAGE_SIZE = 20
_ID0 = 7_000_000_000_000_000  # ids of the size agora.next_id produces a year after its epoch


def feed_page(size: int = PAGE_SIZE) -> Page[PostOut]:
    """A feed page like the node's: ``size`` posts by varied authors, with counters and cursor."""
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    low, high = POST_CHARS
    items = []
    for i in range(size):
        created = now - timedelta(minutes=37 * i)
        author = UserOut(
            id=str(_ID0 + 1000 + i % 7),
            username=f"bench_{4000 + i % 7}",
            display_name=f"Bench User {4000 + i % 7}",
            bio="",
            avatar_url=None,
            created_at=now - timedelta(days=90),
        )
        items.append(
            PostOut(
                id=str(_ID0 + 500_000 - i * 4096),
                author=author,
                text=filler(low + (high - low) * i // max(1, size - 1), seed=i),
                visibility=("friends", "public", "friends", "private")[i % 4],
                media=[],
                created_at=created,
                updated_at=created,
                comment_count=i % 3,
                reaction_counts={"like": i % 5, "love": i % 2} if i % 3 else {},
                my_reaction=None,
            )
        )
    return Page(items=items, next_cursor=encode_cursor("feed", before=_ID0 + 500_000 - 19 * 4096))


def make_app() -> web.Application:
    """The baseline app: GET /api/v1/feed answers the page, encoded per request."""
    page = feed_page()
    encode = msgspec.json.Encoder().encode

    async def feed(request: web.Request) -> web.Response:
        return web.Response(body=encode(page), content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/feed", feed)
    return app


async def baseline_http(concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    """Spawn the baseline server, drive it, stop it; return the report."""
    server = spawn_module("bench.baseline_http")
    try:
        await server.wait_ready("/api/v1/feed", timeout=30)
        log(
            f"baseline-http on {server.url}: {concurrency} connections, {warmup:.0f}s warm-up "
            f"+ {duration:.0f}s"
        )
        cpu_before = server.cpu_seconds()
        request = build_get("127.0.0.1", server.port, PATH)
        result = await run_load(
            "127.0.0.1",
            server.port,
            [request],
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
        )
        server_cpu = server.cpu_seconds() - cpu_before
        figures = result.figures()
        figures.update(
            target="baseline-http",
            server_rss_mib=server.rss_mib(),
            server_cpu_pct=round(100 * server_cpu / (duration + warmup), 1),
            body_bytes=len(msgspec.json.encode(feed_page())),
        )
        return figures
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="baseline HTTP server (child of the bench)")
    parser.add_argument("--port", type=int, required=True)
    serve_app(make_app(), parser.parse_args().port)


if __name__ == "__main__":
    main()
