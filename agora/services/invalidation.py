"""Events that invalidate in-process caches, applied here and broadcast to every other node."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from agora.services.feed_pages import AUTHOR, POST, VIEWER, FeedPages


class Broadcaster(Protocol):
    def broadcast_eviction(self, kind: str, ids: list[int]) -> None: ...


class Invalidator:
    def __init__(self, pages: FeedPages) -> None:
        self.pages = pages
        self.cluster: Broadcaster | None = None  # wired by the app once the router exists

    def _event(self, kind: str, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        self.pages.drop(kind, ids)
        if self.cluster is not None:
            self.cluster.broadcast_eviction(kind, ids)

    def viewers(self, ids: Iterable[int]) -> None:
        """Their feeds changed (a post fanned out to them, a friendship began or ended)."""
        self._event(VIEWER, ids)

    def posts(self, ids: Iterable[int]) -> None:
        """These posts changed (edited, deleted, reacted to, commented on)."""
        self._event(POST, ids)

    def authors(self, ids: Iterable[int]) -> None:
        """These users' public profiles changed (shown with every post they wrote)."""
        self._event(AUTHOR, ids)

    def apply(self, kind: str, ids: list[int]) -> None:
        """An event from another node."""
        self.pages.drop(kind, ids)
