"""``/api/openapi.json`` and ``/api/docs``."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from agora import __version__
from agora.protocol.codec import encode
from agora.server import keys
from agora.server.openapi import build

SPEC_KEY = web.AppKey("openapi_spec", bytes)


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SPEC_KEY], content_type="application/json")


@aiohttp_jinja2.template("docs.html")
async def docs_page(request: web.Request) -> dict[str, str]:
    return {
        "title": "Agora API",
        "version": __version__,
        "spec_url": "/api/openapi.json",
        "static": "/api/static",
        "node_id": request.app[keys.CONFIG].node_id,
    }


def add_routes(app: web.Application, static_dir: str) -> None:
    """Call after every REST endpoint is mounted: the document is built once, here."""
    app[SPEC_KEY] = encode(build(app[keys.ENDPOINTS]))
    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_get("/api/docs", docs_page)
    app.router.add_static("/api/static", static_dir, name="static")
