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


class MediaOut(msgspec.Struct):
    id: str
    url: str
    thumbnail_url: str | None
    content_type: str
    width: int | None
    height: int | None


class PostOut(msgspec.Struct):
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


class CreatePostIn(msgspec.Struct):
    text: PostText
    visibility: Visibility = "friends"
    media_ids: Annotated[list[Id], msgspec.Meta(max_length=10)] = []


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
