"""The audit log: every moderator and admin action, append-only.

Actions (``action``): ``report.resolve``, ``user.suspend``, ``user.unsuspend``,
``user.set_role``, ``user.create`` (by the CLI), ``post.delete``, ``comment.delete`` (a
moderator deleting someone else's content, through the API or a report) and
``message.remove``. Each entry copies its actor's username and what the target was
(``human_identifier`` and a JSON snapshot), so it reads the same after either is deleted. The
only write is an insert (:func:`agora.storage.moderation.append_audit`); the table's triggers
refuse updates and deletes.
"""

from __future__ import annotations

from typing import Any, Literal

from agora.protocol.common import Page
from agora.protocol.cursor import decode_cursor, encode_cursor
from agora.protocol.moderation import AuditActor, AuditEntryOut, AuditQuery
from agora.services.pages import make_page
from agora.storage.accounts import UserRecord
from agora.storage.db import MAX_ID, Database
from agora.storage.moderation import AuditEntry, AuditRow, AuditStore, ReportStore, Subject

Via = Literal["api", "cli", "system"]


def user_snapshot(user: UserRecord) -> dict[str, Any]:
    """What an audit entry keeps of an account."""
    return {
        "id": str(user.id),
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "status": user.status,
        "created_at": user.created_at.isoformat(),
    }


def entry(
    actor: UserRecord | None,
    action: str,
    target: Subject | UserRecord | tuple[str, int | None, str, dict[str, Any]],
    note: str | None = None,
    via: Via = "api",
) -> AuditEntry:
    """An entry for ``action`` by ``actor`` (None: the CLI or the system) on ``target``: a
    subject, an account, or ``(type, id, human identifier, snapshot)``."""
    target_id: int | None
    if isinstance(target, Subject):
        kind, target_id, human, snapshot = target.type, target.id, target.human, target.snapshot
    elif isinstance(target, UserRecord):
        kind, target_id, human = "user", target.id, f"@{target.username}"
        snapshot = user_snapshot(target)
    else:
        kind, target_id, human, snapshot = target
    return AuditEntry(
        actor_id=actor.id if actor else None,
        actor_username=actor.username if actor else None,
        via=via,
        action=action,
        target_type=kind,
        target_id=target_id,
        human_identifier=human,
        snapshot=snapshot,
        note=note,
    )


def audit_out(row: AuditRow) -> AuditEntryOut:
    return AuditEntryOut(
        id=str(row.id),
        created_at=row.created_at,
        actor=(
            AuditActor(id=str(row.actor_id), username=row.actor_username or "")
            if row.actor_id is not None
            else None
        ),
        via=row.via,  # type: ignore[arg-type]  # the table's CHECK holds it to the three
        action=row.action,
        target_type=row.target_type,
        target_id=str(row.target_id) if row.target_id is not None else None,
        human_identifier=row.human_identifier,
        target=row.snapshot,
        note=row.note,
    )


class AuditLog:
    def __init__(self, store: AuditStore, subjects: ReportStore) -> None:
        self.store = store
        self.subjects = subjects

    async def record(self, audit: AuditEntry) -> None:
        await self.store.append(audit)

    async def subject(self, kind: str, subject_id: int) -> Subject | None:
        """What ``kind`` ``subject_id`` is now, for an entry about to be written."""
        return await self.subjects.subject(kind, subject_id)

    async def moderated(self, actor: UserRecord | None, action: str, subject: Subject) -> None:
        """A moderator's action on someone else's content (``post.delete``, ...)."""
        await self.record(entry(actor, action, subject))

    async def list(self, q: AuditQuery) -> Page[AuditEntryOut]:
        c = decode_cursor(q.cursor, "audit", before=int)
        rows = await self.store.page(
            c["before"] if c else MAX_ID + 1,
            q.limit + 1,
            action=q.action,
            target_type=q.target_type,
            target_id=int(q.target_id) if q.target_id is not None else None,
        )
        return make_page(rows, q.limit, audit_out, lambda r: encode_cursor("audit", before=r.id))


async def record_cli(db: Database, action: str, user: UserRecord, note: str | None = None) -> None:
    """An entry for an ``agora admin`` command (actor null, ``via: "cli"``)."""
    await AuditStore(db).append(entry(None, action, user, note, via="cli"))
