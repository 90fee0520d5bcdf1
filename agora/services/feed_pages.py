"""Encoded feed pages kept in the node's memory, dropped by events, so that reading a feed that
has not changed costs no I/O at all.

A page is stored with the viewer, post ids and authors it shows. Whatever can change a page
(a post fanned out to the viewer, a friendship starting or ending, a post edited, deleted,
reacted to or commented on, an author's profile changing) is an event handed to
:class:`Invalidator`, which drops the matching pages here and on every other node (through the
node inboxes). A page built while an event about it was happening is not stored: the build
notes the event sequence number first, and ``put`` checks the recent events against the page.
Entries also expire after ``ttl`` seconds, in case an event was lost with a node.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from agora.clock import Clock

Key = Hashable
VIEWER, POST, AUTHOR = "viewer", "post", "author"


@dataclass(slots=True)
class _Entry:
    body: bytes
    expires: float
    viewer: int
    posts: tuple[int, ...]
    authors: tuple[int, ...]


class FeedPages:
    def __init__(
        self,
        clock: Clock,
        max_entries: int = 20_000,
        ttl: float = 10.0,
        max_bytes: int = 64 * 1024 * 1024,
        log_size: int = 10_000,
    ) -> None:
        self.clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.ttl = ttl
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._index: dict[str, dict[int, set[Key]]] = {VIEWER: {}, POST: {}, AUTHOR: {}}
        self._seq = itertools.count(1)
        self.last_event = 0
        self._log: deque[tuple[int, str, frozenset[int]]] = deque(maxlen=log_size)
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def get(self, key: Key) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires < self.clock.monotonic():
            if entry is not None:
                self._remove(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.body

    def mark(self) -> int:
        """Call before reading what a page is built from; pass the result to ``put``."""
        return self.last_event

    def put(
        self,
        key: Key,
        body: bytes,
        viewer: int,
        posts: Iterable[int],
        authors: Iterable[int],
        since: int,
    ) -> bool:
        if not self.enabled:
            return False
        posts, authors = tuple(posts), tuple(authors)
        if self._changed_since(since, viewer, posts, authors):
            return False
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(body, self.clock.monotonic() + self.ttl, viewer, posts, authors)
        self.bytes += len(body)
        for kind, ids in ((VIEWER, (viewer,)), (POST, posts), (AUTHOR, authors)):
            index = self._index[kind]
            for i in ids:
                index.setdefault(i, set()).add(key)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
        return True

    def _changed_since(
        self, since: int, viewer: int, posts: tuple[int, ...], authors: tuple[int, ...]
    ) -> bool:
        if since == self.last_event:
            return False
        if not self._log or self._log[0][0] > since + 1:
            return True  # the log no longer reaches back that far
        touched = {VIEWER: {viewer}, POST: set(posts), AUTHOR: set(authors)}
        for seq, kind, ids in reversed(self._log):
            if seq <= since:
                break
            if not ids.isdisjoint(touched[kind]):
                return True
        return False

    def drop(self, kind: str, ids: Iterable[int]) -> None:
        """An event: forget every page showing one of these viewers / posts / authors."""
        ids = frozenset(ids)
        seq = next(self._seq)
        self.last_event = seq
        self._log.append((seq, kind, ids))
        index = self._index[kind]
        for i in ids:
            for key in tuple(index.get(i, ())):
                self._remove(key)

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.bytes -= len(entry.body)
        for kind, ids in ((VIEWER, (entry.viewer,)), (POST, entry.posts), (AUTHOR, entry.authors)):
            index = self._index[kind]
            for i in ids:
                keys = index.get(i)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[i]

    def __len__(self) -> int:
        return len(self._entries)
