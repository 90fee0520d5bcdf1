"""``/api/v1/feed``."""

from __future__ import annotations

from aiohttp import web

from agora.protocol.common import Page
from agora.protocol.content import FeedQuery, PostOut
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("feed")


@routes.get("/feed", query=FeedQuery, response=Page[PostOut])
async def feed(call: Call[None, FeedQuery]) -> Page[PostOut] | web.Response:
    """The caller's news feed: their own and their friends' posts they may see.

    Newest first with a stable cursor (no repeats or gaps while new posts arrive), or
    `rank=top`: the last 72 hours ordered by
    (1 + reactions + 2 x comments) / (age_hours + 2)^1.5."""
    q = call.query
    service = call.app[keys.FEED]
    if q.rank == "top":
        body = await service.top_json(call.viewer.user_id, q.cursor, q.limit)
    else:
        body = await service.recent_json(call.viewer.user_id, q.cursor, q.limit)
    return web.Response(body=body, content_type="application/json")
