"""Friends and blocks: who may befriend whom, and what a block takes away.

Each mutation of a pair runs in one transaction under the pair's lock (see storage/social.py).
The friend cap is checked in the transaction that adds the friendship, under both users' row
locks, so concurrent acceptances with different partners cannot take anyone past it.
After a friendship starts or ends, both users' cached feeds are dropped and rebuilt on demand.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime

from agora.errors import AppError, ErrorCode, conflict, forbidden, invalid, not_found
from agora.protocol.common import Page
from agora.protocol.cursor import decode_cursor, encode_cursor, from_micros, to_micros
from agora.protocol.social import (
    MAX_RELATIONSHIP_IDS,
    BlockOut,
    FriendOut,
    FriendRequestOut,
    RelationshipsOut,
    UserProfileOut,
)
from agora.services.invalidation import Invalidator
from agora.services.pages import make_page
from agora.services.presenters import (
    block_out,
    friend_out,
    friend_request_out,
    profile_out,
    user_out,
    user_relationship_out,
)
from agora.storage.accounts import AccountStore
from agora.storage.db import MAX_ID, Database, Tx
from agora.storage.feed_cache import FeedCache
from agora.storage.social import SocialStore

log = logging.getLogger(__name__)

MAX_FRIENDS = 5000
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
_USER_ID = re.compile(r"[0-9]{1,16}")  # as protocol.common.Id: below 2**53, never past bigint


def parse_user_ids(raw: str) -> list[int]:
    """``1,2,3`` -> ``[1, 2, 3]``, repeats dropped, order kept ("" -> ``[]``); anything else,
    or more than 100 ids, is 422 naming ``ids``."""
    if not raw:
        return []
    parts = raw.split(",")
    if len(parts) > MAX_RELATIONSHIP_IDS:
        raise invalid({"ids": f"at most {MAX_RELATIONSHIP_IDS} ids"})
    if not all(_USER_ID.fullmatch(p) for p in parts):
        raise invalid({"ids": "comma-separated user ids (strings of 1-16 digits), no spaces"})
    return list(dict.fromkeys(int(p) for p in parts))


def _friend_limit_error() -> AppError:
    return AppError(ErrorCode.CONFLICT, f"a user can have at most {MAX_FRIENDS} friends")


class SocialService:
    def __init__(
        self,
        db: Database,
        store: SocialStore,
        accounts: AccountStore,
        feed_cache: FeedCache,
        invalidator: Invalidator,
    ) -> None:
        self.db = db
        self.store = store
        self.accounts = accounts
        self.feed_cache = feed_cache
        self.invalidator = invalidator

    async def send_request(self, me: int, target: int) -> tuple[int, FriendRequestOut]:
        """201 with a new pending request, or 200 with the other side's request accepted."""
        if me == target:
            raise invalid({"user_id": "you cannot send a friend request to yourself"})
        async with self.db.transaction("send_friend_request") as tx:
            await self.store.lock_pair(tx, me, target)
            rel = await self.store.relationship(tx, me, target)
            if not rel.other_active or rel.blocked_me:
                raise not_found("user")
            if rel.i_blocked:
                raise conflict("you have blocked this user; unblock them first")
            if rel.friends:
                raise conflict("you are already friends")
            if rel.pending_request_id is not None:
                if rel.pending_from == me:
                    raise conflict("a friend request to this user is already pending")
                # They asked first: asking back accepts.
                await self._accept_locked(tx, rel.pending_request_id, me, target)
                request_id, status, accepted = rel.pending_request_id, 200, True
            else:
                if await self.store.count_friends(tx, me) >= MAX_FRIENDS:
                    raise _friend_limit_error()
                request_id = await self.store.create_request(tx, me, target)
                status, accepted = 201, False
        if accepted:
            await self._friendship_changed(me, target)
        return status, await self._request_out(request_id)

    async def accept(self, me: int, request_id: int) -> FriendRequestOut:
        async with self.db.transaction("accept_friend_request") as tx:
            sender = await self._pending_for_recipient(tx, me, request_id)
            await self.store.lock_pair(tx, me, sender)
            parties = await self.store.request_parties(tx, request_id)
            if parties is None or parties[2] != "pending":
                raise conflict("this friend request is no longer pending")
            await self._accept_locked(tx, request_id, me, sender)
        await self._friendship_changed(me, sender)
        return await self._request_out(request_id)

    async def decline(self, me: int, request_id: int) -> FriendRequestOut:
        async with self.db.transaction("decline_friend_request") as tx:
            sender = await self._pending_for_recipient(tx, me, request_id)
            await self.store.lock_pair(tx, me, sender)
            parties = await self.store.request_parties(tx, request_id)
            if parties is None or parties[2] != "pending":
                raise conflict("this friend request is no longer pending")
            await self.store.set_request_status(tx, request_id, "declined", me)
        return await self._request_out(request_id)

    async def cancel(self, me: int, request_id: int) -> None:
        """The sender withdraws a pending request."""
        async with self.db.transaction("cancel_friend_request") as tx:
            parties = await self.store.request_parties(tx, request_id)
            if parties is None or me not in parties[:2]:
                raise not_found("friend request")
            if parties[0] != me:
                raise forbidden("only the sender can cancel a friend request")
            await self.store.lock_pair(tx, parties[0], parties[1])
            parties = await self.store.request_parties(tx, request_id)
            if parties is None or parties[2] != "pending":
                raise conflict("this friend request is no longer pending")
            await self.store.set_request_status(tx, request_id, "cancelled", me)

    async def _pending_for_recipient(self, tx: Tx, me: int, request_id: int) -> int:
        parties = await self.store.request_parties(tx, request_id)
        if parties is None or me not in parties[:2]:
            raise not_found("friend request")
        if parties[1] != me:
            raise forbidden("only the recipient can answer a friend request")
        return parties[0]

    async def _accept_locked(self, tx: Tx, request_id: int, a: int, b: int) -> None:
        """``a`` accepts the request ``b`` sent."""
        rel = await self.store.relationship(tx, a, b)
        if rel.i_blocked or rel.blocked_me or not rel.other_active:
            raise not_found("friend request")
        # Other pairs' transactions may be adding friends to a or b right now: wait for them.
        await self.store.lock_users(tx, a, b)
        for user in (a, b):
            if await self.store.count_friends(tx, user) >= MAX_FRIENDS:
                raise _friend_limit_error()
        await self.store.set_request_status(tx, request_id, "accepted", a)
        await self.store.add_friendship(tx, a, b)

    async def _request_out(self, request_id: int) -> FriendRequestOut:
        req = await self.store.get_request(request_id)
        assert req is not None
        return friend_request_out(req)

    async def list_requests(
        self, me: int, incoming: bool, cursor: str | None, limit: int
    ) -> Page[FriendRequestOut]:
        kind = "freq-in" if incoming else "freq-out"
        before = decode_cursor(cursor, kind, before=int)
        rows = await self.store.list_requests(
            me, incoming, before["before"] if before else MAX_ID + 1, limit + 1
        )
        return make_page(
            rows, limit, friend_request_out, lambda r: encode_cursor(kind, before=r.id)
        )

    async def unfriend(self, me: int, other: int) -> None:
        async with self.db.transaction("unfriend") as tx:
            await self.store.lock_pair(tx, me, other)
            if not await self.store.remove_friendship(tx, me, other, "unfriend"):
                raise not_found("friend")
        await self._friendship_changed(me, other)

    async def profile(self, viewer: int | None, user_id: int) -> UserProfileOut:
        """A profile, unless the user is suspended or one of the two blocks the other (404 both
        ways, the caller's own blocks included: GET /blocks lists those); with the caller's
        relationship to them when the caller is signed in and someone else."""
        if viewer is None or viewer == user_id:
            user = await self.accounts.get_visible_user(viewer, user_id)
            if user is None:
                raise not_found("user")
            return profile_out(user, None)
        user, rels = await asyncio.gather(  # neither waits for the other
            self.accounts.get_visible_user(viewer, user_id),
            self.store.relationships(viewer, [user_id]),
        )
        if user is None or not rels:  # hidden (the two reads may straddle a block: 404 either way)
            raise not_found("user")
        return profile_out(user, rels[0])

    async def relationships(self, me: int, ids: str) -> RelationshipsOut:
        """What each of ``ids`` (``1,2,3``, at most 100) is to ``me``, in the order asked;
        ``me`` and users hidden from ``me`` are left out, except those ``me`` blocks."""
        rels = await self.store.relationships(me, parse_user_ids(ids))
        return RelationshipsOut(items=[user_relationship_out(r) for r in rels])

    async def list_friends(
        self, viewer: int | None, user_id: int, cursor: str | None, limit: int
    ) -> Page[FriendOut]:
        if viewer != user_id and await self.accounts.get_visible_user(viewer, user_id) is None:
            raise not_found("user")
        before = decode_cursor(cursor, "friends", at=int, id=int)
        key = (from_micros(before["at"]), before["id"]) if before else (FAR_FUTURE, MAX_ID + 1)
        rows = await self.store.list_friends(user_id, viewer, key, limit + 1)
        return make_page(
            rows,
            limit,
            friend_out,
            lambda f: encode_cursor("friends", at=to_micros(f.since), id=f.user.id),
        )

    async def block(self, me: int, other: int) -> tuple[int, BlockOut]:
        if me == other:
            raise invalid({"user_id": "you cannot block yourself"})
        async with self.db.transaction("block") as tx:
            await self.store.lock_pair(tx, me, other)
            rel = await self.store.relationship(tx, me, other)
            if not rel.other_exists:
                raise not_found("user")
            created_at, created = await self.store.add_block(tx, me, other)
            await self.store.remove_friendship(tx, me, other, "block")
            await self.store.cancel_pending_between(tx, me, other)
        if created:
            await self._friendship_changed(me, other)
        user = await self.accounts.get_user(other)
        assert user is not None
        return (201 if created else 200), BlockOut(user=user_out(user), created_at=created_at)

    async def unblock(self, me: int, other: int) -> None:
        async with self.db.transaction("unblock") as tx:
            await self.store.lock_pair(tx, me, other)
            if not await self.store.remove_block(tx, me, other):
                raise not_found("block")

    async def list_blocks(self, me: int, cursor: str | None, limit: int) -> Page[BlockOut]:
        before = decode_cursor(cursor, "blocks", at=int, id=int)
        key = (from_micros(before["at"]), before["id"]) if before else (FAR_FUTURE, MAX_ID + 1)
        rows = await self.store.list_blocks(me, key, limit + 1)
        return make_page(
            rows,
            limit,
            block_out,
            lambda b: encode_cursor("blocks", at=to_micros(b.created_at), id=b.user.id),
        )

    async def _friendship_changed(self, a: int, b: int) -> None:
        self.invalidator.viewers([a, b])
        try:
            await self.feed_cache.invalidate([a, b])
        except Exception:
            # The feeds are re-checked against PostgreSQL on every read; a stale cache shows
            # fewer posts until its TTL, never posts the viewer may not see.
            log.warning("could not invalidate the feeds of %d and %d", a, b, exc_info=True)
