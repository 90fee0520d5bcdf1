"""Notifications bodies: the list, marking read, and the per-kind preferences."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, get_args

import msgspec

from agora.protocol.accounts import UserOut
from agora.protocol.common import Cursor, Id, Limit

# `report_resolved`: a report of yours was resolved (subject: the report; actor: the moderator).
NotificationKind = Literal[
    "friend_request",
    "friend_accepted",
    "comment",
    "reply",
    "reaction",
    "mention",
    "message",
    "report_resolved",
]
KINDS: tuple[str, ...] = get_args(NotificationKind)
# Kinds whose preference can drop notifications from non-friends.
FRIEND_FILTERABLE: frozenset[str] = frozenset({"mention", "comment", "reply", "reaction"})
SubjectType = Literal["post", "comment", "user", "conversation", "report"]


class NotificationOut(msgspec.Struct):
    """One notification group (a single notification is a group of one).

    `actor` is the most recent actor, `actors` the most recent ones first (at most 3),
    `notifications_count` how many notifications the group holds (reactions by one user count
    once). `subject_type`/`subject_id` name what it is about: the post reacted to or commented
    on, the reply or the comment mentioning you, the user who asked or accepted, the
    conversation. `post_id` is the post it belongs to (null for friends and messages).
    `updated_at` is the latest activity; a group that grows becomes unread and moves to the
    top of the list."""

    id: str
    kind: NotificationKind
    actor: UserOut
    subject_type: SubjectType
    subject_id: str
    created_at: datetime
    read: bool
    group_key: str
    notifications_count: int
    actors: list[UserOut]
    updated_at: datetime
    post_id: str | None


class NotificationPage(msgspec.Struct):
    """A page of notifications, newest activity first; `unread_count` counts every unread
    notification group the caller has (not only this page's)."""

    items: list[NotificationOut]
    next_cursor: str | None
    unread_count: int


class NotificationQuery(msgspec.Struct):
    unread: Annotated[bool, msgspec.Meta(description="only unread notifications")] = False
    limit: Limit = 20
    cursor: Cursor | None = None


class ReadIn(msgspec.Struct, forbid_unknown_fields=True):
    """`ids`: mark these read (ids that are not the caller's notifications are ignored);
    `all: true`: mark every notification read. One of the two is required."""

    ids: Annotated[list[Id], msgspec.Meta(max_length=500)] | None = None
    all: bool = False


class KindSetting(msgspec.Struct):
    enabled: bool
    only_friends: bool


class NotificationSettingsOut(msgspec.Struct):
    """Every kind with its preference: `enabled` (default true) and `only_friends` (default
    false: only notifications whose actor is a friend)."""

    friend_request: KindSetting
    friend_accepted: KindSetting
    comment: KindSetting
    reply: KindSetting
    reaction: KindSetting
    mention: KindSetting
    message: KindSetting
    report_resolved: KindSetting


class KindPatch(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class FilterableKindPatch(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    only_friends: bool | msgspec.UnsetType = msgspec.UNSET


class NotificationSettingsIn(msgspec.Struct, forbid_unknown_fields=True):
    """A partial change: only the kinds and fields given change. `only_friends` exists for
    `mention`, `comment`, `reply` and `reaction` only."""

    friend_request: KindPatch | msgspec.UnsetType = msgspec.UNSET
    friend_accepted: KindPatch | msgspec.UnsetType = msgspec.UNSET
    comment: FilterableKindPatch | msgspec.UnsetType = msgspec.UNSET
    reply: FilterableKindPatch | msgspec.UnsetType = msgspec.UNSET
    reaction: FilterableKindPatch | msgspec.UnsetType = msgspec.UNSET
    mention: FilterableKindPatch | msgspec.UnsetType = msgspec.UNSET
    message: KindPatch | msgspec.UnsetType = msgspec.UNSET
    report_resolved: KindPatch | msgspec.UnsetType = msgspec.UNSET
