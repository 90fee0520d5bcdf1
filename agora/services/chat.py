"""Conversations over REST, and the read paths the WebSocket shares (sync).

Sends and membership changes go through the conversation's owner actor (via the router), the
same path as WebSocket ``send``; reads go straight to PostgreSQL.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from agora.actors.conversation import MembersChangedOp, SendOp, Sent, message_out
from agora.cluster.router import Router
from agora.errors import AppError, ErrorCode, conflict, forbidden, invalid, not_found
from agora.protocol.chat import (
    READERS_SHOWN,
    ConversationOut,
    CreateConversationIn,
    HistoryQuery,
    MessageOut,
    SendMessageIn,
)
from agora.protocol.common import Page
from agora.protocol.cursor import decode_cursor, encode_cursor, from_micros, to_micros
from agora.services.presenters import user_out
from agora.storage.chat import ChatStore, ConversationRow, Roster, TooManyMembers
from agora.storage.db import MAX_ID
from agora.storage.social import SocialStore

log = logging.getLogger(__name__)

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
MAX_MEMBERS = 250


class ChatService:
    def __init__(self, store: ChatStore, social: SocialStore, router: Router) -> None:
        self.store = store
        self.social = social
        self.router = router

    async def _require_friends(self, me: int, others: list[int]) -> None:
        if set(others) - await self.social.friends_among(me, others):
            raise forbidden("only friends can be added to a conversation")

    async def create(self, me: int, body: CreateConversationIn) -> tuple[int, ConversationOut]:
        others = sorted({int(u) for u in body.member_ids} - {me})
        if not others:
            raise invalid({"member_ids": "name at least one other user"})
        await self._require_friends(me, others)
        kind = "direct" if len(others) == 1 and body.title is None else "group"
        conversation_id, created = await self.store.create(kind, body.title, me, others)
        return (201 if created else 200), await self.get(me, conversation_id)

    async def _member_row(self, me: int, conversation_id: int) -> ConversationRow:
        row = await self.store.for_member(me, conversation_id)
        if row is None:
            raise not_found("conversation")
        return row

    async def get(self, me: int, conversation_id: int) -> ConversationOut:
        row = await self.store.for_member(me, conversation_id, last_message=True)
        if row is None:
            raise not_found("conversation")
        rosters = await self.store.rosters([row.id])
        return _conversation_out(row, rosters[row.id])

    async def list_mine(self, me: int, cursor: str | None, limit: int) -> Page[ConversationOut]:
        c = decode_cursor(cursor, "conversations", at=int, id=int)
        key = (from_micros(c["at"]), c["id"]) if c else (FAR_FUTURE, MAX_ID + 1)
        rows = await self.store.list_for(me, key, limit + 1)
        shown = rows[:limit]
        rosters = await self.store.rosters([r.id for r in shown])
        nxt = (
            encode_cursor(
                "conversations", at=to_micros(shown[-1].last_activity_at), id=shown[-1].id
            )
            if len(rows) > limit
            else None
        )
        return Page(items=[_conversation_out(r, rosters[r.id]) for r in shown], next_cursor=nxt)

    async def history(self, me: int, conversation_id: int, q: HistoryQuery) -> Page[MessageOut]:
        """``after_seq``: oldest first from there; ``before_seq`` (or neither): newest first."""
        row = await self._member_row(me, conversation_id)
        c = decode_cursor(q.cursor, "messages", dir=str, seq=int)
        if c is not None:
            ascending, edge = c["dir"] == "after", c["seq"]
        elif q.after_seq is not None and q.before_seq is not None:
            raise AppError(
                ErrorCode.VALIDATION_ERROR,
                "give after_seq or before_seq, not both",
                status=400,
                fields={"after_seq": "not with before_seq"},
            )
        elif q.after_seq is not None:
            ascending, edge = True, q.after_seq
        else:
            ascending, edge = False, q.before_seq if q.before_seq is not None else row.last_seq + 1
        if ascending:
            rows = await self.store.messages_after(conversation_id, edge, q.limit + 1)
        else:
            rows = await self.store.messages_before(conversation_id, edge, q.limit + 1)
        shown = rows[: q.limit]
        nxt = (
            encode_cursor("messages", dir="after" if ascending else "before", seq=shown[-1].seq)
            if len(rows) > q.limit
            else None
        )
        return Page(items=[message_out(r) for r in shown], next_cursor=nxt)

    async def send(
        self, me: int, conversation_id: int, body: SendMessageIn
    ) -> tuple[int, MessageOut]:
        result = await self.router.ask(conversation_id, SendOp(me, body.client_id, body.text))
        assert isinstance(result, Sent)
        return (201 if result.created else 200), result.message

    async def add_members(
        self, me: int, conversation_id: int, user_ids: list[int]
    ) -> ConversationOut:
        row = await self._member_row(me, conversation_id)
        if row.kind == "direct":
            raise conflict("a direct conversation keeps its two members; start a group instead")
        new = sorted(set(user_ids) - {me})
        if not new:
            raise invalid({"user_ids": "name at least one other user"})
        await self._require_friends(me, new)
        try:
            await self.store.add_members(conversation_id, new, MAX_MEMBERS, actor_id=me)
        except TooManyMembers:
            raise conflict(f"a conversation has at most {MAX_MEMBERS} members") from None
        self._members_changed(conversation_id)
        return await self.get(me, conversation_id)

    def _members_changed(self, conversation_id: int) -> None:
        """Tell the owner to reload its member set now. Only a hint: the change is committed
        and moved ``members_version``, which fences the owner's next commit (it reloads then),
        so a lost notice costs nothing and never turns the committed change into an error."""
        try:
            self.router.submit(conversation_id, MembersChangedOp(), None)
        except Exception:
            log.warning("could not tell conversation %d its members changed", conversation_id)

    async def remove_member(self, me: int, conversation_id: int, user_id: int) -> None:
        """Anyone may leave; the group's creator may also remove others."""
        row = await self._member_row(me, conversation_id)
        if row.kind == "direct":
            raise conflict("a direct conversation keeps its two members")
        if user_id != me and row.created_by != me:
            raise forbidden("only the group's creator can remove other members")
        if not await self.store.remove_member(conversation_id, user_id, actor_id=me):
            raise not_found("member")
        self._members_changed(conversation_id)

    async def sync(
        self,
        me: int,
        conversation_id: int,
        after_seq: int,
        page: int,
        push: Callable[[list[MessageOut]], Awaitable[bool]],
    ) -> int:
        """Push every message after ``after_seq`` in order, a page at a time (``push`` may wait
        for the client to read); return the last seq known."""
        row = await self._member_row(me, conversation_id)
        position = after_seq
        while position < row.last_seq:
            rows = await self.store.messages_after(conversation_id, position, page)
            if not rows:
                break
            if not await push([message_out(r) for r in rows]):
                return position  # the session is closing
            position = rows[-1].seq
        return max(position, row.last_seq)


def _conversation_out(row: ConversationRow, roster: Roster) -> ConversationOut:
    reads = roster.read_seqs
    if len(reads) > READERS_SHOWN:  # a big group: the furthest readers (then the oldest ids)
        reads = dict(heapq.nlargest(READERS_SHOWN, reads.items(), key=lambda r: (r[1], -r[0])))
    return ConversationOut(
        id=str(row.id),
        kind=row.kind,
        title=row.title,
        members=[user_out(m) for m in roster.members],
        last_seq=row.last_seq,
        created_at=row.created_at,
        last_activity_at=row.last_activity_at,
        unread_count=max(0, row.last_seq - row.last_read_seq),
        last_read_seq=row.last_read_seq,
        read_seqs={str(user): seq for user, seq in reads.items()},
        last_message=message_out(row.last_message) if row.last_message else None,
    )
