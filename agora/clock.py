"""Injected time.

Heartbeats, expiries, rate limits and idle timeouts read time through a :class:`Clock` so tests
can move it instead of sleeping (Synapse's ``clock``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """Wall time for timestamps, monotonic time for intervals."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), tz=UTC)


class ManualClock(Clock):
    """A clock that only moves when told to (tests, simulations)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds
