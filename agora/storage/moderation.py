"""Moderation's tables: reports (with the word filter's holds) and the append-only audit log.

Subjects are read here as moderators see them (no visibility rule: a moderator looks at what
was reported whatever its audience) and copied into a JSON snapshot, so a report and an audit
entry still say what the subject was after it is edited, removed or its author deleted.
Whether the *reporter* may see a subject is checked with the one visibility rule
(:mod:`agora.storage.visibility`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from agora.events.types import ReportResolved
from agora.storage.db import Database, Record, Tx
from agora.storage.events import append
from agora.storage.visibility import comment_visible, post_visible, users_hidden

SubjectType = Literal["post", "comment", "user", "message"]
HELD_REASON = "held by the word filter"
EXCERPT = 80  # characters of a text kept in a human identifier

# -- subjects ---------------------------------------------------------------------------------
# Each answers the subject's owner, a human identifier and a snapshot; with $2 a viewer, also
# whether that viewer may see it (a reporter may only report what they can see).
_SUBJECT_SQL: dict[str, str] = {
    "post": f"""
SELECT p.author_id AS owner_id, '@' || u.username || ': ' || left(p.text, {EXCERPT}) AS human,
       jsonb_build_object('id', p.id::text, 'author_id', p.author_id::text,
                          'author_username', u.username, 'text', p.text,
                          'visibility', p.visibility, 'media_ids', p.media_ids::text[],
                          'held', p.held, 'created_at', p.created_at) AS snapshot,
       {post_visible("$2::bigint", "p")} AS visible
FROM content.posts p JOIN accounts.users u ON u.id = p.author_id
WHERE p.id = $1
""",
    "comment": f"""
SELECT c.author_id AS owner_id, '@' || u.username || ': ' || left(c.text, {EXCERPT}) AS human,
       jsonb_build_object('id', c.id::text, 'post_id', c.post_id::text,
                          'author_id', c.author_id::text, 'author_username', u.username,
                          'text', c.text, 'held', c.held, 'created_at', c.created_at)
           AS snapshot,
       ({post_visible("$2::bigint", "p")} AND {comment_visible("$2::bigint", "c")}) AS visible
FROM content.comments c
JOIN content.posts p ON p.id = c.post_id
JOIN accounts.users u ON u.id = c.author_id
WHERE c.id = $1
""",
    "user": f"""
SELECT u.id AS owner_id, '@' || u.username AS human,
       jsonb_build_object('id', u.id::text, 'username', u.username,
                          'display_name', u.display_name, 'bio', u.bio, 'role', u.role,
                          'status', u.status, 'created_at', u.created_at) AS snapshot,
       (u.status = 'active' AND ($2::bigint = u.id OR NOT {users_hidden("$2::bigint", "u.id")}))
           AS visible
FROM accounts.users u WHERE u.id = $1
""",
    # A message report carries that message only, nothing else of the conversation.
    "message": f"""
SELECT m.sender_id AS owner_id, '@' || u.username || ': ' || left(m.text, {EXCERPT}) AS human,
       jsonb_build_object('id', m.id::text, 'conversation_id', m.conversation_id::text,
                          'seq', m.seq, 'sender_id', m.sender_id::text,
                          'sender_username', u.username, 'text', m.text,
                          'created_at', m.created_at) AS snapshot,
       (m.removed_at IS NULL AND u.status = 'active' AND EXISTS (
            SELECT 1 FROM chat.members mb
            WHERE mb.conversation_id = m.conversation_id AND mb.user_id = $2::bigint)) AS visible
FROM chat.messages m JOIN accounts.users u ON u.id = m.sender_id
WHERE m.id = $1
""",
}

# -- reports ----------------------------------------------------------------------------------
_REPORT_COLUMNS = """
r.id, r.reporter_id, r.subject_type, r.subject_id, r.subject_user_id, r.category, r.reason,
r.snapshot, r.status, r.action, r.note, r.resolved_by, r.resolved_at, r.created_at
"""
INSERT_REPORT = f"""
INSERT INTO moderation.reports AS r
    (reporter_id, subject_type, subject_id, subject_user_id, category, reason, snapshot)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
RETURNING {_REPORT_COLUMNS}
"""
INSERT_HOLD = """
INSERT INTO moderation.reports
    (reporter_id, subject_type, subject_id, subject_user_id, category, reason, snapshot)
VALUES (NULL, $1, $2::bigint, $3, 'other', $4,
        jsonb_build_object('id', $2::bigint::text, 'text', $5::text, 'edited', $6::boolean))
ON CONFLICT (subject_type, subject_id) WHERE status = 'open' AND reporter_id IS NULL DO NOTHING
"""
# The queue: oldest first, by status and optionally category, after an id.
LIST_REPORTS = f"""
SELECT {_REPORT_COLUMNS} FROM moderation.reports r
WHERE r.status = $1 AND ($2::text IS NULL OR r.category = $2) AND r.id > $3
ORDER BY r.id LIMIT $4
"""
GET_REPORT = f"SELECT {_REPORT_COLUMNS} FROM moderation.reports r WHERE r.id = $1"
LOCK_REPORT = GET_REPORT + " FOR UPDATE"
# Resolve this report and, for remove and suspend, every other open report of the same subject
# (the content is gone or hidden, so they are answered too). Every reporter is told.
RESOLVE = """
UPDATE moderation.reports SET status = 'resolved', action = $2, note = $3, resolved_by = $4,
       resolved_at = now()
WHERE status = 'open'
  AND (id = $1 OR ($5 AND subject_type = $6 AND subject_id = $7))
RETURNING id, reporter_id
"""

# -- the audit log ----------------------------------------------------------------------------
_AUDIT_COLUMNS = """
a.id, a.created_at, a.actor_id, a.actor_username, a.via, a.action, a.target_type, a.target_id,
a.human_identifier, a.snapshot, a.note
"""
INSERT_AUDIT = """
INSERT INTO moderation.audit_log
    (actor_id, actor_username, via, action, target_type, target_id, human_identifier,
     snapshot, note)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)
RETURNING id
"""
# Newest first, optionally by action and target, before an id.
LIST_AUDIT = f"""
SELECT {_AUDIT_COLUMNS} FROM moderation.audit_log a
WHERE a.id < $1 AND ($2::text IS NULL OR a.action = $2)
  AND ($3::text IS NULL OR a.target_type = $3) AND ($4::bigint IS NULL OR a.target_id = $4)
ORDER BY a.id DESC LIMIT $5
"""


@dataclass(frozen=True, slots=True)
class Subject:
    """A reported (or moderated) thing as it is now."""

    type: str
    id: int
    owner_id: int
    human: str
    snapshot: dict[str, Any]
    visible: bool  # to the viewer asked about


@dataclass(frozen=True, slots=True)
class ReportRow:
    id: int
    reporter_id: int | None
    subject_type: SubjectType
    subject_id: int
    subject_user_id: int | None
    category: str
    reason: str
    snapshot: dict[str, Any]
    status: str
    action: str | None
    note: str | None
    resolved_by: int | None
    resolved_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: Record) -> ReportRow:
        return cls(*row.values())


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    created_at: datetime
    actor_id: int | None
    actor_username: str | None
    via: str
    action: str
    target_type: str
    target_id: int | None
    human_identifier: str
    snapshot: dict[str, Any]
    note: str | None

    @classmethod
    def of(cls, row: Record) -> AuditRow:
        return cls(*row.values())


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What one audit entry says; ``actor_id`` None with ``via`` "cli" or "system"."""

    actor_id: int | None
    actor_username: str | None
    via: str
    action: str
    target_type: str
    target_id: int | None
    human_identifier: str
    snapshot: dict[str, Any]
    note: str | None = None


class DuplicateReport(Exception):
    """The reporter already has an open report of this subject."""


async def hold(
    tx: Tx, subject_type: str, subject_id: int, author_id: int, text: str, edited: bool = False
) -> None:
    """Queue a held post or comment for review (in the transaction that stores it or, with
    ``edited``, the edit that made a published post match)."""
    await tx.execute(
        "insert_hold", INSERT_HOLD, subject_type, subject_id, author_id, HELD_REASON, text, edited
    )


async def append_audit(tx: Tx | Database, entry: AuditEntry) -> int:
    """Append one entry (the only write the audit log ever takes)."""
    entry_id: int = await tx.fetchval(
        "insert_audit",
        INSERT_AUDIT,
        entry.actor_id,
        entry.actor_username,
        entry.via,
        entry.action,
        entry.target_type,
        entry.target_id,
        entry.human_identifier,
        entry.snapshot,
        entry.note,
    )
    return entry_id


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def subject(
        self, subject_type: str, subject_id: int, viewer_id: int | None = None
    ) -> Subject | None:
        """The subject as it is now (``visible``: to ``viewer_id``), or None when it is gone."""
        row = await self.db.fetchrow(
            f"moderation_subject_{subject_type}",
            _SUBJECT_SQL[subject_type],
            subject_id,
            viewer_id,
        )
        if row is None:
            return None
        return Subject(
            subject_type,
            subject_id,
            row["owner_id"],
            row["human"],
            row["snapshot"],
            bool(row["visible"]),
        )

    async def create(
        self,
        reporter_id: int,
        subject: Subject,
        category: str,
        reason: str,
    ) -> ReportRow:
        try:
            row = await self.db.fetchrow(
                "insert_report",
                INSERT_REPORT,
                reporter_id,
                subject.type,
                subject.id,
                subject.owner_id,
                category,
                reason,
                subject.snapshot,
            )
        except asyncpg.UniqueViolationError:
            raise DuplicateReport() from None
        assert row is not None
        return ReportRow.of(row)

    async def page(
        self, status: str, category: str | None, after_id: int, limit: int
    ) -> list[ReportRow]:
        rows = await self.db.fetch("list_reports", LIST_REPORTS, status, category, after_id, limit)
        return [ReportRow.of(r) for r in rows]

    async def get(self, report_id: int) -> ReportRow | None:
        row = await self.db.fetchrow("get_report", GET_REPORT, report_id)
        return ReportRow.of(row) if row else None

    async def resolve(
        self,
        report: ReportRow,
        action: str,
        note: str | None,
        moderator_id: int,
        audit: AuditEntry,
    ) -> list[int] | None:
        """Close ``report`` (and for remove/suspend every other open report of its subject)
        with the audit entry and a report.resolved event per report, in one transaction.
        The ids closed; None when the report was no longer open."""
        async with self.db.transaction("resolve_report") as tx:
            locked = await tx.fetchrow("lock_report", LOCK_REPORT, report.id)
            if locked is None or locked["status"] != "open":
                return None
            rows = await tx.fetch(
                "resolve_reports",
                RESOLVE,
                report.id,
                action,
                note,
                moderator_id,
                action != "dismiss",
                report.subject_type,
                report.subject_id,
            )
            for row in rows:
                if row["reporter_id"] is not None:
                    await append(
                        tx,
                        ReportResolved(
                            report_id=row["id"],
                            reporter_id=row["reporter_id"],
                            moderator_id=moderator_id,
                            action=action,
                            subject_type=report.subject_type,
                            subject_id=report.subject_id,
                        ),
                        moderator_id,
                    )
            await append_audit(tx, audit)
        return [r["id"] for r in rows]


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def append(self, entry: AuditEntry) -> int:
        return await append_audit(self.db, entry)

    async def page(
        self,
        before_id: int,
        limit: int,
        action: str | None = None,
        target_type: str | None = None,
        target_id: int | None = None,
    ) -> list[AuditRow]:
        rows = await self.db.fetch(
            "list_audit", LIST_AUDIT, before_id, action, target_type, target_id, limit
        )
        return [AuditRow.of(r) for r in rows]
