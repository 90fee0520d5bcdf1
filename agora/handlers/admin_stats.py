"""``/api/v1/admin/stats``: analytics for admins (services/stats.py)."""

from __future__ import annotations

from agora.protocol.stats import StatsIn, StatsOut
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("admin")


@routes.get("/admin/stats", query=StatsIn, response=StatsOut, errors=(403, 422))
async def stats(call: Call[None, StatsIn]) -> StatsOut:
    """Activity per UTC day for admins (403 for everyone else): daily active users, sign-ups,
    posts, comments, reactions and messages, each day of `from`..`to` (default: the 30 days
    ending today; at most 366 days; 422 when `from` is after `to` or the range is longer),
    weekly and monthly active users ending `to`, and the sessions online now. Counters come
    from rollups kept by an event consumer (seconds behind), active users from per-day
    HyperLogLogs (within a few seconds; retained 40 days)."""
    q = call.query
    return await call.app[keys.STATS].for_admin(call.viewer.user_id, q.from_, q.to)
