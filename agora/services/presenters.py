"""Records from the stores -> wire types. One place decides how each object looks to clients."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

from agora.media.urls import MediaUrls
from agora.protocol.accounts import MeOut, UserOut
from agora.protocol.content import CommentOut, FocusOut, MediaOut, PostOut
from agora.protocol.social import (
    BlockOut,
    FriendOut,
    FriendRequestOut,
    RelationshipOut,
    UserProfileOut,
    UserRelationshipOut,
)
from agora.storage.accounts import UserRecord
from agora.storage.content import CommentRow, PostMedia, PostRow
from agora.storage.media import Upload
from agora.storage.social import Block, Friend, FriendRequest, UserRelationship


class UserLike(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def username(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def bio(self) -> str: ...
    @property
    def avatar_media_id(self) -> int | None: ...
    @property
    def created_at(self) -> datetime: ...


def user_out(user: UserLike) -> UserOut:
    return UserOut(
        id=str(user.id),
        username=user.username,
        display_name=user.display_name,
        bio=user.bio,
        # Avatars are public (plain URLs): the small rendition.
        avatar_url=MediaUrls.path(user.avatar_media_id, "small") if user.avatar_media_id else None,
        created_at=user.created_at,
    )


def me_out(user: UserRecord) -> MeOut:
    """The caller's own account: the public face plus email and role."""
    return MeOut(**msgspec.structs.asdict(user_out(user)), email=user.email, role=user.role)


def friend_request_out(req: FriendRequest) -> FriendRequestOut:
    return FriendRequestOut(
        id=str(req.id),
        from_user=user_out(req.from_user),
        to_user=user_out(req.to_user),
        status=req.status,
        created_at=req.created_at,
    )


def friend_out(friend: Friend) -> FriendOut:
    return FriendOut(user=user_out(friend.user), since=friend.since)


def block_out(block: Block) -> BlockOut:
    return BlockOut(user=user_out(block.user), created_at=block.created_at)


def _str_id(value: int | None) -> str | None:
    return None if value is None else str(value)


def relationship_out(rel: UserRelationship) -> RelationshipOut:
    return RelationshipOut(
        friends=rel.friends,
        incoming_request_id=_str_id(rel.incoming_request_id),
        outgoing_request_id=_str_id(rel.outgoing_request_id),
        blocking=rel.blocking,
    )


def profile_out(user: UserLike, rel: UserRelationship | None) -> UserProfileOut:
    """``GET /users/{id}``: the user object and, when asked by someone else, ``relationship``."""
    return UserProfileOut(
        **msgspec.structs.asdict(user_out(user)),
        relationship=relationship_out(rel) if rel is not None else None,
    )


def user_relationship_out(rel: UserRelationship) -> UserRelationshipOut:
    return UserRelationshipOut(id=str(rel.user_id), **msgspec.structs.asdict(relationship_out(rel)))


def media_out(m: Upload | PostMedia, urls: MediaUrls, public: bool) -> MediaOut:
    return MediaOut(
        id=str(m.id),
        url=urls.url(m.id, "original", public),
        thumbnail_url=urls.url(m.id, "small", public),
        content_type=m.content_type,
        size=m.size,
        width=m.width,
        height=m.height,
        blurhash=m.blurhash,
        description=m.description,
        focus=FocusOut(x=m.focus_x, y=m.focus_y),
    )


def post_out(post: PostRow, urls: MediaUrls) -> PostOut:
    public = post.visibility == "public"
    return PostOut(
        id=str(post.id),
        author=user_out(post.author),
        text=post.text,
        visibility=post.visibility,
        media=[media_out(m, urls, public) for m in post.media],
        created_at=post.created_at,
        updated_at=post.updated_at,
        comment_count=post.comment_count,
        reaction_counts=post.reaction_counts,
        my_reaction=post.my_reaction,
        held=post.held,
    )


def comment_out(comment: CommentRow) -> CommentOut:
    return CommentOut(
        id=str(comment.id),
        post_id=str(comment.post_id),
        author=user_out(comment.author),
        text=comment.text,
        parent_id=str(comment.parent_id) if comment.parent_id else None,
        created_at=comment.created_at,
    )
