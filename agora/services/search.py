"""Search: parse, limit, ask the backend for candidates, re-check them, present them.

The re-check is the privacy guarantee of search. Whatever a backend returns (an Elasticsearch
index that has not yet seen a block, a deletion or a visibility change; a PostgreSQL candidate
query that pre-filters only on the coarse audience) goes through the one visibility rule in
PostgreSQL before it is shown: a stale candidate costs a shorter page, never a leak.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from agora.actors.conversation import message_out
from agora.errors import AppError, ErrorCode
from agora.media.urls import MediaUrls
from agora.protocol.common import Page
from agora.protocol.cursor import decode_cursor, encode_cursor, invalid_cursor
from agora.protocol.search import MessageResult, PostResult, SearchResult, UserResult
from agora.search.backend import Hit, Scope, SearchBackend, SearchType, snippet
from agora.search.query import SearchQuery, parse_query
from agora.services.presenters import post_out, user_out
from agora.storage.search import Found, SearchStore

# Operators each kind understands (words, phrases and exclusions apply to all).
_NOT_FOR = {
    "users": ("from:", "before:", "after:", "has:media"),
    "messages": ("has:media",),
    "posts": (),
}


def _inapplicable(kind: SearchType, query: SearchQuery) -> list[str]:
    used = {
        "from:": bool(query.from_users),
        "before:": query.before is not None,
        "after:": query.after is not None,
        "has:media": query.has_media,
    }
    return [op for op in _NOT_FOR[kind] if used[op]]


def _fingerprint(kind: SearchType, query: SearchQuery) -> str:
    """Ties a cursor to its search: another query's cursor is refused, not misread."""
    raw = kind.encode() + msgspec.msgpack.encode(query)
    return hashlib.blake2b(raw, digest_size=6).hexdigest()


class SearchService:
    def __init__(
        self,
        backend: SearchBackend,
        store: SearchStore,
        urls: MediaUrls,
    ) -> None:
        self.urls = urls
        self.backend = backend
        self.store = store

    async def search(
        self, viewer: int, q: str, kind: SearchType, cursor: str | None, limit: int
    ) -> Page[SearchResult]:
        query = parse_query(q)
        if bad := _inapplicable(kind, query):
            raise AppError(
                ErrorCode.VALIDATION_ERROR,
                "the query string is not valid",
                status=400,
                fields={"q": f"{', '.join(bad)} cannot be used with type={kind}"},
            )
        fingerprint = _fingerprint(kind, query)
        state = decode_cursor(cursor, f"search.{kind}", h=str, **self.backend.cursor_fields)
        if state is not None and state.pop("h") != fingerprint:  # another search's cursor
            raise invalid_cursor()
        authors = None
        if query.from_users:
            authors = tuple(await self.store.user_ids(list(query.from_users)))
        hits = await self.backend.search(
            kind, query, Scope(viewer_id=viewer, author_ids=authors), state, limit
        )
        items, last = await self._recheck(kind, viewer, query, hits.hits, limit)
        # A page that the re-check filled before the last candidate goes on right after its
        # last result; otherwise after the last candidate.
        cut = hits.hits[last].after if 0 <= last < len(hits.hits) - 1 else None
        resume = cut if cut is not None and len(items) == limit else hits.next
        next_cursor = encode_cursor(f"search.{kind}", h=fingerprint, **resume) if resume else None
        return Page(items=items, next_cursor=next_cursor)

    async def _recheck(
        self, kind: SearchType, viewer: int, query: SearchQuery, hits: list[Hit], limit: int
    ) -> tuple[list[SearchResult], int]:
        """The first ``limit`` candidates the viewer may see, in the backend's order, as
        clients show them; and the place of the last one among the candidates (-1: none)."""
        if not hits:
            return [], -1
        ids = [h.id for h in hits]
        found: Sequence[Found]
        items: list[SearchResult]
        if kind == "users":
            found = await self.store.visible_users(viewer, ids, limit)
            items = [UserResult(user_out(f.user)) for f in found]
        else:
            highlight = [*query.words, *query.phrases]
            if kind == "posts":
                found = await self.store.visible_posts(viewer, ids, limit, highlight)
                items = [
                    PostResult(post_out(f.post, self.urls), self._snippet(hits[f.place], f))
                    for f in found
                ]
            else:
                found = await self.store.visible_messages(viewer, ids, limit, highlight)
                items = [
                    MessageResult(
                        message_out(f.message), user_out(f.sender), self._snippet(hits[f.place], f)
                    )
                    for f in found
                ]
        return items, found[-1].place if found else -1

    @staticmethod
    def _snippet(hit: Hit, found: Found) -> str:
        """The backend's snippet (Elasticsearch's highlighter), else PostgreSQL's."""
        return hit.snippet or snippet(found.snippet or "")
