"""Notifications: the consumer called directly with events, and the REST side.

The events are built here (agora.events.types) about real users and posts made through the API;
what else a test needs (comments, friendships, blocks, conversations) is written with SQL, so
that no other event reaches the node's own consumers and each test sees only what its own
``consumer.handle`` calls did. A small Reach records pushes and answers ``online`` from a set.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agora.config import Config
from agora.events.types import (
    CommentCreated,
    CommentDeleted,
    Event,
    FriendRequestAccepted,
    FriendRequestSent,
    MessageStored,
    PostCreated,
    PostDeleted,
    ReactionSet,
    UserBlocked,
)
from agora.server import keys
from agora.server.app import create_app
from agora.server.metrics import Metrics
from agora.services.notifications import (
    NotificationConsumer,
    mentioned_names,
)
from agora.storage.db import Database
from agora.storage.notifications import NotificationStore
from tests.conftest import AppFactory
from tests.support.api import (
    User,
    create_post,
    expect_error,
    friends_in_a_direct_conversation,
    get_json,
    register,
)
from tests.support.events import EventMaker, redeliver, settled
from tests.support.ws import WsClient

LIST = "/api/v1/notifications"
READ = "/api/v1/notifications/read"
SETTINGS = "/api/v1/notifications/settings"
HOUR = timedelta(hours=1)


# -- doubles and helpers ------------------------------------------------------------------------


class TestReach:
    """Records pushes; ``online`` answers from a set."""

    __test__ = False

    def __init__(self, online: Iterable[int] = ()) -> None:
        self.on = set(online)
        self.pushes: list[tuple[list[int], list[dict[str, Any]]]] = []
        self.asked: list[set[int]] = []

    async def push(self, users: Iterable[int], frames: list[bytes]) -> None:
        self.pushes.append((list(users), [json.loads(f) for f in frames]))

    async def online(self, users: Iterable[int]) -> set[int]:
        wanted = set(users)
        self.asked.append(wanted)
        return wanted & self.on

    def to(self, user: User) -> list[dict[str, Any]]:
        """The notifications pushed to ``user``, in order."""
        out = []
        for users, frames in self.pushes:
            if int(user.id) in users:
                for frame in frames:
                    assert frame["type"] == "notification"
                    out.append(frame["notification"])
        return out


event = EventMaker()  # ids from 1, occurred now unless a test says when


class Harness:
    def __init__(self, client: TestClient, online: Iterable[int] = ()) -> None:
        self.client = client
        # The node's pool under a Database of our own: its statement count is ours alone.
        self.db = Database(client.app[keys.DB].pool)
        self.reach = TestReach(online)
        self.created: list[str] = []
        self.consumer = NotificationConsumer(
            NotificationStore(self.db), self.reach, on_created=self.created.append
        )

    async def handle(self, *events: Event) -> None:
        async with self.db.transaction("test_notifications") as tx:
            after = await self.consumer.handle(list(events), tx)
        if after is not None:
            await after()

    async def sql(self, query: str, *args: Any) -> Any:
        return await self.db.fetchval("test_sql", query, *args)

    async def befriend(self, a: User, b: User) -> None:
        await self.sql(
            "INSERT INTO social.friendships (user_id, friend_id) VALUES ($1, $2), ($2, $1)",
            int(a.id),
            int(b.id),
        )

    async def block(self, blocker: User, blocked: User) -> None:
        await self.sql(
            "INSERT INTO social.blocks (blocker_id, blocked_id) VALUES ($1, $2)",
            int(blocker.id),
            int(blocked.id),
        )

    async def comment(self, post_id: int, author: User, parent: int | None = None) -> int:
        return int(
            await self.sql(
                "INSERT INTO content.comments (post_id, author_id, parent_id, text)"
                " VALUES ($1, $2, $3, 'c') RETURNING id",
                post_id,
                int(author.id),
                parent,
            )
        )

    async def delete_comment(self, comment_id: int) -> None:
        await self.sql("DELETE FROM content.comments WHERE id = $1", comment_id)

    async def conversation(self, members: list[User]) -> int:
        cid = int(
            await self.sql(
                "INSERT INTO chat.conversations (kind, title, created_by)"
                " VALUES ('group', 't', $1) RETURNING id",
                int(members[0].id),
            )
        )
        for m in members:
            await self.sql(
                "INSERT INTO chat.members (conversation_id, user_id) VALUES ($1, $2)",
                cid,
                int(m.id),
            )
        return cid

    async def groups_of(self, user: User) -> int:
        return int(
            await self.sql(
                "SELECT count(*) FROM notifications.groups WHERE user_id = $1", int(user.id)
            )
        )

    async def items(self, user: User, query: str = "") -> list[dict[str, Any]]:
        page = await get_json(self.client, LIST + query, user)
        return page["items"]  # type: ignore[no-any-return]

    async def unread(self, user: User) -> int:
        return int((await get_json(self.client, LIST, user))["unread_count"])

    async def read(self, user: User, body: dict[str, Any], status: int = 204) -> None:
        resp = await self.client.post(READ, headers=user.headers, json=body)
        assert resp.status == status, await resp.text()


def uid(user: User) -> int:
    return int(user.id)


async def post_of(client: TestClient, author: User, visibility: str = "public") -> int:
    return int((await create_post(client, author, "a post", visibility))["id"])


def reaction(post_id: int, author: User, by: User, previous: str | None = None) -> ReactionSet:
    return ReactionSet(
        post_id=post_id,
        post_author_id=uid(author),
        user_id=uid(by),
        reaction="like",
        previous=previous,
    )


def commented(
    comment_id: int,
    post_id: int,
    post_author: User,
    by: User,
    text: str = "nice",
    parent: tuple[int, User] | None = None,
) -> CommentCreated:
    return CommentCreated(
        comment_id=comment_id,
        post_id=post_id,
        post_author_id=uid(post_author),
        author_id=uid(by),
        parent_id=parent[0] if parent else None,
        parent_author_id=uid(parent[1]) if parent else None,
        text=text,
    )


def actor_ids(item: dict[str, Any]) -> list[str]:
    return [a["id"] for a in item["actors"]]


# -- kinds ---------------------------------------------------------------------------------------


async def test_friend_request_and_acceptance(client: TestClient) -> None:
    h = Harness(client)
    a, b = await register(client), await register(client)
    await h.handle(event(FriendRequestSent(request_id=77, from_id=uid(a), to_id=uid(b))))
    [item] = await h.items(b)
    assert item["kind"] == "friend_request" and item["actor"]["id"] == a.id
    assert (item["subject_type"], item["subject_id"]) == ("user", a.id)
    assert item["read"] is False and item["notifications_count"] == 1
    assert set(item) >= {"id", "kind", "actor", "subject_type", "subject_id", "created_at", "read"}
    assert await h.items(a) == []

    await h.handle(event(FriendRequestAccepted(request_id=77, from_id=uid(a), to_id=uid(b))))
    [item] = await h.items(a)
    assert item["kind"] == "friend_accepted" and item["actor"]["id"] == b.id
    assert (item["subject_type"], item["subject_id"]) == ("user", b.id)
    assert h.created == ["friend_request", "friend_accepted"]


async def test_comment_and_reply(client: TestClient) -> None:
    h = Harness(client)
    author, bea, cal = await register(client), await register(client), await register(client)
    post = await post_of(client, author)
    bea_comment = await h.comment(post, bea)
    await h.handle(event(commented(bea_comment, post, author, bea)))
    [item] = await h.items(author)
    assert item["kind"] == "comment" and (item["subject_type"], item["subject_id"]) == (
        "post",
        str(post),
    )
    # Cal replies to Bea: Bea gets the reply (about the reply), the post's author the comment.
    reply = await h.comment(post, cal, parent=bea_comment)
    await h.handle(event(commented(reply, post, author, cal, parent=(bea_comment, bea))))
    [item] = await h.items(bea)
    assert item["kind"] == "reply" and item["actor"]["id"] == cal.id
    assert (item["subject_type"], item["subject_id"], item["post_id"]) == (
        "comment",
        str(reply),
        str(post),
    )
    [group] = await h.items(author)
    assert group["kind"] == "comment" and group["notifications_count"] == 2

    # A reply to the post author's own comment: they get the reply only.
    own = await h.comment(post, author)
    await h.handle(event(commented(own, post, author, author)))  # own action: nothing
    dan = await register(client)
    reply = await h.comment(post, dan, parent=own)
    await h.handle(event(commented(reply, post, author, dan, parent=(own, author))))
    items = await h.items(author)
    assert [i["kind"] for i in items] == ["reply", "comment"]
    assert items[1]["notifications_count"] == 2  # Dan's reply did not join the comment group


async def test_mentions(client: TestClient) -> None:
    h = Harness(client)
    author, bob, carol, dave = [await register(client) for _ in range(4)]
    post = await post_of(client, author)
    text = (
        f"hi @{bob.username.upper()}, @{carol.username} and @nobody_here_at_all; "
        f"mail {dave.username}@example.test; me: @{author.username}"
    )
    await h.handle(
        event(PostCreated(post_id=post, author_id=uid(author), text=text, visibility="public"))
    )
    for user in (bob, carol):
        [item] = await h.items(user)
        assert item["kind"] == "mention" and item["actor"]["id"] == author.id
        assert (item["subject_type"], item["subject_id"]) == ("post", str(post))
    assert await h.items(dave) == [] and await h.items(author) == []

    # In a comment: the post's author, mentioned too, gets only the comment notification.
    c = await h.comment(post, bob)
    await h.handle(
        event(
            commented(
                c, post, author, bob, text=f"@{author.username} @{carol.username} @{bob.username}"
            )
        )
    )
    assert [i["kind"] for i in await h.items(author)] == ["comment"]
    items = await h.items(carol)
    assert [i["kind"] for i in items] == ["mention", "mention"]
    assert (items[0]["subject_type"], items[0]["subject_id"]) == ("comment", str(c))
    assert len(await h.items(bob)) == 1  # the post's mention; not for mentioning yourself

    # Only users who may see the post: a friends-only post mentions friends only; a suspended
    # user gets nothing.
    friends_post = await post_of(client, author, "friends")
    await h.befriend(author, bob)
    await h.sql("UPDATE accounts.users SET status = 'suspended' WHERE id = $1", uid(dave))
    await h.handle(
        event(
            PostCreated(
                post_id=friends_post,
                author_id=uid(author),
                text=f"@{bob.username} @{carol.username} @{dave.username}",
                visibility="friends",
            )
        )
    )
    assert len(await h.items(bob)) == 2
    assert await h.groups_of(carol) == 2 and await h.groups_of(dave) == 0  # none stored
    assert len(h.reach.to(carol)) == 2


async def test_at_most_ten_mentions_per_text(client: TestClient) -> None:
    h = Harness(client)
    author = await register(client)
    users = [await register(client) for _ in range(11)]
    post = await post_of(client, author)
    text = " ".join(f"@{u.username}" for u in users)
    assert len(mentioned_names(text + " " + text)) == 10
    await h.handle(
        event(PostCreated(post_id=post, author_id=uid(author), text=text, visibility="public"))
    )
    assert [await h.groups_of(u) for u in users] == [1] * 10 + [0]


async def test_messages_only_to_offline_members_one_per_conversation_until_read(
    client: TestClient,
) -> None:
    a, b, c = await register(client), await register(client), await register(client)
    h = Harness(client, online={uid(c)})
    cid = await h.conversation([a, b, c])
    t0 = datetime.now(UTC)

    def message(n: int, sender: User) -> Event:
        payload = MessageStored(
            conversation_id=cid,
            message_id=1000 + n,
            seq=n,
            sender_id=uid(sender),
            text="hi",
            created_at=t0,
        )
        return event(payload, t0 + n * timedelta(seconds=1))

    await h.handle(message(1, a))
    [item] = await h.items(b)
    assert item["kind"] == "message" and (item["subject_type"], item["subject_id"]) == (
        "conversation",
        str(cid),
    )
    assert await h.groups_of(c) == 0 and await h.groups_of(a) == 0  # online; the sender
    await h.handle(message(2, a), message(3, c))
    [item] = await h.items(b)
    assert item["notifications_count"] == 3 and actor_ids(item) == [c.id, a.id]
    assert [n["notifications_count"] for n in h.reach.to(b)] == [1, 3]  # one push per batch
    [from_c] = await h.items(a)  # a is offline too: told of c's message, not of its own
    assert from_c["notifications_count"] == 1 and from_c["actor"]["id"] == c.id
    assert await h.groups_of(c) == 0
    await h.read(b, {"ids": [item["id"]]})
    await h.handle(message(4, a))
    items = await h.items(b)
    assert [(i["notifications_count"], i["read"]) for i in items] == [(1, False), (3, True)]
    # A member removed from the conversation no longer lists its notifications.
    await h.sql("DELETE FROM chat.members WHERE conversation_id = $1 AND user_id = $2", cid, uid(b))
    assert await h.items(b) == [] and await h.unread(b) == 0


# -- grouping ------------------------------------------------------------------------------------


async def test_reactions_group_for_twelve_hours(client: TestClient) -> None:
    h = Harness(client)
    author = await register(client)
    bea, cal, dan, eve, fay = [await register(client) for _ in range(5)]
    post = await post_of(client, author)
    t0 = datetime.now(UTC) - timedelta(days=2)

    await h.handle(event(reaction(post, author, bea), t0))
    await h.handle(event(reaction(post, author, cal), t0 + HOUR))
    await h.handle(event(reaction(post, author, dan), t0 + 2 * HOUR))
    [group] = await h.items(author)
    assert group["kind"] == "reaction" and group["notifications_count"] == 3
    assert actor_ids(group) == [dan.id, cal.id, bea.id] and group["actor"]["id"] == dan.id
    assert group["group_key"].startswith(f"reaction:post:{post}")
    assert group["updated_at"] > group["created_at"]
    assert await h.unread(author) == 1
    # Pushed on creation and on each growth, the full notification each time.
    pushed = h.reach.to(author)
    assert [p["notifications_count"] for p in pushed] == [1, 2, 3]
    assert pushed[-1] == group

    # Bea reacting again (after removing hers) counts once; a changed type makes nothing new.
    await h.handle(event(reaction(post, author, bea), t0 + 3 * HOUR))
    await h.handle(event(reaction(post, author, cal, previous="like"), t0 + 3 * HOUR))
    gus = await register(client)  # reacted before notifications existed, changes type now
    await h.handle(event(reaction(post, author, gus, previous="love"), t0 + 3 * HOUR))
    [group] = await h.items(author)
    assert group["notifications_count"] == 3 and actor_ids(group) == [dan.id, cal.id, bea.id]
    assert len(h.reach.to(author)) == 3

    # Read, then something newer arrives, then the group grows: unread again and on top.
    await h.read(author, {"ids": [group["id"]]})
    await h.handle(
        event(FriendRequestSent(request_id=1, from_id=uid(fay), to_id=uid(author)), t0 + 4 * HOUR)
    )
    assert [i["kind"] for i in await h.items(author)] == ["friend_request", "reaction"]
    await h.handle(event(reaction(post, author, eve), t0 + 5 * HOUR))
    items = await h.items(author)
    assert [i["kind"] for i in items] == ["reaction", "friend_request"]
    assert items[0]["id"] == group["id"] and items[0]["read"] is False
    assert items[0]["notifications_count"] == 4
    assert actor_ids(items[0]) == [eve.id, dan.id, cal.id]  # at most 3, most recent first
    assert await h.unread(author) == 2  # the group counts once
    assert h.reach.to(author)[-1]["notifications_count"] == 4

    # After the window (12 h from the group's first notification) a new group starts.
    await h.handle(event(reaction(post, author, fay), t0 + 12 * HOUR + timedelta(seconds=1)))
    items = await h.items(author)
    assert [(i["kind"], i["notifications_count"]) for i in items] == [
        ("reaction", 1),
        ("reaction", 4),
        ("friend_request", 1),
    ]
    assert items[0]["group_key"] != items[1]["group_key"]
    assert await h.unread(author) == 3


async def test_grouping_within_one_batch(client: TestClient) -> None:
    h = Harness(client)
    author, bea, cal = [await register(client) for _ in range(3)]
    post = await post_of(client, author)
    t0 = datetime.now(UTC) - timedelta(days=3)
    await h.handle(
        event(reaction(post, author, bea), t0),
        event(reaction(post, author, cal), t0 + HOUR),
        event(reaction(post, author, bea), t0 + 2 * HOUR),  # again: changes nothing
        event(reaction(post, author, cal), t0 + 13 * HOUR),  # past the window: a new group
    )
    items = await h.items(author)
    assert [(i["notifications_count"], actor_ids(i)) for i in items] == [
        (1, [cal.id]),
        (2, [cal.id, bea.id]),
    ]
    assert h.created == ["reaction"] * 3
    # The next batch joins the newer group (its window), and the same user again adds nothing.
    await h.handle(
        event(reaction(post, author, bea), t0 + 14 * HOUR),
        event(reaction(post, author, cal), t0 + 15 * HOUR),
    )
    items = await h.items(author)
    assert [(i["notifications_count"], actor_ids(i)) for i in items] == [
        (2, [bea.id, cal.id]),
        (2, [cal.id, bea.id]),
    ]
    assert h.created == ["reaction"] * 4


async def test_two_batches_racing_for_one_group_make_one_group(client: TestClient) -> None:
    h = Harness(client)
    author, bea, cal = [await register(client) for _ in range(3)]
    post = await post_of(client, author)
    async with h.db.transaction("test_first_batch") as tx:
        await h.consumer.handle([event(reaction(post, author, bea))], tx)
        # Another runner's batch for the same group waits for this one to commit...
        second = asyncio.create_task(h.handle(event(reaction(post, author, cal))))
        await asyncio.sleep(0.3)
        assert not second.done()
    await asyncio.wait_for(second, 10)
    # ...and then joins the group it opened.
    [group] = await h.items(author)
    assert group["notifications_count"] == 2 and actor_ids(group) == [cal.id, bea.id]


async def test_comments_group_and_a_deleted_comment_leaves_its_group(client: TestClient) -> None:
    h = Harness(client)
    author, bea, cal = await register(client), await register(client), await register(client)
    post = await post_of(client, author)
    t0 = datetime.now(UTC) - HOUR
    c1, c2, c3 = await h.comment(post, bea), await h.comment(post, cal), await h.comment(post, bea)
    await h.handle(event(commented(c1, post, author, bea), t0))
    await h.handle(event(commented(c2, post, author, cal), t0 + timedelta(minutes=1)))
    await h.handle(event(commented(c3, post, author, bea), t0 + timedelta(minutes=2)))
    [group] = await h.items(author)
    assert group["notifications_count"] == 3 and actor_ids(group) == [bea.id, cal.id]

    await h.delete_comment(c2)
    await h.handle(event(CommentDeleted(comment_id=c2, post_id=post, author_id=uid(cal))))
    [group] = await h.items(author)
    assert group["notifications_count"] == 2 and actor_ids(group) == [bea.id]
    await h.delete_comment(c3)
    await h.handle(event(CommentDeleted(comment_id=c3, post_id=post, author_id=uid(bea))))
    [group] = await h.items(author)
    assert group["notifications_count"] == 1
    await h.delete_comment(c1)
    await h.handle(event(CommentDeleted(comment_id=c1, post_id=post, author_id=uid(bea))))
    assert await h.items(author) == [] and await h.groups_of(author) == 0


async def test_a_comment_deleted_before_its_event_is_handled_notifies_nobody(
    client: TestClient,
) -> None:
    h = Harness(client)
    author, bea = await register(client), await register(client)
    post = await post_of(client, author)
    top = await h.comment(post, bea)
    await h.delete_comment(top)  # (a reply deleted with its parent has no event of its own)
    await h.handle(event(commented(top, post, author, bea)))
    assert await h.groups_of(author) == 0


async def test_a_gone_recipient_is_skipped_not_retried(client: TestClient) -> None:
    h = Harness(client)
    a, b = await register(client), await register(client)
    gone = 2**50 + 12345  # no such user (accounts deleted later, say)
    await h.handle(
        event(FriendRequestSent(request_id=1, from_id=uid(a), to_id=gone)),
        event(FriendRequestSent(request_id=2, from_id=uid(a), to_id=uid(b))),
    )
    assert len(await h.items(b)) == 1


async def test_a_deleted_comment_takes_its_reply_and_mention_notifications(
    client: TestClient,
) -> None:
    h = Harness(client)
    author, bea, cal, dan = [await register(client) for _ in range(4)]
    post = await post_of(client, author)
    top = await h.comment(post, bea)
    reply = await h.comment(post, cal, parent=top)
    await h.handle(
        event(commented(top, post, author, bea)),
        event(commented(reply, post, author, cal, text=f"@{dan.username}", parent=(top, bea))),
    )
    assert [i["kind"] for i in await h.items(bea)] == ["reply"]
    assert [i["kind"] for i in await h.items(dan)] == ["mention"]
    assert (await h.items(author))[0]["notifications_count"] == 2
    # Deleting the top comment deletes the reply with it (one event, for the top comment).
    await h.delete_comment(top)
    await h.handle(event(CommentDeleted(comment_id=top, post_id=post, author_id=uid(bea))))
    for user in (author, bea, dan):
        assert await h.groups_of(user) == 0, user.username


# -- who is not notified ---------------------------------------------------------------------------


async def test_nothing_for_your_own_actions(client: TestClient) -> None:
    h = Harness(client)
    author = await register(client)
    post = await post_of(client, author)
    c = await h.comment(post, author)
    await h.handle(
        event(reaction(post, author, author)),
        event(commented(c, post, author, author, text=f"@{author.username}")),
        event(
            PostCreated(
                post_id=post, author_id=uid(author), text=f"@{author.username}", visibility="public"
            )
        ),
    )
    assert await h.groups_of(author) == 0 and h.reach.pushes == [] and h.created == []


async def test_blocks_either_way_stop_new_notifications(client: TestClient) -> None:
    h = Harness(client)
    author, blocked, blocker = [await register(client) for _ in range(3)]
    post = await post_of(client, author)
    await h.block(author, blocked)
    await h.block(blocker, author)
    await h.handle(event(reaction(post, author, blocked)), event(reaction(post, author, blocker)))
    assert await h.groups_of(author) == 0 and h.reach.pushes == []
    # Also after the block is lifted: nothing was stored meanwhile.
    await h.sql("DELETE FROM social.blocks WHERE blocker_id = $1", uid(author))
    assert await h.items(author) == []


async def test_a_block_after_the_fact_hides_and_then_removes(client: TestClient) -> None:
    h = Harness(client)
    author, bea, cal = [await register(client) for _ in range(3)]
    post, other = await post_of(client, author), await post_of(client, author)
    t0 = datetime.now(UTC) - HOUR
    await h.handle(
        event(reaction(post, author, bea), t0),
        event(reaction(post, author, cal), t0 + timedelta(minutes=1)),
        event(reaction(other, author, cal), t0 + timedelta(minutes=2)),
    )
    assert len(await h.items(author)) == 2 and await h.unread(author) == 2
    # The author blocks Cal (the write path only, no event yet): what only Cal did is hidden,
    # and Cal is left out of the group they share with Bea.
    await h.block(author, cal)
    [group] = await h.items(author)
    assert actor_ids(group) == [bea.id] and group["actor"]["id"] == bea.id
    assert await h.unread(author) == 1
    # The group grows meanwhile: its push leaves Cal out too.
    dan = await register(client)
    await h.handle(event(reaction(post, author, dan), t0 + timedelta(minutes=3)))
    assert actor_ids(h.reach.to(author)[-1]) == [dan.id, bea.id]
    # The block's event takes Cal's contributions away for good.
    await h.handle(event(UserBlocked(blocker_id=uid(author), blocked_id=uid(cal))))
    [group] = await h.items(author)
    assert group["notifications_count"] == 2 and await h.groups_of(author) == 1
    await h.sql("DELETE FROM social.blocks WHERE blocker_id = $1", uid(author))
    assert len(await h.items(author)) == 1  # unblocking brings nothing back


async def test_a_blocked_recipient_loses_notifications_from_the_blocker(client: TestClient) -> None:
    h = Harness(client)
    author, bea = await register(client), await register(client)
    post = await post_of(client, author)
    await h.handle(event(reaction(post, author, bea)))
    await h.block(bea, author)  # the actor blocks the recipient
    assert await h.items(author) == [] and await h.unread(author) == 0


async def test_deleting_a_post_deletes_its_notifications(client: TestClient) -> None:
    h = Harness(client)
    author, bea = await register(client), await register(client)
    post = await post_of(client, author)
    mention = await post_of(client, bea)
    await h.handle(
        event(reaction(post, author, bea)),
        event(
            PostCreated(
                post_id=mention, author_id=uid(bea), text=f"@{author.username}", visibility="public"
            )
        ),
    )
    assert len(await h.items(author)) == 2
    await h.sql("DELETE FROM content.posts WHERE id = $1", post)
    assert [i["kind"] for i in await h.items(author)] == ["mention"]  # hidden at once
    await h.handle(event(PostDeleted(post_id=post, author_id=uid(author))))
    assert await h.groups_of(author) == 1  # and gone for good


async def test_a_post_made_private_hides_its_mentions(client: TestClient) -> None:
    h = Harness(client)
    author, bea = await register(client), await register(client)
    post = await post_of(client, author)
    await h.handle(
        event(
            PostCreated(
                post_id=post, author_id=uid(author), text=f"@{bea.username}", visibility="public"
            )
        )
    )
    assert len(await h.items(bea)) == 1 and await h.unread(bea) == 1
    for visibility, shown in (("private", 0), ("friends", 0), ("public", 1)):
        resp = await client.patch(
            f"/api/v1/posts/{post}", headers=author.headers, json={"visibility": visibility}
        )
        assert resp.status == 200
        assert len(await h.items(bea)) == shown and await h.unread(bea) == shown, visibility
    # Friends-only again, and now they are friends: visible.
    await client.patch(
        f"/api/v1/posts/{post}", headers=author.headers, json={"visibility": "friends"}
    )
    await h.befriend(author, bea)
    assert len(await h.items(bea)) == 1


# -- preferences --------------------------------------------------------------------------------


async def test_settings_defaults_and_partial_changes(client: TestClient) -> None:
    user = await register(client)
    defaults = await get_json(client, SETTINGS, user)
    assert set(defaults) == {
        "friend_request",
        "friend_accepted",
        "comment",
        "reply",
        "reaction",
        "mention",
        "message",
        "report_resolved",  # issue 12: a report of yours was resolved
    }
    assert all(v == {"enabled": True, "only_friends": False} for v in defaults.values())

    resp = await client.patch(
        SETTINGS, headers=user.headers, json={"comment": {"only_friends": True}}
    )
    assert resp.status == 200
    assert (await resp.json())["comment"] == {"enabled": True, "only_friends": True}
    resp = await client.patch(
        SETTINGS,
        headers=user.headers,
        json={"comment": {"enabled": False}, "message": {"enabled": False}},
    )
    body = await resp.json()
    assert body["comment"] == {"enabled": False, "only_friends": True}  # kept
    assert body["message"] == {"enabled": False, "only_friends": False}
    assert body["reaction"] == {"enabled": True, "only_friends": False}
    assert await get_json(client, SETTINGS, user) == body
    resp = await client.patch(SETTINGS, headers=user.headers, json={})
    assert await resp.json() == body

    err = await expect_error(
        await client.patch(
            SETTINGS, headers=user.headers, json={"friend_request": {"only_friends": True}}
        ),
        422,
        "validation_error",
    )
    assert "friend_request" in err["fields"] and "only_friends" in err["fields"]["friend_request"]
    err = await expect_error(
        await client.patch(SETTINGS, headers=user.headers, json={"poke": {"enabled": True}}),
        422,
        "validation_error",
    )
    assert "poke" in json.dumps(err["fields"])
    await expect_error(
        await client.patch(SETTINGS, headers=user.headers, json={"mention": {"enabled": "no"}}),
        422,
        "validation_error",
    )
    await expect_error(await client.get(SETTINGS), 401, "unauthorized")
    assert await get_json(client, SETTINGS, user) == body  # nothing changed by the refusals


async def test_a_disabled_kind_creates_nothing(client: TestClient) -> None:
    h = Harness(client)
    author, bea = await register(client), await register(client)
    post = await post_of(client, author)
    resp = await client.patch(
        SETTINGS, headers=author.headers, json={"reaction": {"enabled": False}}
    )
    assert resp.status == 200
    c = await h.comment(post, bea)
    await h.handle(event(reaction(post, author, bea)), event(commented(c, post, author, bea)))
    assert [i["kind"] for i in await h.items(author)] == ["comment"]
    assert h.created == ["comment"]


async def test_only_friends(client: TestClient) -> None:
    h = Harness(client)
    author, friend, stranger = [await register(client) for _ in range(3)]
    await h.befriend(author, friend)
    post = await post_of(client, author)
    resp = await client.patch(
        SETTINGS, headers=author.headers, json={"reaction": {"only_friends": True}}
    )
    assert resp.status == 200
    await h.handle(event(reaction(post, author, stranger)), event(reaction(post, author, friend)))
    [group] = await h.items(author)
    assert group["notifications_count"] == 1 and actor_ids(group) == [friend.id]
    # Other kinds are not filtered by it.
    c = await h.comment(post, stranger)
    await h.handle(event(commented(c, post, author, stranger)))
    assert {i["kind"] for i in await h.items(author)} == {"reaction", "comment"}


# -- reading ----------------------------------------------------------------------------------


async def make_requests(h: Harness, to: User, n: int) -> list[User]:
    """``n`` friend requests to ``to``, one a minute (oldest first); their senders."""
    senders = [await register(h.client) for _ in range(n)]
    t0 = datetime.now(UTC) - timedelta(hours=2)
    await h.handle(
        *(
            event(
                FriendRequestSent(request_id=i, from_id=uid(s), to_id=uid(to)),
                t0 + i * timedelta(minutes=1),
            )
            for i, s in enumerate(senders)
        )
    )
    return senders


async def test_mark_read_by_ids_and_all(client: TestClient) -> None:
    h = Harness(client)
    me, other = await register(client), await register(client)
    await make_requests(h, me, 3)
    await make_requests(h, other, 1)
    mine = await h.items(me)
    [theirs] = await h.items(other)
    assert await h.unread(me) == 3

    await h.read(me, {"ids": [mine[0]["id"], "1", "0", "9999999999999999", theirs["id"]]})
    assert [i["read"] for i in await h.items(me)] == [True, False, False]
    assert await h.unread(me) == 2
    assert [i["read"] for i in await h.items(other)] == [False]  # not the caller's: ignored
    await h.read(me, {"ids": []})
    await h.read(me, {"ids": [mine[0]["id"]]})  # again: fine
    assert [i["id"] for i in await h.items(me, "?unread=true")] == [mine[1]["id"], mine[2]["id"]]

    for bad in ({}, {"all": False}, {"ids": None}):
        err = await expect_error(
            await client.post(READ, headers=me.headers, json=bad), 422, "validation_error"
        )
        assert "ids" in err["fields"], bad
    err = await expect_error(
        await client.post(READ, headers=me.headers, json={"ids": ["12", "abc"]}),
        422,
        "validation_error",
    )
    assert set(err["fields"]) == {"ids[1]"}
    await expect_error(
        await client.post(READ, headers=me.headers, json={"ids": ["1" * 17]}),
        422,
        "validation_error",
    )
    await expect_error(await client.post(READ, json={"all": True}), 401, "unauthorized")

    await h.read(me, {"all": True})
    assert await h.unread(me) == 0 and await h.items(me, "?unread=true") == []
    assert [i["read"] for i in await h.items(other)] == [False]


async def test_pages_newest_first_and_unread_only(client: TestClient) -> None:
    h = Harness(client)
    me = await register(client)
    senders = await make_requests(h, me, 5)
    newest_first = [s.id for s in reversed(senders)]
    items = await h.items(me)
    assert [i["actor"]["id"] for i in items] == newest_first
    await h.read(me, {"ids": [items[1]["id"], items[3]["id"]]})

    async def pages(query: str) -> list[dict[str, Any]]:
        out, cursor = [], None
        while True:
            url = LIST + query + (f"&cursor={cursor}" if cursor else "")
            out.append(await get_json(client, url, me))
            cursor = out[-1]["next_cursor"]
            if cursor is None:
                return out

    seen = await pages("?limit=2")
    assert [len(p["items"]) for p in seen] == [2, 2, 1]
    assert [i["actor"]["id"] for p in seen for i in p["items"]] == newest_first
    assert all(p["unread_count"] == 3 for p in seen)
    unread = await pages("?unread=true&limit=2")
    assert [i["actor"]["id"] for p in unread for i in p["items"]] == [
        newest_first[0],
        newest_first[2],
        newest_first[4],
    ]
    assert all(i["read"] is False for p in unread for i in p["items"])
    await expect_error(
        await client.get(LIST + "?cursor=nonsense", headers=me.headers), 400, "validation_error"
    )
    await expect_error(
        await client.get(LIST + "?unread=maybe", headers=me.headers), 400, "validation_error"
    )
    await expect_error(await client.get(LIST), 401, "unauthorized")


# -- the consumer's shape -----------------------------------------------------------------------


async def test_a_batch_costs_a_few_statements_whatever_its_size(client: TestClient) -> None:
    h = Harness(client)
    author = await register(client)
    fans = [await register(client) for _ in range(5)]
    posts = [await post_of(client, author) for _ in range(4)]
    events = [event(reaction(p, author, f)) for p in posts for f in fans]
    before = h.db.queries
    await h.handle(*events)
    statements = h.db.queries - before
    assert statements <= 6, statements  # admissible, locks, latest groups, write, render
    assert len(await h.items(author)) == 4
    assert h.created == ["reaction"] * 20
    # One push for the batch's groups of one recipient, each group's final state once.
    assert len(h.reach.pushes) == 1
    assert [n["notifications_count"] for n in h.reach.to(author)] == [5, 5, 5, 5]


async def test_the_metric_counts_by_kind() -> None:
    metrics = Metrics()
    metrics.notification_created("reaction")
    metrics.notification_created("reaction")
    text = metrics.render().decode()
    assert 'agora_notifications_total{kind="reaction"} 2.0' in text


async def test_the_openapi_document_has_the_endpoints(client: TestClient) -> None:
    doc = await get_json(client, "/api/openapi.json")
    paths = doc["paths"]
    assert {"get"} <= set(paths["/api/v1/notifications"])
    assert "204" in paths["/api/v1/notifications/read"]["post"]["responses"]
    assert {"get", "patch"} <= set(paths["/api/v1/notifications/settings"])
    schemas = doc["components"]["schemas"]
    page = schemas["NotificationPage"]
    assert set(page["required"]) == {"items", "next_cursor", "unread_count"}
    assert set(schemas["ReadIn"]["properties"]) == {"ids", "all"}
    unread = [
        p for p in paths["/api/v1/notifications"]["get"]["parameters"] if p["name"] == "unread"
    ]
    assert unread and unread[0]["schema"]["type"] == "boolean"


# -- end to end: REST change -> outbox -> relay -> runner -> the consumer ---------------------------


@pytest.fixture
async def live(make_client: AppFactory, transport: Config) -> TestClient:
    """A node running its own notifications consumer (as every node does), with the events
    in process and then through RabbitMQ."""
    return await make_client(create_app(transport))


async def settled_items(client: TestClient, user: User, query: str = "") -> list[dict[str, Any]]:
    await settled(client)
    page = await get_json(client, LIST + query, user)
    return page["items"]  # type: ignore[no-any-return]


async def test_end_to_end_reactions_comments_replies_and_mentions(live: TestClient) -> None:
    author, bea, cal = [await register(live) for _ in range(3)]
    post = await create_post(live, author, f"hello @{cal.username}", "public")
    [mention] = await settled_items(live, cal)
    assert mention["kind"] == "mention" and mention["actor"]["id"] == author.id
    assert mention["subject_id"] == post["id"]

    for user in (bea, cal):
        resp = await live.put(
            f"/api/v1/posts/{post['id']}/reactions", headers=user.headers, json={"type": "like"}
        )
        assert resp.status == 200
    resp = await live.put(  # a changed reaction makes nothing new
        f"/api/v1/posts/{post['id']}/reactions", headers=bea.headers, json={"type": "love"}
    )
    assert resp.status == 200
    [group] = await settled_items(live, author)
    assert group["kind"] == "reaction" and group["notifications_count"] == 2
    assert actor_ids(group) == [cal.id, bea.id]

    resp = await live.post(
        f"/api/v1/posts/{post['id']}/comments", headers=bea.headers, json={"text": "first"}
    )
    comment = await resp.json()
    resp = await live.post(
        f"/api/v1/posts/{post['id']}/comments",
        headers=cal.headers,
        json={"text": f"@{author.username} indeed", "parent_id": comment["id"]},
    )
    reply = await resp.json()
    [item] = await settled_items(live, bea)
    assert item["kind"] == "reply" and item["subject_id"] == reply["id"]
    items = await settled_items(live, author)
    assert [(i["kind"], i["notifications_count"]) for i in items] == [
        ("comment", 2),  # Bea's and Cal's; Cal's mention of the author is not a second one
        ("reaction", 2),
    ]
    # Deleting the reply: out of the comment group, and Bea's reply notification goes.
    resp = await live.delete(f"/api/v1/comments/{reply['id']}", headers=cal.headers)
    assert resp.status == 204
    assert await settled_items(live, bea) == []
    assert (await settled_items(live, author))[0]["notifications_count"] == 1
    # Deleting the post: everything about it goes.
    resp = await live.delete(f"/api/v1/posts/{post['id']}", headers=author.headers)
    assert resp.status == 204
    assert await settled_items(live, author) == [] and await settled_items(live, cal) == []
    assert (
        await live.app[keys.DB].fetchval(
            "test", "SELECT count(*) FROM notifications.groups WHERE post_id = $1", int(post["id"])
        )
        == 0
    )


async def test_end_to_end_friends_and_blocks(live: TestClient) -> None:
    a, b, c = [await register(live) for _ in range(3)]
    resp = await live.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    request = await resp.json()
    [item] = await settled_items(live, b)
    assert item["kind"] == "friend_request" and item["actor"]["id"] == a.id
    resp = await live.post(f"/api/v1/friends/requests/{request['id']}/accept", headers=b.headers)
    assert resp.status == 200
    [item] = await settled_items(live, a)
    assert item["kind"] == "friend_accepted" and item["actor"]["id"] == b.id

    post = await create_post(live, a, "p", "public")
    await live.put(f"/api/v1/posts/{post['id']}/reactions", headers=c.headers, json={"type": "wow"})
    assert [i["kind"] for i in await settled_items(live, a)] == ["reaction", "friend_accepted"]
    resp = await live.post("/api/v1/blocks", headers=a.headers, json={"user_id": c.id})
    assert resp.status == 201
    assert [i["kind"] for i in await settled_items(live, a)] == ["friend_accepted"]
    resp = await live.delete(f"/api/v1/blocks/{c.id}", headers=a.headers)
    assert resp.status == 204
    assert [i["kind"] for i in await settled_items(live, a)] == ["friend_accepted"]


async def test_end_to_end_messages_notify_offline_members_only(live: TestClient) -> None:
    a, b, cid = await friends_in_a_direct_conversation(live)

    async def send(sender: User, text: str) -> None:
        resp = await live.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=sender.headers,
            json={"text": text, "client_id": text},
        )
        assert resp.status == 201, await resp.text()

    async def messages(user: User) -> list[tuple[str, int]]:
        return [
            (i["subject_id"], i["notifications_count"])
            for i in await settled_items(live, user)
            if i["kind"] == "message"
        ]

    await send(a, "m1")
    await send(a, "m2")
    assert await messages(b) == [(cid, 2)]
    # b online: nothing more.
    ws = await WsClient.connect(live, b.access)
    try:
        await send(a, "m3")
        assert await messages(b) == [(cid, 2)]
    finally:
        await ws.close()
    assert await messages(a) == []  # the sender


async def test_the_notification_frame_reaches_the_recipients_sessions(live: TestClient) -> None:
    author, bea = await register(live), await register(live)
    post = await create_post(live, author, "p", "public")
    ws = await WsClient.connect(live, author.access)
    try:
        resp = await live.put(
            f"/api/v1/posts/{post['id']}/reactions", headers=bea.headers, json={"type": "haha"}
        )
        assert resp.status == 200
        frame = await ws.expect("notification", timeout=10)
        note = frame["notification"]
        assert note["kind"] == "reaction" and note["actor"]["id"] == bea.id
        assert note["notifications_count"] == 1 and note["read"] is False
        [listed] = await settled_items(live, author)
        assert listed == note
    finally:
        await ws.close()
    text = await (await live.get("/metrics")).text()
    assert 'agora_notifications_total{kind="reaction"}' in text


async def test_end_to_end_the_same_event_delivered_twice_makes_one_notification(
    live: TestClient, transport: Config, database_url: str
) -> None:
    author, bea = await register(live), await register(live)
    post = await create_post(live, author, "p", "public")
    resp = await live.put(
        f"/api/v1/posts/{post['id']}/reactions", headers=bea.headers, json={"type": "like"}
    )
    assert resp.status == 200
    [first] = await settled_items(live, author)
    event_id = await live.app[keys.DB].fetchval(
        "test_event_id",
        "SELECT id FROM events.outbox WHERE type = 'reaction.set' AND aggregate_id = $1",
        int(post["id"]),
    )
    await redeliver(transport, database_url, "notifications", event_id)
    [again] = await settled_items(live, author)
    assert again == first and again["notifications_count"] == 1
    text = await (await live.get("/metrics")).text()
    assert 'agora_events_duplicates_total{consumer="notifications"} 1.0' in text
    assert 'agora_notifications_total{kind="reaction"} 1.0' in text
