"""Domain events: one envelope for every event, a typed payload per event type.

An event is written to the outbox in the same transaction as the change it describes
(:mod:`agora.storage.events`), relayed to RabbitMQ (or to the in-process queues) by
:mod:`agora.events.relay`, and handled by consumers (:mod:`agora.events.runner`).

The envelope follows CloudEvents' attributes: ``id`` (unique, time-ordered), ``type``
(``post.created``...), ``aggregate`` and ``aggregate_id`` (what changed: events of one aggregate
are published in commit order), ``actor_id`` (who did it; null for the system), ``occurred_at``,
``version`` (of the payload's schema) and ``payload``. On the wire it is JSON; ids are integers
below 2**53, so JavaScript consumers read them exactly.

Payloads say what a consumer needs without a lookup (the post's author on a comment, say), as the
facts were when the change committed. Schema evolution (msgspec's guide): new fields get
defaults, a field's type never changes; a breaking change is a new ``version``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec

SCHEMA_VERSION = 1


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """The typed body of one event type; subclasses name ``type`` and ``aggregate``."""

    type: ClassVar[str]
    aggregate: ClassVar[str]

    def aggregate_id(self) -> int:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            if cls.type in PAYLOADS:
                raise TypeError(f"event type {cls.type} is defined twice")
            PAYLOADS[cls.type] = cls


PAYLOADS: dict[str, type[Payload]] = {}


# -- accounts ---------------------------------------------------------------------------------


class UserRegistered(Payload, frozen=True, kw_only=True):
    type = "user.registered"
    aggregate = "user"
    user_id: int
    username: str
    display_name: str

    def aggregate_id(self) -> int:
        return self.user_id


class UserUpdated(Payload, frozen=True, kw_only=True):
    """The profile as it is after the change, and the names of the fields that changed."""

    type = "user.updated"
    aggregate = "user"
    user_id: int
    username: str
    display_name: str
    bio: str
    avatar_media_id: int | None = None
    changed: list[str] = []

    def aggregate_id(self) -> int:
        return self.user_id


# -- the social graph: a pair's events share the aggregate "friendship" keyed by the lower id ---


def pair_key(a: int, b: int) -> int:
    return min(a, b)


class _PairPayload(Payload, frozen=True, kw_only=True):
    aggregate = "friendship"

    def _pair(self) -> tuple[int, int]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def aggregate_id(self) -> int:
        return pair_key(*self._pair())


class _FriendRequest(_PairPayload, frozen=True, kw_only=True):
    """``from_id`` sent the request to ``to_id``."""

    request_id: int
    from_id: int
    to_id: int

    def _pair(self) -> tuple[int, int]:
        return self.from_id, self.to_id


class FriendRequestSent(_FriendRequest, frozen=True, kw_only=True):
    type = "friend_request.sent"


class FriendRequestAccepted(_FriendRequest, frozen=True, kw_only=True):
    """``to_id`` accepted (the actor)."""

    type = "friend_request.accepted"


class FriendRequestDeclined(_FriendRequest, frozen=True, kw_only=True):
    type = "friend_request.declined"


class FriendRequestCancelled(_FriendRequest, frozen=True, kw_only=True):
    type = "friend_request.cancelled"


class FriendshipEnded(_PairPayload, frozen=True, kw_only=True):
    """``reason``: ``unfriend`` or ``block``."""

    type = "friendship.ended"
    user_id: int
    friend_id: int
    reason: str

    def _pair(self) -> tuple[int, int]:
        return self.user_id, self.friend_id


class _Block(_PairPayload, frozen=True, kw_only=True):
    blocker_id: int
    blocked_id: int

    def _pair(self) -> tuple[int, int]:
        return self.blocker_id, self.blocked_id


class UserBlocked(_Block, frozen=True, kw_only=True):
    type = "user.blocked"


class UserUnblocked(_Block, frozen=True, kw_only=True):
    type = "user.unblocked"


# -- content ----------------------------------------------------------------------------------


class PostCreated(Payload, frozen=True, kw_only=True):
    type = "post.created"
    aggregate = "post"
    post_id: int
    author_id: int
    text: str
    visibility: str
    media_ids: list[int] = []

    def aggregate_id(self) -> int:
        return self.post_id


class PostUpdated(Payload, frozen=True, kw_only=True):
    """The post as it is after an edit of its text (a visibility change has its own event)."""

    type = "post.updated"
    aggregate = "post"
    post_id: int
    author_id: int
    text: str
    visibility: str

    def aggregate_id(self) -> int:
        return self.post_id


class PostVisibilityChanged(Payload, frozen=True, kw_only=True):
    type = "post.visibility_changed"
    aggregate = "post"
    post_id: int
    author_id: int
    old: str
    new: str

    def aggregate_id(self) -> int:
        return self.post_id


class PostDeleted(Payload, frozen=True, kw_only=True):
    """Its comments and reactions went with it (no event each)."""

    type = "post.deleted"
    aggregate = "post"
    post_id: int
    author_id: int

    def aggregate_id(self) -> int:
        return self.post_id


class CommentCreated(Payload, frozen=True, kw_only=True):
    type = "comment.created"
    aggregate = "comment"
    comment_id: int
    post_id: int
    post_author_id: int
    author_id: int
    parent_id: int | None = None
    parent_author_id: int | None = None
    text: str

    def aggregate_id(self) -> int:
        return self.comment_id


class CommentDeleted(Payload, frozen=True, kw_only=True):
    type = "comment.deleted"
    aggregate = "comment"
    comment_id: int
    post_id: int
    author_id: int

    def aggregate_id(self) -> int:
        return self.comment_id


class ReactionSet(Payload, frozen=True, kw_only=True):
    """A reaction added or changed (``previous`` is the type it replaced). The reactions of one
    post are one aggregate, keyed by the post id. One user's reactions to a post are in commit
    order (the user's reaction row serializes them); different users' reactions to one post
    take no common lock (the post's counters are delta rows, migration 0015), so they are
    independent and may commit, and be published, in either order."""

    type = "reaction.set"
    aggregate = "reactions"
    post_id: int
    post_author_id: int
    user_id: int
    reaction: str
    previous: str | None = None

    def aggregate_id(self) -> int:
        return self.post_id


class ReactionRemoved(Payload, frozen=True, kw_only=True):
    """A reaction taken back; ordered as :class:`ReactionSet` (one user's in commit order)."""

    type = "reaction.removed"
    aggregate = "reactions"
    post_id: int
    post_author_id: int
    user_id: int
    reaction: str

    def aggregate_id(self) -> int:
        return self.post_id


# -- media ------------------------------------------------------------------------------------


class MediaStored(Payload, frozen=True, kw_only=True):
    """An image was uploaded, processed and stored (not yet attached to anything)."""

    type = "media.stored"
    aggregate = "media"
    media_id: int
    owner_id: int
    content_type: str
    size: int
    width: int
    height: int

    def aggregate_id(self) -> int:
        return self.media_id


class MediaDeleted(Payload, frozen=True, kw_only=True):
    """An upload went: with its post, or unattached for too long (its bytes are collected
    later, when no other upload shares them)."""

    type = "media.deleted"
    aggregate = "media"
    media_id: int
    owner_id: int

    def aggregate_id(self) -> int:
        return self.media_id


# -- chat -------------------------------------------------------------------------------------


class ConversationCreated(Payload, frozen=True, kw_only=True):
    type = "conversation.created"
    aggregate = "conversation"
    conversation_id: int
    kind: str
    title: str | None = None
    created_by: int
    member_ids: list[int]

    def aggregate_id(self) -> int:
        return self.conversation_id


class MessageStored(Payload, frozen=True, kw_only=True):
    type = "message.stored"
    aggregate = "conversation"
    conversation_id: int
    message_id: int
    seq: int
    sender_id: int
    text: str
    created_at: datetime

    def aggregate_id(self) -> int:
        return self.conversation_id


class _Membership(Payload, frozen=True, kw_only=True):
    aggregate = "conversation"
    conversation_id: int
    user_id: int

    def aggregate_id(self) -> int:
        return self.conversation_id


class MemberAdded(_Membership, frozen=True, kw_only=True):
    type = "conversation.member_added"


class MemberRemoved(_Membership, frozen=True, kw_only=True):
    type = "conversation.member_removed"


# -- moderation (services/moderation.py) -----------------------------------------------------


class MessageRemoved(Payload, frozen=True, kw_only=True):
    """A moderator removed a message: its text is gone, its seq stays (a tombstone)."""

    type = "message.removed"
    aggregate = "conversation"
    conversation_id: int
    message_id: int
    seq: int
    sender_id: int

    def aggregate_id(self) -> int:
        return self.conversation_id


class UserSuspended(Payload, frozen=True, kw_only=True):
    type = "user.suspended"
    aggregate = "user"
    user_id: int
    until: datetime | None = None
    reason: str = ""

    def aggregate_id(self) -> int:
        return self.user_id


class UserUnsuspended(Payload, frozen=True, kw_only=True):
    type = "user.unsuspended"
    aggregate = "user"
    user_id: int

    def aggregate_id(self) -> int:
        return self.user_id


class ReportResolved(Payload, frozen=True, kw_only=True):
    """A moderator resolved a user's report (``action``: dismiss, remove or suspend)."""

    type = "report.resolved"
    aggregate = "report"
    report_id: int
    reporter_id: int
    moderator_id: int
    action: str
    subject_type: str
    subject_id: int

    def aggregate_id(self) -> int:
        return self.report_id


# -- the envelope ------------------------------------------------------------------------------


class Event(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    type: str
    aggregate: str
    aggregate_id: int
    actor_id: int | None
    occurred_at: datetime
    version: int
    payload: Payload


class _Wire(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    type: str
    aggregate: str
    aggregate_id: int
    actor_id: int | None
    occurred_at: datetime
    version: int
    payload: msgspec.Raw


class UnknownEvent(ValueError):
    """An event this code has no payload type for (a newer release's): its consumers skip it."""


_wire_decoder = msgspec.json.Decoder(_Wire)
_payload_decoders = {name: msgspec.json.Decoder(cls) for name, cls in PAYLOADS.items()}
_encoder = msgspec.json.Encoder()


def decode_event(body: bytes) -> Event:
    """An event from its JSON; raises ``msgspec.DecodeError`` (malformed) or
    :class:`UnknownEvent`."""
    wire = _wire_decoder.decode(body)
    decoder = _payload_decoders.get(wire.type)
    if decoder is None:
        raise UnknownEvent(wire.type)
    return Event(
        id=wire.id,
        type=wire.type,
        aggregate=wire.aggregate,
        aggregate_id=wire.aggregate_id,
        actor_id=wire.actor_id,
        occurred_at=wire.occurred_at,
        version=wire.version,
        payload=decoder.decode(wire.payload),
    )


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def event_type_of(body: bytes) -> str | None:
    """The ``type`` of an encoded event, or None when it is not one."""
    try:
        return _wire_decoder.decode(body).type
    except msgspec.DecodeError:
        return None
