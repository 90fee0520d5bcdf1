"""``/api/v1/search``."""

from __future__ import annotations

from agora.protocol.common import Page
from agora.protocol.search import SearchIn, SearchResult
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("search")


@routes.get("/search", query=SearchIn, response=Page[SearchResult], limits=("search",))
async def search(call: Call[None, SearchIn]) -> Page[SearchResult]:
    """Search `users` (username and display name: prefix, or within a typo), `posts` or
    `messages` (of the caller's conversations) with the query syntax of the README: words (all
    must match), `"a phrase"`, `-word`, `from:username`, `before:`/`after:YYYY-MM-DD` (UTC days;
    `after:` includes its day, `before:` does not) and `has:media`. Results are what the caller
    may see, ranked by relevance with a recency boost; at most 120 searches a minute per account
    by default (429 `rate_limited` beyond). 503 `search_unavailable` while the search backend is
    down."""
    q = call.query
    return await call.app[keys.SEARCH].search(call.viewer.user_id, q.q, q.type, q.cursor, q.limit)
