"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from agora.errors import AppError, forbidden
from agora.protocol.codec import encode
from agora.server import keys
from agora.server.clientip import is_loopback
from agora.server.routing import parse_bearer
from agora.storage.redis import ping as redis_ping


async def healthz(request: web.Request) -> web.Response:
    """200 while the process runs."""
    return web.json_response({"status": "ok", "node_id": request.app[keys.CONFIG].node_id})


async def readyz(request: web.Request) -> web.Response:
    """200 only when every backing service answers; 503 with what failed otherwise."""
    app = request.app
    checks: dict[str, asyncio.Future[bool] | asyncio.Task[bool]] = {
        "postgres": asyncio.ensure_future(app[keys.DB].ping()),
        "redis": asyncio.ensure_future(redis_ping(app[keys.REDIS])),
    }
    amqp = app.get(keys.AMQP)
    if amqp is not None:
        checks["rabbitmq"] = asyncio.ensure_future(amqp.ensure())
    bus = app.get(keys.EVENTS)
    events = asyncio.ensure_future(bus.health()) if bus is not None else None
    search = app.get(keys.SEARCH)
    searching = asyncio.ensure_future(search.backend.health()) if search is not None else None
    await asyncio.gather(
        *checks.values(),
        *([events] if events else []),
        *([searching] if searching else []),
        return_exceptions=True,
    )
    results: dict[str, object] = {
        name: ("ok" if (not f.exception() and f.result()) else "unavailable")
        for name, f in checks.items()
    }
    if events is not None:
        # Events wait in the outbox while the broker is away: writes still succeed, but the
        # node is not ready (what others react to is not flowing) and says how much waits.
        if events.exception() is not None:
            results["events"] = "unavailable"
        else:
            flowing, detail = events.result()
            results["events"] = {"status": "ok" if flowing else "waiting", **detail}
    ready = all(
        v == "ok" or (isinstance(v, dict) and v.get("status") == "ok") for v in results.values()
    )
    if search is not None and searching is not None:
        # Reported, not required: without its search backend a node still serves everything
        # else (search answers 503 search_unavailable), so it stays in the load balancer.
        results["search"] = (
            searching.result()
            if searching.exception() is None
            else {"status": "unavailable", "backend": search.backend.name}
        )
    body = {"status": "ready" if ready else "unavailable", "checks": results}
    return web.Response(
        body=encode(body), status=200 if ready else 503, content_type="application/json"
    )


def metrics_token_matches(header: str | None, token: str | None) -> bool:
    """``Authorization: Bearer <AGORA_METRICS_TOKEN>``, compared in constant time. Header bytes
    that are not UTF-8 reach us as surrogates: they are compared as they came, never a 500."""
    try:
        given = parse_bearer(header) or ""
    except AppError:
        return False
    return bool(token) and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), (token or "").encode()
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; loopback callers only, others with ``AGORA_METRICS_TOKEN`` as bearer.
    Behind a trusted proxy the client it names counts, not the proxy (which may share the host)."""
    if not is_loopback(request):
        token = request.app[keys.CONFIG].metrics_token
        if not metrics_token_matches(request.headers.get("Authorization"), token):
            raise forbidden("metrics are served to loopback or with the metrics token")
    m = request.app[keys.METRICS]
    resp = web.Response(body=m.render())
    resp.headers["Content-Type"] = m.content_type
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
