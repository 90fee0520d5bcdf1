"""The one interface every search backend implements, and what it returns.

A backend *retrieves and ranks candidates*; it never decides what a caller may see. It may
pre-filter on the coarse audience an index can hold (a post's visibility and author, the
viewer's friends, the conversations the viewer is a member of), so that pages come out full;
but :class:`agora.services.search.SearchService` re-checks every candidate in PostgreSQL with
the one visibility rule (blocks, suspension, privacy, membership, deletion) before showing it.
A stale index therefore costs a shorter page, never a leak.

Pagination is the backend's own: ``Hits.next`` is whatever state it needs to continue (for
PostgreSQL a ranking window and a ``(score, id)`` keyset, for Elasticsearch ``search_after``
values). The service wraps it in the usual opaque cursor and hands it back unchanged, typed
as the backend declared in ``cursor_fields``.
"""

from __future__ import annotations

import html
from typing import Any, Literal, Protocol

import msgspec

from agora.errors import AppError, ErrorCode
from agora.search.query import SearchQuery

SearchType = Literal["users", "posts", "messages"]
SEARCH_TYPES: tuple[SearchType, ...] = ("users", "posts", "messages")

# ts_headline (and our own code) marks a match with these two private-use characters; snippet()
# turns them into <mark> tags after HTML-escaping the text, so no stored text is ever markup.
MARK_START = "\ue000"
MARK_END = "\ue001"


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """Who is asking, and the filters every backend applies the same way."""

    viewer_id: int
    #: ``from:`` resolved to user ids (None: anyone). An empty tuple matches nothing: every
    #: ``from:`` name was unknown.
    author_ids: tuple[int, ...] | None = None


class Hit(msgspec.Struct, frozen=True):
    """One candidate: the id of a user, post or message; optionally a snippet of its text as
    HTML (escaped text with ``<mark>...</mark>`` around what matched; without one the re-check
    makes it); and the state that continues the search right after it (for a page that ends
    here because the re-check kept enough before the last candidate)."""

    id: int
    snippet: str | None = None
    after: dict[str, Any] | None = None


class Hits(msgspec.Struct, frozen=True):
    """Candidates in rank order, and the state that continues after the last (None: the end).
    There may be fewer than asked while ``next`` is not None."""

    hits: list[Hit]
    next: dict[str, Any] | None = None


class SearchBackend(Protocol):
    #: "postgres" or "elasticsearch" (logs, /readyz, metrics).
    name: str

    @property
    def cursor_fields(self) -> dict[str, type]:
        """The state a cursor of this backend carries, by field name and type (for
        decode_cursor)."""
        ...

    async def search(
        self,
        kind: SearchType,
        query: SearchQuery,
        scope: Scope,
        after: dict[str, Any] | None,
        limit: int,
    ) -> Hits:
        """Candidates of ``kind`` after ``after`` (a previous ``Hits.next`` or ``Hit.after``):
        enough for a page of ``limit`` once the re-check has dropped what the viewer may not
        see, as far as the backend can tell (one that pre-filters the audience returns
        ``limit``; one that does not, more). Raise :func:`search_unavailable` when the backend
        cannot answer."""
        ...

    async def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "unavailable", ...}`` for /readyz; never raises."""
        ...

    async def close(self) -> None: ...


def search_unavailable(message: str = "search is unavailable; try again shortly") -> AppError:
    return AppError(ErrorCode.SEARCH_UNAVAILABLE, message, headers={"Retry-After": "5"})


def snippet(marked: str) -> str:
    """Text with MARK_START/MARK_END around matches -> HTML with ``<mark>`` around them."""
    return (
        html.escape(marked, quote=False).replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")
    )


def unmarked(text: str) -> str:
    """``text`` without the two marker characters (so a post cannot forge a highlight)."""
    return text.replace(MARK_START, "").replace(MARK_END, "")
