"""Notifications: what each domain event notifies whom of, grouping, preferences, the REST side.

:class:`NotificationConsumer` is the event consumer (``name = "notifications"``). Per event:

- ``friend_request.sent`` -> the recipient (``friend_request``); ``friend_request.accepted`` ->
  the original sender (``friend_accepted``);
- ``comment.created`` -> the parent comment's author (``reply``) and the post's author
  (``comment``; only the reply when they are the same person); ``@username`` in its text (or in
  a ``post.created``'s) -> those users (``mention``; at most :data:`MAX_MENTIONS` per text,
  active users who may see the post, not someone the event already notifies);
- ``reaction.set`` with no previous reaction -> the post's author (``reaction``);
- ``message.stored`` -> every other member with no open session anywhere (``message``);
- ``report.resolved`` -> the reporter (``report_resolved``, subject the report, actor the
  moderator who resolved it);
- ``post.deleted`` deletes the post's notifications, ``comment.deleted`` takes the comment
  (and the replies deleted with it) out of its groups, ``user.blocked`` takes away what either
  user caused the other.

Nobody is notified of their own actions, across a block (either way), of a post they may not
see, of a kind they turned off, or (``only_friends``) by a non-friend. Reactions and comments
on one post group for 12 hours from the group's first notification; messages of one
conversation group while unread; the other kinds are groups of one. A group that grows becomes
unread, moves to the top and is pushed again. Times are the events' ``occurred_at``.

:class:`NotificationService` is the REST side: list (re-checking visibility and blocks on every
read), mark read, preferences.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from agora.errors import invalid
from agora.events.consumer import AfterCommit, Reach
from agora.events.types import (
    CommentCreated,
    CommentDeleted,
    Event,
    FriendRequestAccepted,
    FriendRequestSent,
    MessageStored,
    PostCreated,
    PostDeleted,
    ReactionSet,
    ReportResolved,
    UserBlocked,
)
from agora.protocol.cursor import decode_cursor, encode_cursor
from agora.protocol.frames import NotificationFrame, encode
from agora.protocol.notifications import (
    FRIEND_FILTERABLE,
    KINDS,
    KindSetting,
    NotificationOut,
    NotificationPage,
    NotificationSettingsIn,
    NotificationSettingsOut,
    ReadIn,
)
from agora.services.presenters import user_out
from agora.storage.accounts import PublicUser
from agora.storage.db import MAX_ID, Database, Tx
from agora.storage.notifications import (
    WINDOW_SECONDS,
    Candidate,
    GroupRow,
    NewGroup,
    NewSource,
    NotificationStore,
    Setting,
)

log = logging.getLogger(__name__)

MAX_MENTIONS = 10
# "@name": a username (3-30 letters, digits, underscores) not inside a word or an address.
MENTION = re.compile(r"(?<![A-Za-z0-9_@])@([A-Za-z0-9_]{3,30})(?![A-Za-z0-9_@])")

OnCreated = Callable[[str], None]


def mentioned_names(text: str) -> list[str]:
    """The distinct usernames ``text`` mentions (lower-cased, in order, at most 10)."""
    names: list[str] = []
    for match in MENTION.finditer(text):
        name = match.group(1).lower()
        if name not in names:
            names.append(name)
            if len(names) == MAX_MENTIONS:
                break
    return names


def notification_out(group: GroupRow, users: dict[int, PublicUser]) -> NotificationOut | None:
    """The wire form of a group (None when none of its actors can be shown)."""
    actors = [user_out(users[a]) for a in group.actor_ids if a in users]
    if not actors:
        return None
    return NotificationOut(
        id=str(group.id),
        kind=group.kind,  # type: ignore[arg-type]  # the table's CHECK holds it to the kinds
        actor=actors[0],
        subject_type=group.subject_type,  # type: ignore[arg-type]
        subject_id=str(group.subject_id),
        created_at=group.created_at,
        read=group.read_at is not None,
        group_key=f"{group.base_key}:{group.id}",
        notifications_count=group.count,
        actors=actors,
        updated_at=group.updated_at,
        post_id=str(group.post_id) if group.post_id is not None else None,
    )


# -- the consumer -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Removal:
    """What a deleting event takes away, applied in its place among the batch's events."""

    post_ids: tuple[int, ...] = ()  # post.deleted
    comment: tuple[int, int] | None = None  # comment.deleted: (post, comment)
    pair: tuple[int, int] | None = None  # user.blocked


class _Slot:
    """A group a batch adds to: an existing one (``group_id``) or a new one."""

    __slots__ = ("created_at", "first", "group_id", "keys", "read", "sources")

    def __init__(
        self, first: Candidate, created_at: datetime, read: bool, group_id: int | None
    ) -> None:
        self.first = first
        self.created_at = created_at
        self.read = read
        self.group_id = group_id
        self.keys: set[int] = set()
        self.sources: list[Candidate] = []

    def open_to(self, c: Candidate) -> bool:
        if c.mode == "window":
            return self.created_at > c.at - timedelta(seconds=WINDOW_SECONDS)
        return not self.read  # 'unread': open until read (a group that grows is unread)

    def add(self, c: Candidate) -> None:
        if c.source_key not in self.keys:  # the same user reacting twice counts once
            self.keys.add(c.source_key)
            self.sources.append(c)
            self.read = False

    def new_group(self) -> NewGroup:
        c = self.first
        newest = sorted(self.sources, key=lambda s: (s.at, s.event_id), reverse=True)
        actors: list[int] = []
        for s in newest:
            if s.actor not in actors:
                actors.append(s.actor)
        return NewGroup(
            user_id=c.recipient,
            kind=c.kind,
            base_key=c.base_key,
            subject_type=c.subject_type,
            subject_id=c.subject_id,
            post_id=c.post_id,
            actor_ids=actors[:3],
            count=len(self.sources),
            created_at=self.created_at,
            updated_at=newest[0].at,
        )

    def new_sources(self, group: int) -> list[NewSource]:
        return [
            NewSource(
                group=group,
                source_key=s.source_key,
                event_id=s.event_id,
                actor_id=s.actor,
                comment_id=s.comment_id,
                at=s.at,
            )
            for s in self.sources
        ]


class NotificationConsumer:
    name = "notifications"
    handles = frozenset(
        {
            FriendRequestSent.type,
            FriendRequestAccepted.type,
            PostCreated.type,
            CommentCreated.type,
            ReactionSet.type,
            MessageStored.type,
            PostDeleted.type,
            CommentDeleted.type,
            UserBlocked.type,
            ReportResolved.type,
        }
    )

    def __init__(
        self, store: NotificationStore, reach: Reach, on_created: OnCreated | None = None
    ) -> None:
        self.store = store
        self.reach = reach
        self.on_created = on_created

    async def handle(self, events: list[Event], tx: Tx) -> AfterCommit | None:
        names, conversations = self._lookups_needed(events)
        users_by_name = await self.store.users_by_name(tx, names) if names else {}
        members = await self.store.members(tx, conversations) if conversations else {}
        offline = await self._offline(events, members)

        steps: list[list[Candidate] | _Removal] = [
            self._removal(e) or self._candidates(e, users_by_name, members, offline) for e in events
        ]
        candidates = [c for step in steps if isinstance(step, list) for c in step]
        admitted_idx = await self.store.admissible(tx, candidates)
        admitted: set[int] = set()  # ids of the admitted Candidate objects
        notified: set[tuple[int, int]] = set()  # (event, recipient): one notification each
        for i, c in enumerate(candidates):
            if i in admitted_idx and (c.event_id, c.recipient) not in notified:
                notified.add((c.event_id, c.recipient))
                admitted.add(id(c))
        await self.store.lock_groups(
            tx,
            (
                (c.recipient, c.base_key)
                for c in candidates
                if id(c) in admitted and c.mode != "single"
            ),
        )

        touched: dict[int, None] = {}  # groups new or grown, in order
        segment: list[Candidate] = []  # the admitted notifications since the last removal
        for step in steps:
            if isinstance(step, _Removal):
                await self._write(tx, segment, touched)
                segment = []
                await self._remove(tx, step)
            else:
                segment.extend(c for c in step if id(c) in admitted)
        await self._write(tx, segment, touched)
        if not touched:
            return None
        return await self._pushes(tx, list(touched))

    async def _write(self, tx: Tx, candidates: list[Candidate], touched: dict[int, None]) -> None:
        """Group ``candidates`` (in order) onto the latest groups or new ones, then write them
        all in one statement."""
        if not candidates:
            return
        latest = await self.store.latest_groups(
            tx, ((c.recipient, c.base_key) for c in candidates if c.mode != "single")
        )
        slots: dict[tuple[int, str], _Slot] = {}  # the group each key adds to now
        new: list[_Slot] = []
        existing: list[_Slot] = []
        for c in candidates:
            key = (c.recipient, c.base_key)
            slot: _Slot | None = None
            if c.mode != "single":
                slot = slots.get(key)
                if slot is None and key in latest:
                    found = latest.pop(key)
                    slot = slots[key] = _Slot(c, found.created_at, found.read, found.id)
                    existing.append(slot)
                if slot is not None and not slot.open_to(c):
                    slot = None
            if slot is None:
                slot = _Slot(c, c.at, False, None)
                new.append(slot)
                if c.mode != "single":
                    slots[key] = slot
            slot.add(c)
        written = await self.store.write(
            tx,
            [s.new_group() for s in new],
            [
                *(src for i, s in enumerate(new) for src in s.new_sources(-(i + 1))),
                *(src for s in existing if s.group_id for src in s.new_sources(s.group_id)),
            ],
        )
        for group_id, kind, gained in written:
            touched.pop(group_id, None)
            touched[group_id] = None
            if self.on_created is not None:
                for _ in range(gained):
                    self.on_created(kind)

    @staticmethod
    def _lookups_needed(events: list[Event]) -> tuple[set[str], set[int]]:
        names: set[str] = set()
        conversations: set[int] = set()
        for e in events:
            p = e.payload
            if isinstance(p, PostCreated | CommentCreated):
                names.update(mentioned_names(p.text))
            elif isinstance(p, MessageStored):
                conversations.add(p.conversation_id)
        return names, conversations

    async def _offline(self, events: list[Event], members: dict[int, list[int]]) -> set[int]:
        """The members to notify of messages: those with no open session anywhere."""
        wanted: set[int] = set()
        for e in events:
            p = e.payload
            if isinstance(p, MessageStored):
                wanted.update(m for m in members.get(p.conversation_id, ()) if m != p.sender_id)
        if not wanted:
            return set()
        return wanted - await self.reach.online(sorted(wanted))

    @staticmethod
    def _removal(e: Event) -> _Removal | None:
        p = e.payload
        if isinstance(p, PostDeleted):
            return _Removal(post_ids=(p.post_id,))
        if isinstance(p, CommentDeleted):
            return _Removal(comment=(p.post_id, p.comment_id))
        if isinstance(p, UserBlocked):
            return _Removal(pair=(p.blocker_id, p.blocked_id))
        return None

    async def _remove(self, tx: Tx, r: _Removal) -> None:
        if r.post_ids:
            await self.store.delete_for_posts(tx, r.post_ids)
        if r.comment is not None:
            await self.store.remove_comments(tx, [r.comment[0]], [r.comment[1]])
        if r.pair is not None:
            await self.store.remove_between(tx, *r.pair)

    @staticmethod
    def _candidates(
        e: Event,
        users_by_name: dict[str, int],
        members: dict[int, list[int]],
        offline: set[int],
    ) -> list[Candidate]:
        """What ``e`` may notify, most specific first (an event notifies a user once: the
        first of these that passes the filter)."""
        p, at = e.payload, e.occurred_at
        out: list[Candidate] = []

        def add(
            recipient: int,
            actor: int,
            kind: str,
            subject: tuple[str, int],
            *,
            post_id: int | None = None,
            mode: str = "single",
            group_on: str | None = None,
            source_key: int,
            comment_id: int | None = None,
        ) -> None:
            if recipient == actor:  # never for your own actions
                return
            base = f"{kind}:{group_on or f'{subject[0]}:{subject[1]}'}"
            out.append(
                Candidate(
                    recipient=recipient,
                    actor=actor,
                    kind=kind,
                    base_key=base,
                    subject_type=subject[0],
                    subject_id=subject[1],
                    post_id=post_id,
                    mode=mode,
                    source_key=source_key,
                    comment_id=comment_id,
                    event_id=e.id,
                    at=at,
                )
            )

        def mentions(text: str, actor: int, subject: tuple[str, int], post_id: int) -> None:
            for name in mentioned_names(text):
                user = users_by_name.get(name)
                if user is not None:
                    add(
                        user,
                        actor,
                        "mention",
                        subject,
                        post_id=post_id,
                        source_key=subject[1],
                        comment_id=subject[1] if subject[0] == "comment" else None,
                    )

        if isinstance(p, ReportResolved):
            add(
                p.reporter_id,
                p.moderator_id,
                "report_resolved",
                ("report", p.report_id),
                source_key=p.report_id,
            )
        elif isinstance(p, FriendRequestSent):
            add(p.to_id, p.from_id, "friend_request", ("user", p.from_id), source_key=p.request_id)
        elif isinstance(p, FriendRequestAccepted):
            add(p.from_id, p.to_id, "friend_accepted", ("user", p.to_id), source_key=p.request_id)
        elif isinstance(p, CommentCreated):
            if p.parent_id is not None and p.parent_author_id is not None:
                add(
                    p.parent_author_id,
                    p.author_id,
                    "reply",
                    ("comment", p.comment_id),
                    post_id=p.post_id,
                    source_key=p.comment_id,
                    comment_id=p.comment_id,
                )
            add(
                p.post_author_id,
                p.author_id,
                "comment",
                ("post", p.post_id),
                post_id=p.post_id,
                mode="window",
                source_key=p.comment_id,
                comment_id=p.comment_id,
            )
            mentions(p.text, p.author_id, ("comment", p.comment_id), p.post_id)
        elif isinstance(p, PostCreated):
            mentions(p.text, p.author_id, ("post", p.post_id), p.post_id)
        elif isinstance(p, ReactionSet):
            if p.previous is None:  # a changed reaction is not a new one
                add(
                    p.post_author_id,
                    p.user_id,
                    "reaction",
                    ("post", p.post_id),
                    post_id=p.post_id,
                    mode="window",
                    source_key=p.user_id,  # one user's reactions count once
                )
        elif isinstance(p, MessageStored):
            for member in members.get(p.conversation_id, ()):
                if member in offline:
                    add(
                        member,
                        p.sender_id,
                        "message",
                        ("conversation", p.conversation_id),
                        mode="unread",
                        source_key=p.message_id,
                    )
        return out

    async def _pushes(self, tx: Tx, group_ids: list[int]) -> AfterCommit | None:
        """Render the new and grown groups now (in the transaction); push them after commit."""
        groups = await self.store.groups(tx, group_ids)
        users = await self.store.users(tx, (a for g in groups for a in g.actor_ids))
        order = {gid: i for i, gid in enumerate(group_ids)}
        frames: dict[int, list[bytes]] = {}
        for group in sorted(groups, key=lambda g: order[g.id]):
            out = notification_out(group, users)
            if out is not None:
                frames.setdefault(group.user_id, []).append(
                    encode(NotificationFrame(notification=out))
                )
        if not frames:
            return None
        reach = self.reach

        async def push_one(user: int, user_frames: list[bytes]) -> None:
            try:
                await reach.push([user], user_frames)
            except Exception:
                log.warning("pushing notifications to user %s failed", user, exc_info=True)

        async def push() -> None:
            # All at once: the placement lookups of one turn share one Redis round trip (one
            # after the other, a batch of 200 took 2 s under load and held up the consumer).
            await asyncio.gather(*(push_one(u, f) for u, f in frames.items()))

        return push


# -- the REST side ----------------------------------------------------------------------------

CURSOR_KIND = "notifications"


class NotificationService:
    def __init__(self, db: Database, store: NotificationStore | None = None) -> None:
        self.db = db
        self.store = store or NotificationStore(db)

    async def list(
        self, me: int, unread_only: bool, cursor: str | None, limit: int
    ) -> NotificationPage:
        before = decode_cursor(cursor, CURSOR_KIND, before=int)
        rows, unread = await asyncio.gather(  # neither waits for the other
            self.store.page(me, unread_only, before["before"] if before else MAX_ID + 1, limit + 1),
            self.store.unread_count(me),
        )
        more = len(rows) > limit
        shown = rows[:limit]
        users = await self.store.users(self.db, (a for g in shown for a in g.actor_ids))
        items = [out for g in shown if (out := notification_out(g, users)) is not None]
        return NotificationPage(
            items=items,
            next_cursor=encode_cursor(CURSOR_KIND, before=shown[-1].sort_key) if more else None,
            unread_count=unread,
        )

    async def mark_read(self, me: int, body: ReadIn) -> None:
        """``all``: everything; ``ids``: those of the caller's (the others are ignored)."""
        if body.all:
            await self.store.mark_all_read(me)
        elif body.ids is not None:
            if body.ids:
                await self.store.mark_read(me, sorted({int(i) for i in body.ids}))
        else:
            raise invalid(
                {"ids": "give the ids to mark read, or all: true"},
                "say which notifications to mark read",
            )

    async def settings(self, me: int) -> NotificationSettingsOut:
        return _settings_out(await self.store.settings(me))

    async def update_settings(
        self, me: int, body: NotificationSettingsIn
    ) -> NotificationSettingsOut:
        changes: list[tuple[str, bool | None, bool | None]] = []
        for kind in KINDS:
            patch = getattr(body, kind)
            if patch is msgspec.UNSET:
                continue
            enabled = getattr(patch, "enabled", msgspec.UNSET)
            only = getattr(patch, "only_friends", msgspec.UNSET)
            if only is not msgspec.UNSET and kind not in FRIEND_FILTERABLE:
                # The body's type already refuses it; kept for callers that build the struct.
                raise invalid({f"{kind}.only_friends": "only_friends is not available here"})
            changes.append(
                (
                    kind,
                    None if enabled is msgspec.UNSET else enabled,
                    None if only is msgspec.UNSET else only,
                )
            )
        if not changes:
            return await self.settings(me)
        return _settings_out(await self.store.update_settings(me, changes))


def _settings_out(rows: Iterable[Setting]) -> NotificationSettingsOut:
    by_kind = {r.kind: r for r in rows}
    values = {
        kind: KindSetting(
            enabled=by_kind[kind].enabled if kind in by_kind else True,
            only_friends=by_kind[kind].only_friends if kind in by_kind else False,
        )
        for kind in KINDS
    }
    return NotificationSettingsOut(**values)
