"""Friends and blocks bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agora.protocol.accounts import UserOut
from agora.protocol.common import Cursor, Id, Limit


class UserRef(msgspec.Struct):
    user_id: Id


class FriendRequestOut(msgspec.Struct):
    id: str
    from_user: UserOut
    to_user: UserOut
    status: Literal["pending", "accepted", "declined", "cancelled"]
    created_at: datetime


class FriendRequestQuery(msgspec.Struct):
    direction: Literal["incoming", "outgoing"] = "incoming"
    limit: Limit = 20
    cursor: Cursor | None = None


class FriendOut(msgspec.Struct):
    """A friend: the user and when the friendship began."""

    user: UserOut
    since: datetime


class BlockOut(msgspec.Struct):
    user: UserOut
    created_at: datetime


class RelationshipOut(msgspec.Struct):
    """What a user is to the caller (Mastodon's `Relationship`, for a friends graph)."""

    friends: bool
    incoming_request_id: str | None  # they asked the caller; pending (accept or decline it)
    outgoing_request_id: str | None  # the caller asked them; pending (cancel it)
    blocking: bool  # the caller blocks them


class UserProfileOut(UserOut):
    """A user object and, for a signed-in caller looking at someone else, what they are to the
    caller. `relationship` is null for anonymous callers and on the caller's own profile."""

    relationship: RelationshipOut | None = None


class UserRelationshipOut(msgspec.Struct):
    """One user's `relationship` to the caller, with the user's id."""

    id: str
    friends: bool
    incoming_request_id: str | None
    outgoing_request_id: str | None
    blocking: bool


MAX_RELATIONSHIP_IDS = 100


class RelationshipsQuery(msgspec.Struct):
    # Checked by the service rather than by a pattern here, so that a bad list is the same 422
    # `validation_error` naming `ids` as a bad body field, not the query string's 400.
    ids: Annotated[
        str,
        msgspec.Meta(
            description=f"Comma-separated user ids, at most {MAX_RELATIONSHIP_IDS} (`1,2,3`)",
            examples=["1,2,3"],
        ),
    ] = ""


class RelationshipsOut(msgspec.Struct):
    items: list[UserRelationshipOut]
