"""The default search backend: PostgreSQL full text over the tables themselves.

Nothing to keep in step: the generated ``search`` columns of posts and messages and the name
indexes of users (migration 0010) change in the transaction that changes the row. The SQL and
the ranking windows are described in :mod:`agora.storage.search`.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any, ClassVar

from agora.clock import Clock
from agora.protocol.cursor import from_micros, to_micros
from agora.search.backend import Hit, Hits, Scope, SearchType, snippet
from agora.search.query import SearchQuery
from agora.storage.db import MAX_ID, id_floor
from agora.storage.search import (
    MESSAGE_CANDIDATES,
    POST_CANDIDATES,
    PREFIX_SCORES,
    START,
    USER_PREFIXES,
    WINDOW,
    SearchStore,
    user_typos,
)

MAX_WINDOWS = 3  # windows one request may read to fill its page (then a short page)
_END = MAX_ID + 1  # above every id: a keyset at the top of a window


def _day(d: Any) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class PostgresBackend:
    name = "postgres"
    # a: as-of time (microseconds), w: the window's upper id, (s, i): the keyset in it.
    cursor_fields: ClassVar[dict[str, type]] = {"a": int, "w": int, "s": float, "i": int}

    def __init__(self, store: SearchStore, clock: Clock, trigrams: str | None = None) -> None:
        """``trigrams``: "pg_trgm" or "builtin" (None: pg_trgm when migration 0010 could
        install it)."""
        self.store = store
        self.clock = clock
        self._typos_sql = user_typos(trigrams) if trigrams else None

    async def search(
        self,
        kind: SearchType,
        query: SearchQuery,
        scope: Scope,
        after: dict[str, Any] | None,
        limit: int,
    ) -> Hits:
        if scope.author_ids == ():  # every from: name was unknown
            return Hits([])
        if kind == "users":
            return await self._users(query, after, limit)
        return await self._windows(kind, query, scope, after, limit)

    async def _windows(
        self,
        kind: SearchType,
        query: SearchQuery,
        scope: Scope,
        after: dict[str, Any] | None,
        limit: int,
    ) -> Hits:
        if after is None:
            as_of = self.clock.now()
            # Rows made after the first page stay out of its later pages.
            upper = id_floor(as_of + timedelta(milliseconds=1))
            if query.before is not None:
                upper = min(upper, id_floor(_day(query.before)))
            score, last = START, _END
        else:
            as_of = from_micros(after["a"])
            upper, score, last = after["w"], after["s"], after["i"]
        lower = id_floor(_day(query.after)) if query.after is not None else 0
        sql, extra = (
            (POST_CANDIDATES, (query.has_media,)) if kind == "posts" else (MESSAGE_CANDIDATES, ())
        )
        authors = list(scope.author_ids) if scope.author_ids is not None else None
        highlight = [*query.words, *query.phrases]
        hits: list[Hit] = []

        def state(w: int, s: float, i: int) -> dict[str, Any]:
            return {"a": to_micros(as_of), "w": w, "s": s, "i": i}

        for _ in range(MAX_WINDOWS):
            need = limit - len(hits)
            window = await self.store.window(
                f"search_{kind}",
                sql,
                scope.viewer_id,
                list(query.words),
                list(query.phrases),
                list(query.excluded),
                list(query.excluded_phrases),
                upper,
                lower,
                authors,
                highlight,
                need + 1,
                as_of,
                score,
                last,
                *extra,
            )
            page = window.candidates
            if len(page) > need:
                hits.extend(Hit(c.id, snippet(c.snippet or "")) for c in page[:need])
                return Hits(hits, state(upper, page[need - 1].score, page[need - 1].id))
            hits.extend(Hit(c.id, snippet(c.snippet or "")) for c in page)
            if window.size < WINDOW or window.low is None:
                return Hits(hits)  # this window held every match that is left
            upper, score, last = window.low, START, _END
            if len(hits) == limit:
                break
        return Hits(hits, state(upper, score, last))

    async def _users(self, query: SearchQuery, after: dict[str, Any] | None, limit: int) -> Hits:
        text = " ".join((*query.words, *query.phrases))
        args = (
            text,
            like_escape(text) + "%",
            [f"%{like_escape(x)}%" for x in (*query.excluded, *query.excluded_phrases)],
        )
        keyset = (after["s"], after["i"]) if after is not None else (START * 2, _END)
        found = []
        if keyset > (PREFIX_SCORES, 0):  # the cursor is still among the prefix matches
            found = await self.store.users("search_users", USER_PREFIXES, *args, *keyset, limit + 1)
            keyset = (PREFIX_SCORES, 0)
        if len(found) <= limit:
            if self._typos_sql is None:
                self._typos_sql = user_typos(await self.store.trigram_mode())
            found += await self.store.users(
                "search_users_typos", self._typos_sql, *args, *keyset, limit - len(found) + 1
            )
        if len(found) <= limit:
            return Hits([Hit(c.id) for c in found])
        end = found[limit - 1]
        return Hits(
            [Hit(c.id) for c in found[:limit]], {"a": 0, "w": 0, "s": end.score, "i": end.id}
        )

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "backend": self.name}

    async def close(self) -> None:
        return None
