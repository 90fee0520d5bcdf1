"""Reports, the moderators' queue and actions, suspensions and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from agora.protocol.common import Cursor, Id, Limit

SubjectType = Literal["post", "comment", "user", "message"]
Category = Literal["spam", "harassment", "illegal", "other"]
ReportStatus = Literal["open", "resolved"]
Action = Literal["dismiss", "remove", "suspend"]

Reason = Annotated[
    str, msgspec.Meta(min_length=1, max_length=1000, description="1-1,000 characters")
]
Note = Annotated[str, msgspec.Meta(max_length=1000, description="up to 1,000 characters")]


class ReportIn(msgspec.Struct):
    """Report a post, comment, user or message the caller can see (anything else: 404, exactly
    as if it did not exist). `category` defaults to `other`. One open report per reporter and
    subject: a second one answers 409 until the first is resolved."""

    subject_type: SubjectType
    subject_id: Id
    reason: Reason
    category: Category = "other"


class ReportOut(msgspec.Struct):
    """A report as its reporter sees it: once resolved, `action` says the outcome (`dismiss`:
    no action was taken; `remove`: the content was removed; `suspend`: the account was
    suspended)."""

    id: str
    subject_type: SubjectType
    subject_id: str
    category: Category
    reason: str
    status: ReportStatus
    created_at: datetime
    action: Action | None = None
    resolved_at: datetime | None = None


class AdminReportOut(msgspec.Struct):
    """A report in the moderators' queue. `reporter_id` null: raised by the word filter (the
    post or comment is held, visible only to its author, until resolved). `subject` is a copy
    of what was reported, taken when it was reported (a message report carries that message
    and nothing else of the conversation); `subject_user_id` the account it belongs to."""

    id: str
    reporter_id: str | None
    subject_type: SubjectType
    subject_id: str
    subject_user_id: str | None
    category: Category
    reason: str
    subject: dict[str, Any]
    status: ReportStatus
    action: Action | None
    note: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    created_at: datetime
    held: bool = False  # raised by the word filter


class ReportQueueQuery(msgspec.Struct):
    """The queue, oldest first: `status` (default `open`) and optionally `category`."""

    status: ReportStatus = "open"
    category: Category | None = None
    limit: Limit = 20
    cursor: Cursor | None = None


class ResolveIn(msgspec.Struct):
    """`dismiss`: no action (for content held by the word filter: publish it, fanned out as a
    new post). `remove`: delete the post or comment through the author's own deletion path
    (events, media, feeds on every node, search, notifications), or empty the message (a
    tombstone in history and sync, gone from search); on a user report, suspend the account
    without an end. `suspend`: suspend the account the subject belongs to (`reason` from the
    note, or the report's category), which also hides all their content until lifted.
    Each resolution notifies the reporter (`report_resolved`) and every action is audited."""

    action: Action
    note: Note | None = None


class SuspendIn(msgspec.Struct):
    """Suspend an account: every token stops on every node at once, its WebSocket sessions
    close, login and refresh answer 403, and everything it wrote is hidden until lifted.
    `until` (RFC 3339, in the future): lifted automatically then; omitted: until a moderator
    lifts it. Moderators may suspend users; admins also moderators; nobody an admin."""

    reason: Reason
    until: datetime | None = None


class UnsuspendIn(msgspec.Struct):
    """Lift a suspension: the content shows again; the user logs in again."""

    reason: Note | None = None


class SuspensionOut(msgspec.Struct):
    user_id: str
    username: str
    status: Literal["active", "suspended"]
    suspended_until: datetime | None = None
    reason: str | None = None


class AuditActor(msgspec.Struct):
    id: str
    username: str


class AuditEntryOut(msgspec.Struct):
    """One moderator or admin action. `actor` null: done through the CLI (`via: "cli"`) or by
    the node itself (`via: "system"`, an expired suspension lifted). `human_identifier` and
    `target` (a JSON copy of what the target was just before the action) survive the target's
    deletion. The log is append-only: no API changes or deletes an entry."""

    id: str
    created_at: datetime
    actor: AuditActor | None
    via: Literal["api", "cli", "system"]
    action: str
    target_type: str
    target_id: str | None
    human_identifier: str
    target: dict[str, Any]
    note: str | None


class AuditQuery(msgspec.Struct):
    """Newest first; filter by `action` (for example `user.suspend`), `target_type` and
    `target_id`."""

    action: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    target_type: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    target_id: Id | None = None
    limit: Limit = 20
    cursor: Cursor | None = None
