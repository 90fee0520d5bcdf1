"""Friends and blocks bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

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
