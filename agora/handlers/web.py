"""The web client: the shell page at ``/`` and its static files under ``/static/``.

The client itself lives in ``agora/web/``: ``templates/index.html`` (rendered here) and
``static/`` (plain ES modules and CSS, no build step; ``static/app.js`` is the entry). It talks to
the node through the public REST API and the WebSocket, like any other client, and signs in
through ``/api/v1/auth/web/*`` (handlers/auth.py) so that its refresh token stays in an HttpOnly
cookie.

The page's Content-Security-Policy allows script, style, fonts and connections from this origin
only, images from this origin plus ``data:``/``blob:`` (previews and blurhash placeholders), and
nothing else: no inline script, no other host.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from agora import __version__
from agora.server import keys

WEB = Path(__file__).resolve().parent.parent / "web"
STATIC = WEB / "static"
TEMPLATES = WEB / "templates"
STATIC_PREFIX = "/static"


def content_security_policy(request: web.Request) -> str:
    scheme = "wss" if request.scheme == "https" or request.secure else "ws"
    sockets = f"{scheme}://{request.host}" if request.host else ""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "font-src 'self'",
            "manifest-src 'self'",
            f"connect-src 'self' {sockets}".strip(),
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


async def shell(request: web.Request) -> web.Response:
    response = aiohttp_jinja2.render_template(
        "index.html",
        request,
        {
            "static": STATIC_PREFIX,
            "version": __version__,
            "node_id": request.app[keys.CONFIG].node_id,
        },
    )
    response.headers["Content-Security-Policy"] = content_security_policy(request)
    response.headers["Cache-Control"] = "no-cache"
    return response


async def _revalidate_static(request: web.Request, response: web.StreamResponse) -> None:
    """Module URLs carry no version (no build step), so browsers revalidate them each load
    (a 304 from Last-Modified when unchanged) and a new release is never half-cached."""
    if request.path.startswith(STATIC_PREFIX + "/"):
        response.headers.setdefault("Cache-Control", "no-cache")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", shell)
    app.router.add_static(STATIC_PREFIX, STATIC, name="web_static")
    app.on_response_prepare.append(_revalidate_static)
