"""``/api/v1/friends*`` and ``/api/v1/blocks*``."""

from __future__ import annotations

from typing import Any

from agora.protocol.common import Page, PageQuery
from agora.protocol.social import BlockOut, FriendOut, FriendRequestOut, FriendRequestQuery, UserRef
from agora.server import keys
from agora.server.routing import Call, Reply, Routes

routes = Routes("friends")


@routes.post(
    "/friends/requests",
    body=UserRef,
    response=FriendRequestOut,
    status=201,
    also=((200, FriendRequestOut, "The other user had already asked: now accepted"),),
    limits=("friend_requests",),
)
async def send_request(call: Call[UserRef, Any]) -> Reply:
    """Ask a user to be friends.

    When that user has already asked the caller, this accepts their request instead (200,
    status `accepted`). Blocked or unknown users answer 404; already friends or already asked,
    409; 5,000 friends at most."""
    status, out = await call.app[keys.SOCIAL].send_request(
        call.viewer.user_id, int(call.body.user_id)
    )
    return Reply(status, out)


@routes.get("/friends/requests", query=FriendRequestQuery, response=Page[FriendRequestOut])
async def list_requests(call: Call[None, FriendRequestQuery]) -> Page[FriendRequestOut]:
    """Pending friend requests to (`incoming`) or from (`outgoing`) the caller, newest first."""
    q = call.query
    return await call.app[keys.SOCIAL].list_requests(
        call.viewer.user_id, q.direction == "incoming", q.cursor, q.limit
    )


@routes.post("/friends/requests/{id}/accept", response=FriendRequestOut)
async def accept_request(call: Call[None, Any]) -> FriendRequestOut:
    """Accept a pending request sent to the caller."""
    return await call.app[keys.SOCIAL].accept(
        call.viewer.user_id, call.path_id("id", "friend request")
    )


@routes.post("/friends/requests/{id}/decline", response=FriendRequestOut)
async def decline_request(call: Call[None, Any]) -> FriendRequestOut:
    """Decline a pending request sent to the caller."""
    return await call.app[keys.SOCIAL].decline(
        call.viewer.user_id, call.path_id("id", "friend request")
    )


@routes.delete("/friends/requests/{id}", status=204)
async def cancel_request(call: Call[None, Any]) -> None:
    """Withdraw a pending request the caller sent."""
    await call.app[keys.SOCIAL].cancel(call.viewer.user_id, call.path_id("id", "friend request"))


@routes.get("/friends", query=PageQuery, response=Page[FriendOut])
async def my_friends(call: Call[None, PageQuery]) -> Page[FriendOut]:
    """The caller's friends, most recent friendships first."""
    me = call.viewer.user_id
    return await call.app[keys.SOCIAL].list_friends(me, me, call.query.cursor, call.query.limit)


@routes.get("/users/{id}/friends", query=PageQuery, response=Page[FriendOut], auth="optional")
async def user_friends(call: Call[None, PageQuery]) -> Page[FriendOut]:
    """A user's friends, without anyone hidden from the caller by a block."""
    return await call.app[keys.SOCIAL].list_friends(
        call.viewer_id,
        call.path_id("id", "user"),
        call.query.cursor,
        call.query.limit,
    )


@routes.delete("/friends/{user_id}", status=204)
async def unfriend(call: Call[None, Any]) -> None:
    """End a friendship (404 when not friends)."""
    await call.app[keys.SOCIAL].unfriend(call.viewer.user_id, call.path_id("user_id", "friend"))


blocks = Routes("blocks")


@blocks.post(
    "/blocks",
    body=UserRef,
    response=BlockOut,
    status=201,
    also=((200, BlockOut, "Already blocked"),),
)
async def block(call: Call[UserRef, Any]) -> Reply:
    """Block a user: ends the friendship, cancels pending requests, and hides both users from
    each other everywhere (profiles, posts, comments, feed, friend lists, messages)."""
    status, out = await call.app[keys.SOCIAL].block(call.viewer.user_id, int(call.body.user_id))
    return Reply(status, out)


@blocks.get("/blocks", query=PageQuery, response=Page[BlockOut])
async def list_blocks(call: Call[None, PageQuery]) -> Page[BlockOut]:
    """Users the caller blocked, most recent first."""
    return await call.app[keys.SOCIAL].list_blocks(
        call.viewer.user_id, call.query.cursor, call.query.limit
    )


@blocks.delete("/blocks/{user_id}", status=204)
async def unblock(call: Call[None, Any]) -> None:
    """Lift a block (404 when there is none). Friendship does not come back by itself."""
    await call.app[keys.SOCIAL].unblock(call.viewer.user_id, call.path_id("user_id", "block"))
