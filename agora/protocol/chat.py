"""Conversations and messages over REST."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agora.protocol.accounts import UserOut
from agora.protocol.common import Cursor, Id, Limit, whole

MAX_TEXT = 4000
MessageText = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_TEXT, description="1-4,000 characters")
]
ClientId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=whole("[A-Za-z0-9._:-]+"),
        description="1-64 letters, digits or `._:-`, chosen by the "
        "client; resending it returns the first message",
    ),
]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


class MessageOut(msgspec.Struct):
    """A message. `removed` true: a tombstone (a moderator removed it, or its sender is
    suspended): its id and seq stay so `sync` has no gap, its `text` is empty."""

    id: str
    conversation_id: str
    seq: int
    sender_id: str
    text: str
    client_id: str
    created_at: datetime
    removed: bool = False


READERS_SHOWN = 50  # read_seqs of a bigger group: its furthest readers only


class ConversationOut(msgspec.Struct):
    """A conversation as one member sees it: ``last_read_seq`` and ``unread_count`` are the
    caller's; ``read_seqs`` are every member's receipts (for "Seen", after a reload too), and
    ``last_message`` the newest message (a preview), null while there is none."""

    id: str
    kind: Literal["direct", "group"]
    title: str | None
    members: list[UserOut]
    last_seq: int
    created_at: datetime
    last_activity_at: datetime
    unread_count: int = 0
    last_read_seq: int = 0
    read_seqs: Annotated[
        dict[str, int],
        msgspec.Meta(
            description="user id -> the seq up to which that member has read, for every member; "
            f"in a group of more than {READERS_SHOWN}, the {READERS_SHOWN} who have read furthest"
        ),
    ] = msgspec.field(default_factory=dict)
    last_message: MessageOut | None = None


class CreateConversationIn(msgspec.Struct):
    member_ids: Annotated[
        list[Id],
        msgspec.Meta(min_length=1, max_length=250, description="the other members (friends only)"),
    ]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class SendMessageIn(msgspec.Struct):
    text: MessageText
    client_id: ClientId


class MembersIn(msgspec.Struct):
    user_ids: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=250)]


class HistoryQuery(msgspec.Struct):
    after_seq: Seq | None = None
    before_seq: Seq | None = None
    limit: Limit = 50
    cursor: Cursor | None = None
