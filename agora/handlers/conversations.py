"""``/api/v1/conversations*``."""

from __future__ import annotations

from typing import Any

from agora.protocol.chat import (
    ConversationOut,
    CreateConversationIn,
    HistoryQuery,
    MembersIn,
    MessageOut,
    SendMessageIn,
)
from agora.protocol.common import Page, PageQuery
from agora.server import keys
from agora.server.routing import Call, Reply, Routes

routes = Routes("conversations")


@routes.post(
    "/conversations",
    body=CreateConversationIn,
    response=ConversationOut,
    status=201,
    also=((200, ConversationOut, "The direct conversation with that user already exists"),),
)
async def create(call: Call[CreateConversationIn, Any]) -> Reply:
    """Start a conversation with friends (the caller is added).

    One other member and no title makes a `direct` conversation (returned as is, 200, when it
    exists); anything else a `group`. Non-friends answer 403."""
    status, out = await call.app[keys.CHAT].create(call.viewer.user_id, call.body)
    return Reply(status, out)


@routes.get("/conversations", query=PageQuery, response=Page[ConversationOut])
async def list_conversations(call: Call[None, PageQuery]) -> Page[ConversationOut]:
    """The caller's conversations, most recent activity first, with `unread_count`."""
    return await call.app[keys.CHAT].list_mine(
        call.viewer.user_id, call.query.cursor, call.query.limit
    )


@routes.get("/conversations/{id}", response=ConversationOut)
async def get_conversation(call: Call[None, Any]) -> ConversationOut:
    """One conversation of the caller's."""
    return await call.app[keys.CHAT].get(call.viewer.user_id, call.path_id("id", "conversation"))


@routes.get("/conversations/{id}/messages", query=HistoryQuery, response=Page[MessageOut])
async def history(call: Call[None, HistoryQuery]) -> Page[MessageOut]:
    """Message history: `after_seq=N` gives what follows N, oldest first; `before_seq=N` (or
    neither: from the end) gives what precedes, newest first."""
    return await call.app[keys.CHAT].history(
        call.viewer.user_id, call.path_id("id", "conversation"), call.query
    )


@routes.post(
    "/conversations/{id}/messages",
    body=SendMessageIn,
    response=MessageOut,
    status=201,
    also=((200, MessageOut, "This client_id was sent before: the first message"),),
    limits=("messages",),
)
async def send(call: Call[SendMessageIn, Any]) -> Reply:
    """Send a message (the same path as the WebSocket `send`); answered after it is stored."""
    status, out = await call.app[keys.CHAT].send(
        call.viewer.user_id, call.path_id("id", "conversation"), call.body
    )
    return Reply(status, out)


@routes.post("/conversations/{id}/members", body=MembersIn, response=ConversationOut)
async def add_members(call: Call[MembersIn, Any]) -> ConversationOut:
    """Add friends to a group conversation."""
    return await call.app[keys.CHAT].add_members(
        call.viewer.user_id,
        call.path_id("id", "conversation"),
        [int(u) for u in call.body.user_ids],
    )


@routes.delete("/conversations/{id}/members/{user_id}", status=204)
async def remove_member(call: Call[None, Any]) -> None:
    """Leave a group, or (its creator) remove someone from it."""
    await call.app[keys.CHAT].remove_member(
        call.viewer.user_id, call.path_id("id", "conversation"), call.path_id("user_id", "member")
    )
