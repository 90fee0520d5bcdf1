"""``/api/v1/posts*``, ``/api/v1/comments/*``, ``/api/v1/users/{id}/posts``."""

from __future__ import annotations

from typing import Any

from agora.protocol.common import Page, PageQuery
from agora.protocol.content import (
    CommentOut,
    CreateCommentIn,
    CreatePostIn,
    PostOut,
    ReactIn,
    UpdatePostIn,
)
from agora.server import keys
from agora.server.routing import Call, Routes

routes = Routes("posts")


@routes.post("/posts", body=CreatePostIn, response=PostOut, status=201, limits=("posts",))
async def create_post(call: Call[CreatePostIn, Any]) -> PostOut:
    """Publish a post to `public`, `friends` (default) or `private` (only the author)."""
    return await call.app[keys.POSTS].create(call.viewer.user_id, call.body)


@routes.get("/posts/{id}", response=PostOut, auth="optional")
async def get_post(call: Call[None, Any]) -> PostOut:
    """A post, if the caller may see it (404 otherwise, exactly as if it did not exist)."""
    return await call.app[keys.POSTS].get(call.viewer_id, call.path_id("id", "post"))


@routes.patch("/posts/{id}", body=UpdatePostIn, response=PostOut)
async def update_post(call: Call[UpdatePostIn, Any]) -> PostOut:
    """Edit text or visibility (author only); `updated_at` moves."""
    return await call.app[keys.POSTS].update(
        call.viewer.user_id, call.path_id("id", "post"), call.body
    )


@routes.delete("/posts/{id}", status=204, limits=("deletes",))
async def delete_post(call: Call[None, Any]) -> None:
    """Delete a post with its comments and reactions (author or moderator)."""
    await call.app[keys.POSTS].delete(call.viewer.user_id, call.path_id("id", "post"))


@routes.get("/users/{id}/posts", query=PageQuery, response=Page[PostOut], auth="optional")
async def user_posts(call: Call[None, PageQuery]) -> Page[PostOut]:
    """A user's posts the caller may see, newest first."""
    return await call.app[keys.POSTS].by_user(
        call.viewer_id, call.path_id("id", "user"), call.query.cursor, call.query.limit
    )


@routes.put("/posts/{id}/reactions", body=ReactIn, response=PostOut, limits=("reactions",))
async def react(call: Call[ReactIn, Any]) -> PostOut:
    """Set the caller's reaction (one per user per post; a new type replaces the old)."""
    return await call.app[keys.POSTS].react(
        call.viewer.user_id, call.path_id("id", "post"), call.body.type
    )


@routes.delete("/posts/{id}/reactions", status=204, limits=("reactions",))
async def unreact(call: Call[None, Any]) -> None:
    """Remove the caller's reaction, if any."""
    await call.app[keys.POSTS].unreact(call.viewer.user_id, call.path_id("id", "post"))


@routes.post(
    "/posts/{id}/comments",
    body=CreateCommentIn,
    response=CommentOut,
    status=201,
    limits=("comments",),
)
async def add_comment(call: Call[CreateCommentIn, Any]) -> CommentOut:
    """Comment on a post, or reply to one of its comments with `parent_id`."""
    return await call.app[keys.POSTS].add_comment(
        call.viewer.user_id, call.path_id("id", "post"), call.body
    )


@routes.get("/posts/{id}/comments", query=PageQuery, response=Page[CommentOut], auth="optional")
async def list_comments(call: Call[None, PageQuery]) -> Page[CommentOut]:
    """A post's comments, oldest first."""
    return await call.app[keys.POSTS].list_comments(
        call.viewer_id, call.path_id("id", "post"), call.query.cursor, call.query.limit
    )


@routes.delete("/comments/{id}", status=204, limits=("deletes",))
async def delete_comment(call: Call[None, Any]) -> None:
    """Delete a comment (its author, the post's author, or a moderator); replies go with it."""
    await call.app[keys.POSTS].delete_comment(call.viewer.user_id, call.path_id("id", "comment"))
