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

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from agora import __version__
from agora.errors import not_found
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


@dataclass(frozen=True, slots=True)
class _File:
    stamp: tuple[int, int]  # (mtime_ns, size) when read: a changed file is read again
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str
    last_modified: str


class StaticFiles:
    """The client's files, served from memory. There are few and they are small (about
    110 KB): a page's dozen modules then cost a dictionary lookup and a ``stat`` each instead
    of an open and a read in the default executor (which made a cold page wait about 200 ms on
    them). Module URLs carry no version (no build step), so browsers revalidate each one every
    load (``no-cache`` with an ETag: a 304 when unchanged) and a release is never half-cached.
    A file edited on disk is read again on its next request, so development needs no restart.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.files: dict[str, _File] = {}

    def _load(self, name: str) -> _File | None:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        known = self.files.get(name)
        if known is not None and known.stamp == stamp:
            return known
        body = path.read_bytes()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".js":
            content_type = "text/javascript"
        loaded = _File(
            stamp=stamp,
            body=body,
            gzipped=gzip.compress(body, 9, mtime=0) if len(body) > 1024 else None,
            content_type=content_type,
            etag=f'"{hashlib.blake2b(body, digest_size=8).hexdigest()}"',
            last_modified=formatdate(stat.st_mtime, usegmt=True),
        )
        self.files[name] = loaded
        return loaded

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self._load(name) if ".." not in name.split("/") else None
        if found is None:
            raise not_found("file")
        headers = {
            "Cache-Control": "no-cache",
            "ETag": found.etag,
            "Last-Modified": found.last_modified,
            "Vary": "Accept-Encoding",
        }
        tags = [tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")]
        if found.etag in tags or (
            "If-None-Match" not in request.headers
            and request.headers.get("If-Modified-Since") == found.last_modified
        ):
            return web.Response(status=304, headers=headers)
        body = found.body
        if found.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
            body, headers["Content-Encoding"] = found.gzipped, "gzip"
        return web.Response(body=body, content_type=found.content_type, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", shell)
    app.router.add_get(STATIC_PREFIX + "/{name:.+}", StaticFiles(STATIC).handle)
