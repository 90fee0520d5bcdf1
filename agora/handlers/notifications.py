"""``/api/v1/notifications*``."""

from __future__ import annotations

from typing import Any

from agora.protocol.notifications import (
    NotificationPage,
    NotificationQuery,
    NotificationSettingsIn,
    NotificationSettingsOut,
    ReadIn,
)
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("notifications")


@routes.get("/notifications", query=NotificationQuery, response=NotificationPage)
async def list_notifications(call: Call[None, NotificationQuery]) -> NotificationPage:
    """The caller's notifications, most recent activity first (`?unread=true`: unread only).

    Grouped notifications (reactions and comments on one post within 12 hours, messages of one
    conversation until read) are one item with `notifications_count` and `actors`; a group
    that grows becomes unread and moves to the top. `unread_count` counts every unread item.
    Notifications about what the caller can no longer see (a deleted or hidden post, a deleted
    comment, a blocked user) are not listed."""
    q = call.query
    return await call.app[keys.NOTIFICATIONS].list(call.viewer.user_id, q.unread, q.cursor, q.limit)


@routes.post("/notifications/read", body=ReadIn, status=204)
async def mark_read(call: Call[ReadIn, Any]) -> None:
    """Mark notifications read: `ids` (ids that are not the caller's are ignored), or
    `all: true`."""
    await call.app[keys.NOTIFICATIONS].mark_read(call.viewer.user_id, call.body)


@routes.get("/notifications/settings", response=NotificationSettingsOut)
async def get_settings(call: Call[None, Any]) -> NotificationSettingsOut:
    """The caller's notification preferences, every kind."""
    return await call.app[keys.NOTIFICATIONS].settings(call.viewer.user_id)


@routes.patch(
    "/notifications/settings", body=NotificationSettingsIn, response=NotificationSettingsOut
)
async def update_settings(call: Call[NotificationSettingsIn, Any]) -> NotificationSettingsOut:
    """Change some preferences (the kinds and fields given); answers all of them.

    A kind turned off creates no new notifications; `only_friends` (mention, comment, reply,
    reaction) keeps only those whose actor is a friend."""
    return await call.app[keys.NOTIFICATIONS].update_settings(call.viewer.user_id, call.body)
