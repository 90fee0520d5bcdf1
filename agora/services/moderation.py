"""Reports, the moderators' queue and actions, and suspensions (issue 12).

Every check of who may do what goes through :mod:`agora.services.roles`; every moderator
action is written to the audit log (:mod:`agora.services.audit`).

- **Reports** (``POST /reports``): of a post, comment, user or message the reporter can see
  (anything else is 404, as if it did not exist); one open report per reporter and subject
  (409); a copy of the subject is kept with the report.
- **Resolve** (``dismiss | remove | suspend``): see :class:`agora.protocol.moderation.ResolveIn`.
  ``remove`` and ``suspend`` close every open report of the subject; each reporter gets a
  ``report_resolved`` notification.
- **Suspension**: one transaction sets the status and revokes every login of the account; the
  revocations are then broadcast (every node refuses the tokens and closes the WebSocket
  sessions at once) and so is the suspension itself (:mod:`agora.services.suspensions`, which
  ``authenticate`` checks). The feed page caches of every node drop the author's posts (their
  friends' pages too, so that unsuspending brings them back at once); everything else re-reads
  the visibility rule, which hides a suspended account's content. A suspension with an end is
  lifted by the housekeeping job (every minute) or by a login or refresh that finds it over.
- **Rank**: moderators may suspend users; admins also moderators; nobody suspends an admin or
  themselves (403).
"""

from __future__ import annotations

import logging
from datetime import datetime

from agora.clock import Clock
from agora.errors import AppError, ErrorCode, conflict, forbidden, invalid, not_found
from agora.protocol.common import Page
from agora.protocol.cursor import decode_cursor, encode_cursor
from agora.protocol.moderation import (
    AdminReportOut,
    AuditEntryOut,
    AuditQuery,
    ReportIn,
    ReportOut,
    ReportQueueQuery,
    ResolveIn,
    SuspendIn,
    SuspensionOut,
    UnsuspendIn,
)
from agora.services import audit as audit_entries
from agora.services.audit import AuditLog, user_snapshot
from agora.services.invalidation import Invalidator
from agora.services.pages import make_page
from agora.services.posts import PostService
from agora.services.revocations import Revocations
from agora.services.roles import MODERATING_ROLES, require_role
from agora.services.suspensions import Suspensions
from agora.storage.accounts import AccountStore, UserRecord
from agora.storage.chat import ChatStore
from agora.storage.moderation import DuplicateReport, ReportRow, ReportStore, Subject
from agora.storage.social import SocialStore

log = logging.getLogger(__name__)

RANK = {"user": 0, "moderator": 1, "admin": 2}


def admin_report_out(r: ReportRow) -> AdminReportOut:
    return AdminReportOut(
        id=str(r.id),
        reporter_id=str(r.reporter_id) if r.reporter_id is not None else None,
        subject_type=r.subject_type,
        subject_id=str(r.subject_id),
        subject_user_id=str(r.subject_user_id) if r.subject_user_id is not None else None,
        category=r.category,  # type: ignore[arg-type]  # the table's CHECK holds it
        reason=r.reason,
        subject=r.snapshot,
        status=r.status,  # type: ignore[arg-type]
        action=r.action,  # type: ignore[arg-type]
        note=r.note,
        resolved_by=str(r.resolved_by) if r.resolved_by is not None else None,
        resolved_at=r.resolved_at,
        created_at=r.created_at,
        held=r.reporter_id is None,
    )


def report_out(r: ReportRow) -> ReportOut:
    return ReportOut(
        id=str(r.id),
        subject_type=r.subject_type,
        subject_id=str(r.subject_id),
        category=r.category,  # type: ignore[arg-type]  # the table's CHECK holds it
        reason=r.reason,
        status=r.status,  # type: ignore[arg-type]
        created_at=r.created_at,
        action=r.action,  # type: ignore[arg-type]
        resolved_at=r.resolved_at,
    )


def suspended_message(until: datetime | None) -> str:
    if until is None:
        return "this account is suspended"
    return f"this account is suspended until {until.isoformat()}"


class ModerationService:
    def __init__(
        self,
        accounts: AccountStore,
        revocations: Revocations,
        suspensions: Suspensions,
        reports: ReportStore,
        audit: AuditLog,
        posts: PostService,
        chat: ChatStore,
        social: SocialStore,
        invalidator: Invalidator,
        clock: Clock,
    ) -> None:
        self.accounts = accounts
        self.revocations = revocations
        self.suspensions = suspensions
        self.reports = reports
        self.audit = audit
        self.posts = posts
        self.chat = chat
        self.social = social
        self.invalidator = invalidator
        self.clock = clock

    # -- reports -------------------------------------------------------------------------------

    async def report(self, reporter_id: int, body: ReportIn) -> ReportOut:
        subject = await self.reports.subject(body.subject_type, int(body.subject_id), reporter_id)
        if subject is None or not subject.visible:
            raise not_found(body.subject_type)
        if subject.owner_id == reporter_id:
            raise invalid({"subject_id": "you cannot report yourself or what you wrote"})
        try:
            row = await self.reports.create(reporter_id, subject, body.category, body.reason)
        except DuplicateReport:
            raise conflict(f"you already have an open report of this {body.subject_type}") from None
        log.info("report %s of %s %s", row.id, row.subject_type, row.subject_id)
        return report_out(row)

    async def my_report(self, reporter_id: int, report_id: int) -> ReportOut:
        """One of the caller's own reports (anyone else's: 404), with its outcome."""
        row = await self.reports.get(report_id)
        if row is None or row.reporter_id != reporter_id:
            raise not_found("report")
        return report_out(row)

    async def queue(self, moderator_id: int, q: ReportQueueQuery) -> Page[AdminReportOut]:
        await require_role(self.accounts, moderator_id, MODERATING_ROLES)
        c = decode_cursor(q.cursor, "reports", after=int)
        rows = await self.reports.page(q.status, q.category, c["after"] if c else 0, q.limit + 1)
        return make_page(
            rows, q.limit, admin_report_out, lambda r: encode_cursor("reports", after=r.id)
        )

    async def resolve(self, moderator_id: int, report_id: int, body: ResolveIn) -> AdminReportOut:
        moderator = await require_role(self.accounts, moderator_id, MODERATING_ROLES)
        report = await self.reports.get(report_id)
        if report is None:
            raise not_found("report")
        if report.status != "open":
            raise conflict("this report is already resolved")
        subject = await self.reports.subject(report.subject_type, report.subject_id)
        action, note = body.action, body.note
        if action == "dismiss":
            if report.reporter_id is None and subject is not None:
                await self._publish(moderator, report)
        elif action == "remove":
            if report.subject_type == "user":
                await self._suspend_owner(moderator, report, note)
            elif subject is not None:
                await self._remove(moderator, subject)
        else:
            await self._suspend_owner(moderator, report, note)
        audit = audit_entries.entry(
            moderator,
            "report.resolve",
            (
                "report",
                report.id,
                f"report {report.id} ({report.category}) on "
                + (subject.human if subject else f"{report.subject_type} {report.subject_id}"),
                {
                    "id": str(report.id),
                    "action": action,
                    "category": report.category,
                    "reason": report.reason,
                    "reporter_id": str(report.reporter_id) if report.reporter_id else None,
                    "subject_type": report.subject_type,
                    "subject_id": str(report.subject_id),
                    "subject": subject.snapshot if subject else report.snapshot,
                },
            ),
            note,
        )
        if await self.reports.resolve(report, action, note, moderator.id, audit) is None:
            raise conflict("this report is already resolved")
        resolved = await self.reports.get(report_id)
        assert resolved is not None
        return admin_report_out(resolved)

    async def _publish(self, moderator: UserRecord, report: ReportRow) -> None:
        """Dismissing the word filter's hold publishes the content, as if just posted."""
        if report.subject_type == "post":
            edited = bool(report.snapshot.get("edited"))
            await self.posts.publish_held_post(report.subject_id, moderator.id, edited)
        elif report.subject_type == "comment":
            await self.posts.publish_held_comment(report.subject_id, moderator.id)

    async def _remove(self, moderator: UserRecord, subject: Subject) -> None:
        """Posts and comments go through the author's own deletion path (which audits a
        moderator's deletion); a message is emptied to a tombstone."""
        try:
            if subject.type == "post":
                await self.posts.delete(moderator.id, subject.id)
            elif subject.type == "comment":
                await self.posts.delete_comment(moderator.id, subject.id)
            elif subject.type == "message" and await self.chat.remove_message(
                subject.id, moderator.id
            ):
                await self.audit.record(audit_entries.entry(moderator, "message.remove", subject))
        except AppError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise  # gone meanwhile: nothing left to remove

    async def _suspend_owner(
        self, moderator: UserRecord, report: ReportRow, note: str | None
    ) -> None:
        if report.subject_user_id is None:
            raise not_found("user")
        await self.suspend(
            moderator.id,
            report.subject_user_id,
            SuspendIn(reason=note or f"report {report.id}: {report.category}"),
        )

    # -- suspension ----------------------------------------------------------------------------

    async def _target(self, actor: UserRecord, user_id: int) -> UserRecord:
        target = await self.accounts.get_user(user_id)
        if target is None:
            raise not_found("user")
        if target.id == actor.id or RANK.get(target.role, 0) >= RANK.get(actor.role, 0):
            raise forbidden(
                "moderators may act on users and admins also on moderators; "
                "nobody on an admin or on themselves"
            )
        return target

    async def suspend(self, actor_id: int, user_id: int, body: SuspendIn) -> SuspensionOut:
        actor = await require_role(self.accounts, actor_id, MODERATING_ROLES)
        target = await self._target(actor, user_id)
        if body.until is not None and body.until <= self.clock.now():
            raise invalid({"until": "must be in the future"})
        done = await self.accounts.suspend(user_id, body.until, body.reason, actor.id)
        if done is None:
            raise not_found("user")
        user, logins = done
        if logins:
            await self.revocations.revoke(logins)
        await self.suspensions.changed(user_id, True)
        await self._content_changed(user_id)
        snapshot = {
            **user_snapshot(target),
            "until": body.until.isoformat() if body.until else None,
        }
        await self.audit.record(
            audit_entries.entry(
                actor,
                "user.suspend",
                ("user", user.id, f"@{user.username}", snapshot),
                body.reason,
            )
        )
        log.info("user %s suspended by %s (%d logins revoked)", user_id, actor_id, len(logins))
        return SuspensionOut(
            user_id=str(user.id),
            username=user.username,
            status="suspended",
            suspended_until=body.until,
            reason=body.reason,
        )

    async def unsuspend(self, actor_id: int, user_id: int, body: UnsuspendIn) -> SuspensionOut:
        actor = await require_role(self.accounts, actor_id, MODERATING_ROLES)
        target = await self._target(actor, user_id)
        user = await self.accounts.unsuspend(user_id, actor.id)
        if user is None:
            raise conflict("this account is not suspended")
        await self._lifted(user)
        await self.audit.record(audit_entries.entry(actor, "user.unsuspend", target, body.reason))
        return SuspensionOut(user_id=str(user.id), username=user.username, status="active")

    async def lift_if_over(self, user_id: int) -> bool:
        """Lift the user's suspension if its end has passed (login and refresh ask)."""
        user = await self.accounts.unsuspend(user_id, None, only_if_over=True)
        if user is None:
            return False
        await self._lifted(user)
        await self.audit.record(
            audit_entries.entry(None, "user.unsuspend", user, "the suspension ended", "system")
        )
        return True

    async def lift_expired(self) -> int:
        """The housekeeping job: lift every suspension whose end has passed."""
        lifted = 0
        for user_id in await self.accounts.suspensions_over():
            lifted += await self.lift_if_over(user_id)
        if lifted:
            log.info("lifted %d suspension(s) that ended", lifted)
        return lifted

    async def suspended_message(self, user_id: int) -> str:
        found = await self.accounts.suspension(user_id)
        return suspended_message(found.until if found else None)

    async def _lifted(self, user: UserRecord) -> None:
        await self.suspensions.changed(user.id, False)
        await self._content_changed(user.id)

    async def _content_changed(self, user_id: int) -> None:
        """Hidden or shown again: every node's feed pages showing the author's posts go, and so
        do the pages of their friends' feeds (built without them while suspended)."""
        self.invalidator.authors([user_id])
        self.invalidator.viewers([user_id, *await self.social.friend_ids(user_id)])

    # -- the audit log ---------------------------------------------------------------------------

    async def audit_log(self, actor_id: int, q: AuditQuery) -> Page[AuditEntryOut]:
        await require_role(self.accounts, actor_id, MODERATING_ROLES)
        return await self.audit.list(q)
