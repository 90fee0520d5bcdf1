"""WebSocket frames: one tagged union per direction, one decoder and one encoder, built once.

Every frame is a JSON object in a text frame, tagged by ``"type"``. New fields get defaults; a
field's type never changes.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from agora.protocol.chat import ClientId, MessageOut, MessageText, Seq
from agora.protocol.common import Id
from agora.protocol.content import PostOut
from agora.protocol.notifications import NotificationOut

# -- client -> server ------------------------------------------------------------------------


class Send(msgspec.Struct, tag="send", tag_field="type"):
    conversation_id: Id
    client_id: ClientId
    text: MessageText


class Typing(msgspec.Struct, tag="typing", tag_field="type"):
    conversation_id: Id


class Read(msgspec.Struct, tag="read", tag_field="type"):
    conversation_id: Id
    seq: Seq


class Sync(msgspec.Struct, tag="sync", tag_field="type"):
    conversation_id: Id
    after_seq: Seq = 0


class Ping(msgspec.Struct, tag="ping", tag_field="type"):
    pass


ClientFrame = Send | Typing | Read | Sync | Ping

# -- server -> client ------------------------------------------------------------------------


class Ready(msgspec.Struct, tag="ready", tag_field="type"):
    session_id: str
    user_id: str
    node_id: str
    heartbeat: float


class Ack(msgspec.Struct, tag="ack", tag_field="type"):
    client_id: str
    message_id: str
    seq: int
    conversation_id: str


class MessageFrame(msgspec.Struct, tag="message", tag_field="type"):
    message: MessageOut


class TypingFrame(msgspec.Struct, tag="typing", tag_field="type"):
    """Show "typing" for ``expires_in`` seconds unless another one (or a message) comes."""

    conversation_id: str
    user_id: str
    expires_in: float = 5.0


class ReadFrame(msgspec.Struct, tag="read", tag_field="type"):
    conversation_id: str
    user_id: str
    seq: int


class PresenceFrame(msgspec.Struct, tag="presence", tag_field="type"):
    user_id: str
    status: Literal["online", "offline"]


class NotificationFrame(msgspec.Struct, tag="notification", tag_field="type"):
    """A notification that is new, or grew (and so is unread again): the same object as in
    ``GET /api/v1/notifications``."""

    notification: NotificationOut


class PostFrame(msgspec.Struct, tag="post", tag_field="type"):
    post: PostOut


class Synced(msgspec.Struct, tag="synced", tag_field="type"):
    conversation_id: str
    last_seq: int


class Pong(msgspec.Struct, tag="pong", tag_field="type"):
    pass


class ResyncFrame(msgspec.Struct, tag="resync", tag_field="type"):
    """Frames of these conversations (``null``: of any) may not have reached this session: send
    ``sync`` from the last seq seen in each (an extension of the contract; see the README)."""

    conversation_ids: list[str] | None = None


class ErrorFrame(msgspec.Struct, tag="error", tag_field="type", omit_defaults=True):
    code: str
    message: str
    ref: str | None = None
    retry: bool = False
    retry_after: float | None = None  # rate_limited: seconds until the frame would be taken


ServerFrame = (
    Ready
    | Ack
    | MessageFrame
    | TypingFrame
    | ReadFrame
    | PresenceFrame
    | NotificationFrame
    | PostFrame
    | Synced
    | Pong
    | ResyncFrame
    | ErrorFrame
)

client_decoder = msgspec.json.Decoder(ClientFrame)
server_encoder = msgspec.json.Encoder()
_probe = msgspec.json.Decoder(dict[str, Any])


def encode(frame: ServerFrame) -> bytes:
    return server_encoder.encode(frame)


def frame_ref(raw: bytes) -> str | None:
    """The ``client_id`` of a frame that failed to decode, to put in the error's ``ref``."""
    try:
        value = _probe.decode(raw).get("client_id")
    except (msgspec.DecodeError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None


class CloseCode:
    """WebSocket close codes the server uses, and what a client should do about each."""

    GOING_AWAY = 1001  # node shutting down: reconnect (any node) and sync
    POLICY_VIOLATION = 1008  # over the frame rate limit: back off before reconnecting
    TOO_BIG = 1009  # a frame over 64 KiB: fix the client
    REVOKED = 4001  # the login was revoked or the account suspended: final, sign in again
    SLOW_CONSUMER = 4002  # the client did not read fast enough: reconnect and sync
