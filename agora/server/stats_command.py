"""``agora admin stats``: the figures of ``GET /admin/stats``, from the configured PostgreSQL
and Redis, as a table or (``--json``) as the endpoint's JSON."""

from __future__ import annotations

import asyncio
import sys
from datetime import date

from agora.clock import Clock
from agora.config import Config
from agora.errors import AppError
from agora.protocol.codec import encode
from agora.protocol.stats import StatsOut
from agora.services.stats import StatsService
from agora.storage import redis as redis_store
from agora.storage.accounts import AccountStore
from agora.storage.db import Database
from agora.storage.stats import StatsStore

COLUMNS = ("day", "dau", "signups", "posts", "comments", "reactions", "messages")


def table(out: StatsOut) -> str:
    """The figures as a plain-text table, then the summary lines."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for d in out.days:
        rows.append(
            (
                d.day.isoformat(),
                "-" if d.dau is None else str(d.dau),
                *(str(getattr(d, c)) for c in COLUMNS[2:]),
            )
        )
    t = out.totals
    rows.append(("total", "", *(str(getattr(t, c)) for c in COLUMNS[2:])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]

    def fig(n: int | None) -> str:
        return "-" if n is None else str(n)

    lines += [
        "",
        f"weekly active users (7 days to {out.to}): {fig(out.wau)}",
        f"monthly active users (30 days to {out.to}): {fig(out.mau)}",
        f"sessions online now: {out.online_sessions} ({out.online_users} users)",
    ]
    return "\n".join(lines)


async def command(config: Config, first: date | None, last: date | None, as_json: bool) -> int:
    assert config.database.url and config.redis.url
    db = await Database.connect(config.database.url, min_size=1, max_size=2)
    redis = redis_store.connect(config.redis.url, max_connections=4)
    try:
        service = StatsService(
            StatsStore(db),
            AccountStore(db),
            redis,
            redis_store.Keys(config.redis.prefix),
            Clock(),
            config.cluster.node_timeout,
        )
        try:
            out = await service.stats(first, last)
        except AppError as exc:
            detail = "; ".join(f"{k}: {v}" for k, v in (exc.fields or {}).items())
            print(f"agora: {exc.message}" + (f" ({detail})" if detail else ""), file=sys.stderr)
            return 2
        print(encode(out).decode() if as_json else table(out))
        return 0
    finally:
        await redis.aclose()
        await asyncio.wait_for(db.close(), 5)
