"""What every response says to browsers: security headers, and cross-origin access (CORS) for
the origins an operator allows (issue 12, point 7).

Headers (set on every response, errors, pages and WebSocket upgrades included, unless the
handler chose its own): ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY`` and a ``Content-Security-Policy`` (``default-src 'none';
frame-ancestors 'none'`` for JSON, ``frame-ancestors 'none'`` for the rest: no page of Agora may
be framed), and ``Strict-Transport-Security`` when ``AGORA_HSTS_SECONDS`` is set.

CORS: a request whose ``Origin`` is in ``AGORA_CORS_ORIGINS`` (or any, with ``*``) gets
``Access-Control-Allow-Origin`` for that origin (with ``Vary: Origin``) and the headers a client
needs to read exposed; a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from it
is answered 204 with the methods and headers allowed. A preflight from any other origin is 403
in the error envelope. Tokens travel in the Authorization header, never in cookies, so no
credentials mode is offered.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from agora.errors import forbidden
from agora.server import keys
from agora.server.routing import RATE_HEADERS

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, If-None-Match, Range, X-Request-ID"
EXPOSE_HEADERS = (
    "Retry-After, X-Request-ID, ETag, Content-Range, "
    "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset"
)
PREFLIGHT_MAX_AGE = "600"


def _allowed(request: web.Request) -> str | None:
    """The request's Origin when the configuration allows it."""
    origin = request.headers.get("Origin")
    if not origin:
        return None
    allowed = request.app[keys.CONFIG].cors_origins
    return origin if "*" in allowed or origin.rstrip("/") in allowed else None


@web.middleware
async def cors_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Preflights are answered here, before routing (no route has an OPTIONS handler)."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    origin = _allowed(request)
    if origin is None:
        raise forbidden("cross-origin requests from this origin are not allowed")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin",
        },
    )


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    rate = request.get(RATE_HEADERS)  # the API's rate limits (set already on most answers)
    if rate and "X-RateLimit-Limit" not in headers:
        headers.update(rate)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("X-Frame-Options", "DENY")
    if "Content-Security-Policy" not in headers:
        json = (response.content_type or "").endswith("json")
        headers["Content-Security-Policy"] = (
            "default-src 'none'; frame-ancestors 'none'" if json else "frame-ancestors 'none'"
        )
    hsts = request.app[keys.CONFIG].hsts_seconds
    if hsts:
        headers.setdefault("Strict-Transport-Security", f"max-age={hsts}; includeSubDomains")
    origin = _allowed(request)
    if origin is not None and "Access-Control-Allow-Origin" not in headers:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        headers.add("Vary", "Origin")


def install(app: web.Application) -> None:
    app.on_response_prepare.append(on_prepare)
