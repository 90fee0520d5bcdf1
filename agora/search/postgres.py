"""The default search backend: PostgreSQL full text over the tables themselves.

Nothing to keep in step: the generated ``search`` columns of posts and messages and the name
indexes of users (migration 0010) change in the transaction that changes the row. The SQL and
the ranking windows are described in :mod:`agora.storage.search`.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Hashable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar, NamedTuple

from agora.clock import Clock
from agora.protocol.cursor import from_micros, to_micros
from agora.search.backend import Hit, Hits, Scope, SearchType
from agora.search.query import SearchQuery
from agora.storage.db import MAX_ID, id_floor
from agora.storage.search import (
    MESSAGE_WINDOW,
    POST_TEXT_WINDOW,
    POST_WINDOW,
    PREFIX_SCORES,
    START,
    TEXT_WINDOW,
    USER_PREFIXES,
    WINDOW,
    SearchStore,
    user_typos,
)

MAX_WINDOWS = 3  # windows one request may read to fill its page (then a shorter page)
OVERFETCH = 3  # posts: candidates per result asked (windows hold every visibility)
_END = MAX_ID + 1  # above every id: a keyset at the top of a window


def _day(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Window(NamedTuple):
    """One ranking window, best first (arrays: about 3 kB for 200 candidates); ``full``: it
    holds as many as its statement takes, so older matches may follow."""

    ids: array[int]
    scores: array[float]
    full: bool


class WindowCache:
    """Windows kept for ``ttl`` seconds, at most ``size`` of them (least recently used go).

    A search's first page takes the window a search with the same words made less than ``ttl``
    ago (and its as-of time), so posts of the last ``ttl`` seconds may be missing from it; what
    was deleted or hidden since is dropped by the re-check all the same."""

    def __init__(self, clock: Clock, ttl: float, size: int) -> None:
        self.clock = clock
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self.clock.monotonic():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Hashable, value: Any) -> None:
        if self.size <= 0 or self.ttl <= 0:
            return
        self._entries[key] = (self.clock.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class PostgresBackend:
    name = "postgres"
    # a: as-of time (microseconds), w: the window's upper id, (s, i): the keyset in it.
    cursor_fields: ClassVar[dict[str, type]] = {"a": int, "w": int, "s": float, "i": int}

    def __init__(
        self,
        store: SearchStore,
        clock: Clock,
        *,
        trigrams: str | None = None,
        cache_ttl: float = 2.0,
        cache_size: int = 1000,
    ) -> None:
        """``trigrams``: "pg_trgm" or "builtin" (None: pg_trgm when migration 0010 could
        install it). ``cache_size`` 0: no window is kept."""
        self.store = store
        self.clock = clock
        self.windows = WindowCache(clock, cache_ttl, cache_size)
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
        # What decides the windows: the query, the authors its from: names, and for messages
        # the viewer (their conversations). Posts' windows are everyone's.
        search = (kind, query, scope.author_ids, scope.viewer_id if kind == "messages" else None)
        if after is None:
            started = self.windows.get(search)
            if started is None:
                as_of = self.clock.now()
                # Rows made after the first page stay out of its later pages.
                upper = id_floor(as_of + timedelta(milliseconds=1))
                if query.before is not None:
                    upper = min(upper, id_floor(_day(query.before)))
                started = (as_of, upper)
                self.windows.put(search, started)
            as_of, upper = started
            score, last = START, _END
        else:
            as_of = from_micros(after["a"])
            upper, score, last = after["w"], after["s"], after["i"]
        want = limit * OVERFETCH if kind == "posts" else limit
        hits: list[Hit] = []
        a = to_micros(as_of)

        def state(w: int, s: float, i: int) -> dict[str, Any]:
            return {"a": a, "w": w, "s": s, "i": i}

        for _ in range(MAX_WINDOWS):
            window = await self._window(search, query, scope, as_of, upper)
            start = 0
            while start < len(window.ids) and (window.scores[start], window.ids[start]) >= (
                score,
                last,
            ):
                start += 1
            take = range(start, min(len(window.ids), start + want - len(hits)))
            ids, scores, w = window.ids, window.scores, upper
            hits += [Hit(ids[k], None, {"a": a, "w": w, "s": scores[k], "i": ids[k]}) for k in take]
            full = window.full
            if len(hits) == want:
                if take.stop < len(window.ids):
                    return Hits(hits, hits[-1].after)
                return Hits(hits, state(min(window.ids), START, _END) if full else None)
            if not full:
                return Hits(hits)  # this window held every match that is left
            upper, score, last = min(window.ids), START, _END
        return Hits(hits, state(upper, score, last))

    async def _window(
        self,
        search: tuple[Any, ...],
        query: SearchQuery,
        scope: Scope,
        as_of: datetime,
        upper: int,
    ) -> Window:
        key = (*search, as_of, upper)
        window: Window | None = self.windows.get(key)
        if window is not None:
            return window
        kind = search[0]
        lower = id_floor(_day(query.after)) if query.after is not None else 0
        authors = list(scope.author_ids) if scope.author_ids is not None else None
        terms = (
            list(query.words),
            list(query.phrases),
            list(query.excluded),
            list(query.excluded_phrases),
        )
        args: tuple[Any, ...]
        size = WINDOW
        if kind == "messages":
            name, sql, args = "messages", MESSAGE_WINDOW, (authors, scope.viewer_id, as_of)
        elif (query.words or query.phrases) and not (authors or query.has_media):
            walk = True if query.phrases else None
            name, sql, args, size = "posts_text", POST_TEXT_WINDOW, (as_of, walk), TEXT_WINDOW
        else:
            name, sql, args = "posts", POST_WINDOW, (authors, query.has_media, as_of)
        found = await self.store.candidates(f"search_{name}", sql, *terms, upper, lower, *args)
        window = Window(
            array("q", [c.id for c in found]),
            array("d", [c.score for c in found]),
            len(found) == size,
        )
        self.windows.put(key, window)
        return window

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
            found = await self.store.candidates(
                "search_users", USER_PREFIXES, *args, *keyset, limit + 1
            )
            keyset = (PREFIX_SCORES, 0)
        if len(found) <= limit:
            if self._typos_sql is None:
                self._typos_sql = user_typos(await self.store.trigram_mode())
            found += await self.store.candidates(
                "search_users_typos", self._typos_sql, *args, *keyset, limit - len(found) + 1
            )
        hits = [Hit(c.id, None, {"a": 0, "w": 0, "s": c.score, "i": c.id}) for c in found]
        if len(hits) <= limit:
            return Hits(hits)
        return Hits(hits[:limit], hits[limit - 1].after)

    async def health(self) -> dict[str, Any]:
        return {"status": "ok", "backend": self.name}

    async def close(self) -> None:
        return None
