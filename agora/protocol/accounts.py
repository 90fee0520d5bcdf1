"""Auth and Users bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agora.protocol.common import Id, whole

Username = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=30,
        pattern=whole("[A-Za-z0-9_]+"),
        description="3-30 letters, digits or underscores (unique ignoring case)",
    ),
]
Email = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=254,
        pattern=whole(r"[^@\s]+@[^@\s]+\.[^@\s]+"),
        description="an email address (unique ignoring case)",
    ),
]
Password = Annotated[
    str, msgspec.Meta(min_length=8, max_length=1024, description="at least 8 characters")
]
DisplayName = Annotated[str, msgspec.Meta(max_length=100)]
Bio = Annotated[str, msgspec.Meta(max_length=2000)]
Role = Literal["user", "moderator", "admin"]


class RegisterIn(msgspec.Struct):
    username: Username
    email: Email
    password: Password
    display_name: DisplayName | None = None


class LoginIn(msgspec.Struct):
    login: Annotated[
        str, msgspec.Meta(min_length=1, max_length=254, description="username or email")
    ]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class RefreshIn(msgspec.Struct):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class UserOut(msgspec.Struct):
    id: str
    username: str
    display_name: str
    bio: str
    avatar_url: str | None
    created_at: datetime


class MeOut(UserOut):
    """The caller's own account: the public fields plus the private ones."""

    email: str = ""
    role: Role = "user"


class AuthOut(msgspec.Struct):
    user: MeOut
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "Bearer"


class WebAuthOut(msgspec.Struct):
    """A browser's sign-in: the access token only. Its refresh token is in an HttpOnly cookie,
    out of reach of any script on the page."""

    user: MeOut
    access_token: str
    expires_in: int
    token_type: str = "Bearer"


class UpdateMeIn(msgspec.Struct):
    """Only the fields present change; `avatar_media_id: null` removes the avatar."""

    display_name: DisplayName | msgspec.UnsetType = msgspec.UNSET
    bio: Bio | msgspec.UnsetType = msgspec.UNSET
    avatar_media_id: Id | msgspec.UnsetType | None = msgspec.UNSET
