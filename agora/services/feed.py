"""The news feed: the viewer's own and friends' posts they may see, newest first or ranked.

Recent (default): ids come from the viewer's cached window in Redis (rebuilt from PostgreSQL when
missing) and are hydrated in one query that re-applies the visibility rule; pages past the
window, or any page when Redis fails, come from PostgreSQL with the same keyset. The cursor is
the last post id shown: ids are time-ordered, so posts arriving later sort above it and can
neither repeat nor push anything out of the next page.

Top (``?rank=top``): posts of the last ``TOP_WINDOW`` scored by

    score = (1 + reactions + 2 * comments) / (age_hours + 2) ** 1.5

computed "as of" the moment of the first page, which the cursor carries along with the last
(score, id), so every page ranks the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import timedelta

from agora.clock import Clock
from agora.media.urls import MediaUrls
from agora.protocol.codec import encode
from agora.protocol.common import Page
from agora.protocol.content import PostOut
from agora.protocol.cursor import decode_cursor, encode_cursor, from_micros, to_micros
from agora.services.feed_pages import FeedPages
from agora.services.invalidation import Invalidator
from agora.services.pages import make_page
from agora.services.presenters import post_out
from agora.storage.content import PostRow, PostStore
from agora.storage.db import MAX_ID
from agora.storage.feed_cache import FeedCache
from agora.storage.social import SocialStore

log = logging.getLogger(__name__)

OVERFETCH = 10  # extra cached ids per batch, for entries the visibility re-check drops
MAX_BATCHES = 3
TOP_WINDOW = timedelta(hours=72)
TOP_PER_AUTHOR = 200


class FeedService:
    def __init__(
        self,
        posts: PostStore,
        social: SocialStore,
        cache: FeedCache,
        pages: FeedPages,
        invalidator: Invalidator,
        clock: Clock,
        urls: MediaUrls,
    ) -> None:
        self.urls = urls
        self.posts = posts
        self.social = social
        self.cache = cache
        self.pages = pages
        self.invalidator = invalidator
        self.clock = clock

    # -- reading ---------------------------------------------------------------------------------

    async def recent_json(self, viewer: int, cursor: str | None, limit: int) -> bytes:
        """The encoded page, from this node's page cache when nothing it shows has changed."""
        key = (viewer, cursor, limit)
        body = self.pages.get(key)
        if body is not None:
            return body
        mark = self.pages.mark()
        rows = await self._recent_rows(viewer, cursor, limit)
        page = make_page(
            rows,
            limit,
            lambda p: post_out(p, self.urls),
            lambda p: encode_cursor("feed", before=p.id),
        )
        body = encode(page)
        shown = rows[:limit]
        self.pages.put(key, body, viewer, [p.id for p in shown], {p.author.id for p in shown}, mark)
        return body

    async def _recent_rows(self, viewer: int, cursor: str | None, limit: int) -> list[PostRow]:
        c = decode_cursor(cursor, "feed", before=int)
        before = c["before"] if c else MAX_ID + 1
        want = limit + 1
        rows: list[PostRow] = []
        if self.cache.enabled:
            try:
                rows, before, exhausted = await self._from_cache(viewer, before, want)
            except Exception:
                log.warning("feed cache unavailable; reading PostgreSQL", exc_info=True)
                rows, exhausted = [], False
            if exhausted:
                return rows
        if len(rows) < want:
            rows += await self.posts.feed_page(viewer, before, want - len(rows))
        return rows

    async def _from_cache(
        self, viewer: int, before: int, want: int
    ) -> tuple[list[PostRow], int, bool]:
        """Visible posts from the cached window: ``(rows, lowest id examined, nothing older)``."""
        rows: list[PostRow] = []
        batch = want + OVERFETCH
        page = await self.cache.read(viewer, before, batch)
        if not page.complete:
            await self._rebuild(viewer, page.generation)
            page = await self.cache.read(viewer, before, batch)
            if not page.complete:  # raced an invalidation: let PostgreSQL answer this one
                return rows, before, False
        for _ in range(MAX_BATCHES):
            if page.ids:
                rows += await self.posts.by_ids(viewer, page.ids)
                before = page.ids[-1]
            if len(rows) >= want:
                return rows[:want], rows[want - 1].id, False
            if len(page.ids) < batch:  # the window has nothing older
                return rows, before, not page.truncated
            page = await self.cache.read(viewer, before, batch)
        return rows, before, False

    async def _rebuild(self, viewer: int, generation: bytes) -> None:
        ids = await self.posts.feed_ids(viewer, MAX_ID + 1, self.cache.size + 1)
        await self.cache.fill(viewer, generation, ids)

    async def top_json(self, viewer: int, cursor: str | None, limit: int) -> bytes:
        """Ranked pages come from the page cache too (scores age slowly; 10 s at most)."""
        key = ("top", viewer, cursor, limit)
        body = self.pages.get(key)
        if body is not None:
            return body
        mark = self.pages.mark()
        page, shown = await self._top(viewer, cursor, limit)
        body = encode(page)
        self.pages.put(key, body, viewer, [p.id for p in shown], {p.author.id for p in shown}, mark)
        return body

    async def _top(
        self, viewer: int, cursor: str | None, limit: int
    ) -> tuple[Page[PostOut], list[PostRow]]:
        c = decode_cursor(cursor, "top", asof=int, score=float, id=int)
        as_of = from_micros(c["asof"]) if c else self.clock.now()
        after = (c["score"], c["id"]) if c else (float("inf"), MAX_ID + 1)
        rows = await self.posts.top_feed(
            viewer,
            as_of,
            as_of - TOP_WINDOW,
            after,
            window_per_author=TOP_PER_AUTHOR,
            limit=limit + 1,
        )
        asof = to_micros(as_of)
        page = make_page(
            rows,
            limit,
            lambda r: post_out(r[0], self.urls),
            lambda r: encode_cursor("top", asof=asof, score=r[1], id=r[0].id),
        )
        return page, [r for r, _ in rows[:limit]]

    # -- keeping the caches right -------------------------------------------------------------

    async def _audience(
        self, author: int, visibility: str, friends: list[int] | None = None
    ) -> list[int]:
        """Whose feeds hold a post: the author's, and the friends' unless it is private."""
        if visibility == "private":
            return [author]
        return [author, *(await self.social.friend_ids(author) if friends is None else friends)]

    async def post_created(
        self, author: int, post_id: int, visibility: str, friends: list[int] | None = None
    ) -> list[int]:
        """Fan the post out to its audience's feeds; return that audience (the author first).
        ``friends``: the author's, when the caller already has them."""
        audience = await self._audience(author, visibility, friends)
        self.invalidator.viewers(audience)
        if self.cache.enabled:
            await self._guard(self.cache.add(audience, post_id))
        return audience

    async def post_removed(self, author: int, post_id: int, visibility: str) -> None:
        self.invalidator.posts([post_id])
        if self.cache.enabled:
            await self._guard(self.cache.remove(await self._audience(author, visibility), post_id))

    async def post_changed(self, post_id: int) -> None:
        """Text, counters or reactions changed: pages showing it are rebuilt."""
        self.invalidator.posts([post_id])

    async def visibility_changed(self, author: int, post_id: int, old: str, new: str) -> None:
        self.invalidator.posts([post_id])
        if (old == "private") == (new == "private"):
            return  # public <-> friends: the same feeds hold it
        friends = await self.social.friend_ids(author)
        self.invalidator.viewers(friends)
        if not self.cache.enabled:
            return
        if new == "private":
            await self._guard(self.cache.remove(friends, post_id))
        else:
            await self._guard(self.cache.add(friends, post_id))

    async def _guard(self, operation: Awaitable[None]) -> None:
        try:
            await operation
        except Exception:
            # Reads re-check visibility in PostgreSQL, and cached sets expire: a missed update
            # costs a shorter page for a while, never a leak.
            log.warning("feed cache update failed", exc_info=True)
