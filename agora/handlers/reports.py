"""``/api/v1/reports``: any user reports what they can see to the moderators."""

from __future__ import annotations

from typing import Any

from agora.protocol.moderation import ReportIn, ReportOut
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("moderation")


@routes.post(
    "/reports", body=ReportIn, response=ReportOut, status=201, errors=(404,), limits=("reports",)
)
async def create_report(call: Call[ReportIn, Any]) -> ReportOut:
    """Report a post, comment, user or message to the moderators.

    Only what the caller can see may be reported: anything else answers 404 exactly like a
    missing subject (a message: only as a member of its conversation). A copy of the subject is
    kept with the report (for a message, that message and nothing else of the conversation).
    One open report per reporter and subject (409 until it is resolved); reporting yourself or
    what you wrote is a 422. The reporter gets a `report_resolved` notification with the
    outcome."""
    return await call.app[keys.MODERATION].report(call.viewer.user_id, call.body)


@routes.get("/reports/{id}", response=ReportOut)
async def get_report(call: Call[None, Any]) -> ReportOut:
    """One of the caller's own reports, with its outcome once resolved (`action`); the
    `report_resolved` notification names it. Anyone else's report answers 404."""
    return await call.app[keys.MODERATION].my_report(
        call.viewer.user_id, call.path_id("id", "report")
    )
