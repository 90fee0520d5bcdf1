"""Posts, comments, reactions and feed bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from agora.protocol.accounts import UserOut
from agora.protocol.common import Cursor, Id, Limit

Visibility = Literal["public", "friends", "private"]
ReactionType = Literal["like", "love", "haha", "wow", "sad", "angry"]

PostText = Annotated[
    str, msgspec.Meta(min_length=1, max_length=10_000, description="1-10,000 characters")
]
CommentText = Annotated[
    str, msgspec.Meta(min_length=1, max_length=5_000, description="1-5,000 characters")
]


class FocusOut(msgspec.Struct):
    """Where to keep the image's subject when cropping: -1..1 from left to right, bottom to
    top (as Mastodon)."""

    x: float
    y: float


class MediaOut(msgspec.Struct):
    """An image. `url` (the re-encoded original, at most 3840x2160) and `thumbnail_url` (about
    640x360 in area) work as `<img src>` without an Authorization header: plain for a public
    post's media and avatars, signed and expiring otherwise. `blurhash` paints a placeholder."""

    id: str
    url: str
    thumbnail_url: str
    content_type: str
    size: int
    width: int
    height: int
    blurhash: str
    description: str
    focus: FocusOut


class PostOut(msgspec.Struct):
    """A post. `held` (only ever true for its author): the word filter held it for review;
    nobody else sees it until a moderator publishes it."""

    id: str
    author: UserOut
    text: str
    visibility: Visibility
    media: list[MediaOut]
    created_at: datetime
    updated_at: datetime
    comment_count: int
    reaction_counts: dict[str, int]
    my_reaction: ReactionType | None
    held: bool = False


class CreatePostIn(msgspec.Struct):
    text: PostText
    visibility: Visibility = "friends"
    media_ids: Annotated[
        list[Id], msgspec.Meta(max_length=4, description="up to 4 of your own uploads")
    ] = []


class UpdatePostIn(msgspec.Struct):
    text: PostText | msgspec.UnsetType = msgspec.UNSET
    visibility: Visibility | msgspec.UnsetType = msgspec.UNSET


class CommentOut(msgspec.Struct):
    id: str
    post_id: str
    author: UserOut
    text: str
    parent_id: str | None
    created_at: datetime


class CreateCommentIn(msgspec.Struct):
    text: CommentText
    parent_id: Id | None = None


class ReactIn(msgspec.Struct):
    type: ReactionType


class FeedQuery(msgspec.Struct):
    rank: Literal["recent", "top"] = "recent"
    limit: Limit = 20
    cursor: Cursor | None = None
