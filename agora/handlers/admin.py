"""``/api/v1/admin/*``: the moderators' tools. Moderators and admins only (403 for anyone
else, 401 without a token); every action lands in the audit log."""

from __future__ import annotations

from typing import Any

from agora.protocol.common import Page
from agora.protocol.moderation import (
    AdminReportOut,
    AuditEntryOut,
    AuditQuery,
    ReportQueueQuery,
    ResolveIn,
    SuspendIn,
    SuspensionOut,
    UnsuspendIn,
)
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("admin")


@routes.get("/admin/reports", query=ReportQueueQuery, response=Page[AdminReportOut], errors=(403,))
async def report_queue(call: Call[None, ReportQueueQuery]) -> Page[AdminReportOut]:
    """The report queue, oldest first (`?status=open|resolved`, default open; `?category=`).

    Reports without a `reporter_id` (`held: true`) were raised by the word filter: the post or
    comment is visible only to its author until resolved (`dismiss` publishes it)."""
    return await call.app[keys.MODERATION].queue(call.viewer.user_id, call.query)


@routes.post("/admin/reports/{id}/resolve", body=ResolveIn, response=AdminReportOut, errors=(404,))
async def resolve_report(call: Call[ResolveIn, Any]) -> AdminReportOut:
    """Resolve a report: `dismiss`, `remove` or `suspend` (see the body's schema).

    409 when it was already resolved. The reporter is notified (`report_resolved`) and the
    resolution, with what was removed or suspended, is audited."""
    return await call.app[keys.MODERATION].resolve(
        call.viewer.user_id, call.path_id("id", "report"), call.body
    )


@routes.post("/admin/users/{id}/suspend", body=SuspendIn, response=SuspensionOut, errors=(404,))
async def suspend_user(call: Call[SuspendIn, Any]) -> SuspensionOut:
    """Suspend an account (with a reason and an optional end time).

    In one transaction the account is suspended and every login of it revoked; every node
    refuses its tokens at once and closes its WebSocket sessions; login and refresh answer 403;
    everything it wrote (posts, comments, messages: tombstones in chat history, profile) is
    hidden until the suspension is lifted: by `unsuspend`, or when `until` passes."""
    return await call.app[keys.MODERATION].suspend(
        call.viewer.user_id, call.path_id("id", "user"), call.body
    )


@routes.post("/admin/users/{id}/unsuspend", response=SuspensionOut, errors=(404,))
async def unsuspend_user(call: Call[None, Any]) -> SuspensionOut:
    """Lift a suspension (no body; 409 when the account is not suspended).

    The account's content shows again at once; its user logs in again (the old logins stay
    revoked)."""
    return await call.app[keys.MODERATION].unsuspend(
        call.viewer.user_id, call.path_id("id", "user"), UnsuspendIn()
    )


@routes.get("/admin/audit", query=AuditQuery, response=Page[AuditEntryOut], errors=(403,))
async def audit_log(call: Call[None, AuditQuery]) -> Page[AuditEntryOut]:
    """The audit log, newest first: every moderator and admin action (resolutions,
    suspensions, role changes, deletions of others' content, CLI commands), with a copy of
    its target. Filter with `?action=`, `?target_type=` and `?target_id=`. Append-only: no
    endpoint changes or deletes an entry."""
    return await call.app[keys.MODERATION].audit_log(call.viewer.user_id, call.query)
