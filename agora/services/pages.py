"""Keyset pagination: fetch ``limit + 1`` rows; the extra one only says whether there is more."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from agora.protocol.common import Page

R = TypeVar("R")
T = TypeVar("T")


def make_page(
    rows: Sequence[R], limit: int, render: Callable[[R], T], cursor_of: Callable[[R], str]
) -> Page[T]:
    more = len(rows) > limit
    shown = rows[:limit]
    return Page(
        items=[render(r) for r in shown],
        next_cursor=cursor_of(shown[-1]) if more and shown else None,
    )
