"""``POST /api/v1/media`` (uploads) and ``GET /media/{id}/{rendition}`` (the images, for
``<img src>``: no Authorization header, outside the API prefix)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agora.errors import not_found
from agora.protocol.content import MediaOut
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("media")


@routes.post(
    "/media", response=MediaOut, status=201, errors=(413, 415, 429, 503), limits=("uploads",)
)
async def upload(call: Call[None, Any]) -> MediaOut:
    """Upload an image as `multipart/form-data`: a part `file` (JPEG, PNG, GIF or WebP; the
    bytes decide, not the name), optional `description` (alt text, up to 1,500 characters) and
    `focus` (`x,y`, each -1..1). The image is re-encoded without its metadata (the colour
    profile is kept), downscaled to at most 3840x2160, with a ~640x360 `thumbnail_url` and a
    blurhash. Use its `id` in a post's `media_ids` or as your `avatar_media_id`; uploads used by
    nothing go after a day."""
    return await call.app[keys.MEDIA].upload(call.viewer.user_id, call.request)


async def serve(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 16:
        raise not_found("media")
    return await request.app[keys.MEDIA].serve(request, int(raw), request.match_info["rendition"])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/media/{id}/{rendition}", serve)
