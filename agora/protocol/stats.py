"""``GET /api/v1/admin/stats``: the query (a range of UTC days) and the figures."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

import msgspec

Day = Annotated[date, msgspec.Meta(description="a UTC day, YYYY-MM-DD")]


class StatsIn(msgspec.Struct):
    #: The first day (default: 29 days before `to`) and the last day (default: today, UTC).
    from_: Day | None = msgspec.field(default=None, name="from")
    to: Day | None = None


class DayStats(msgspec.Struct):
    """One UTC day. `dau`: distinct users who made an authenticated request or opened a
    WebSocket that day (null for days older than the activity retention, 40 days). The
    counters count what was created that day; later deletions do not lower them."""

    day: date
    dau: int | None
    signups: int
    posts: int
    comments: int
    reactions: int
    messages: int


class Totals(msgspec.Struct):
    """The counters summed over the range."""

    signups: int
    posts: int
    comments: int
    reactions: int
    messages: int


class StatsOut(msgspec.Struct):
    """Every day of `from`..`to` (days without activity with zeros), oldest first; `wau` and
    `mau`: distinct active users over the 7 and 30 days ending with `to` (null when those
    days are past the retention); `online_sessions`: WebSocket sessions open now on the live
    nodes; `online_users`: users with sessions, counted once per node they are connected to."""

    from_: date = msgspec.field(name="from")
    to: date
    days: list[DayStats]
    totals: Totals
    wau: int | None
    mau: int | None
    online_sessions: int
    online_users: int
    generated_at: datetime
