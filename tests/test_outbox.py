"""The transactional outbox's writers: every domain change writes its event in its own
transaction (one per affected thing), a rolled-back change leaves none.

Events are read straight from ``events.outbox``. The database is shared by the test session,
so every query is narrowed to the fresh users and things of its test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from agora.events.types import (
    PAYLOADS,
    CommentCreated,
    CommentDeleted,
    ConversationCreated,
    FriendRequestAccepted,
    FriendRequestCancelled,
    FriendRequestDeclined,
    FriendRequestSent,
    FriendshipEnded,
    MemberAdded,
    MemberRemoved,
    MessageStored,
    Payload,
    PostCreated,
    PostDeleted,
    PostUpdated,
    PostVisibilityChanged,
    ReactionRemoved,
    ReactionSet,
    UserBlocked,
    UserRegistered,
    UserUnblocked,
    UserUpdated,
    pair_key,
)
from agora.server import keys
from agora.storage import events as outbox
from agora.storage.chat import ChatStore, Outgoing, StaleOwner
from agora.storage.content import CommentStore, PostStore
from agora.storage.db import Database, Tx
from agora.storage.social import SocialStore
from tests.support.api import (
    User,
    befriend,
    block,
    create_post,
    expect_error,
    friends_in_a_direct_conversation,
    group,
    register,
)
from tests.support.ws import WsClient

EVENTS = """
SELECT position, type, aggregate, aggregate_id, actor_id, version, payload::text AS payload
FROM events.outbox
WHERE (aggregate_id = ANY($1::bigint[]) OR actor_id = ANY($2::bigint[]))
  AND ($3::text IS NULL OR type = $3) AND ($4::text IS NULL OR aggregate = $4)
ORDER BY position
"""


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def events(
    pg: asyncpg.Connection | Tx,
    *,
    about: Sequence[Any] = (),
    by: Sequence[Any] = (),
    type: str | None = None,
    aggregate: str | None = None,
) -> list[asyncpg.Record]:
    """The events of these aggregate ids or by these actors (ids as ints or API strings),
    optionally of one type or aggregate (a pair's key is also a user's id)."""
    ids, actors = [int(i) for i in about], [int(i) for i in by]
    if isinstance(pg, Tx):
        return await pg.fetch("test_events", EVENTS, ids, actors, type, aggregate)
    return await pg.fetch(EVENTS, ids, actors, type, aggregate)


_PARTIES = ("from_id", "to_id", "user_id", "friend_id", "blocker_id", "blocked_id")


async def pair_events(
    pg: asyncpg.Connection | Tx, x: int, y: int, type: str | None = None
) -> list[asyncpg.Record]:
    """The events of the pair x, y (their aggregate key is shared with the lower id's other
    pairs)."""
    rows = await events(pg, about=[pair_key(x, y)], type=type, aggregate="friendship")
    return [
        r
        for r in rows
        if {v for k, v in msgspec.json.decode(r["payload"]).items() if k in _PARTIES} == {x, y}
    ]


def payload_of(row: asyncpg.Record) -> Payload:
    """The row's payload decoded as its type's payload (as the consumers decode it)."""
    decoded: Payload = msgspec.json.decode(row["payload"], type=PAYLOADS[row["type"]])
    return decoded


def only(rows: list[asyncpg.Record], type: str, actor: Any) -> Payload:
    """The one event of ``type`` among ``rows``: its envelope checked, its payload decoded."""
    found = [r for r in rows if r["type"] == type]
    assert len(found) == 1, [(r["type"], r["payload"]) for r in rows]
    row = found[0]
    payload = payload_of(row)
    assert row["aggregate"] == payload.aggregate
    assert row["aggregate_id"] == payload.aggregate_id()
    assert row["actor_id"] == (int(actor) if actor is not None else None)
    assert row["version"] == 1
    return payload


def uid(user: User) -> int:
    return int(user.id)


# -- accounts ---------------------------------------------------------------------------------


async def test_user_registered_and_updated(client: TestClient, pg: asyncpg.Connection) -> None:
    user = await register(client, display_name="Ann")
    rows = await events(pg, about=[user.id], aggregate="user")
    assert [r["type"] for r in rows] == ["user.registered"]
    assert only(rows, "user.registered", user.id) == UserRegistered(
        user_id=uid(user), username=user.username, display_name="Ann"
    )
    assert rows[0]["aggregate"] == "user" and rows[0]["aggregate_id"] == uid(user)

    resp = await client.patch("/api/v1/users/me", headers=user.headers, json={"bio": "hi"})
    assert resp.status == 200, await resp.text()
    rows = await events(pg, about=[user.id], aggregate="user", type="user.updated")
    assert only(rows, "user.updated", user.id) == UserUpdated(
        user_id=uid(user),
        username=user.username,
        display_name="Ann",
        bio="hi",
        avatar_media_id=None,
        changed=["bio"],
    )
    # The same values again change nothing: no event. Of two fields, only the changed one.
    resp = await client.patch("/api/v1/users/me", headers=user.headers, json={"bio": "hi"})
    assert resp.status == 200
    assert len(await events(pg, about=[user.id], aggregate="user", type="user.updated")) == 1
    resp = await client.patch(
        "/api/v1/users/me", headers=user.headers, json={"bio": "hi", "display_name": "Anna"}
    )
    assert resp.status == 200
    rows = await events(pg, about=[user.id], aggregate="user", type="user.updated")
    assert len(rows) == 2
    last = payload_of(rows[-1])
    assert isinstance(last, UserUpdated)
    assert last.changed == ["display_name"] and last.display_name == "Anna" and last.bio == "hi"


# -- the social graph -------------------------------------------------------------------------


async def test_friend_request_sent_accepted_declined_cancelled(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    a, b, c = await register(client), await register(client), await register(client)

    resp = await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    assert resp.status == 201
    ab = int((await resp.json())["id"])
    pair = (uid(a), uid(b))
    sent = only(
        await pair_events(pg, *pair, type="friend_request.sent"),
        "friend_request.sent",
        a.id,
    )
    assert sent == FriendRequestSent(request_id=ab, from_id=uid(a), to_id=uid(b))

    resp = await client.post(f"/api/v1/friends/requests/{ab}/accept", headers=b.headers)
    assert resp.status == 200
    rows = await pair_events(pg, *pair)
    assert [r["type"] for r in rows] == ["friend_request.sent", "friend_request.accepted"]
    assert only(rows, "friend_request.accepted", b.id) == FriendRequestAccepted(
        request_id=ab, from_id=uid(a), to_id=uid(b)
    )

    resp = await client.post("/api/v1/friends/requests", headers=c.headers, json={"user_id": a.id})
    ca = int((await resp.json())["id"])
    resp = await client.post(f"/api/v1/friends/requests/{ca}/decline", headers=a.headers)
    assert resp.status == 200
    rows = await pair_events(pg, uid(a), uid(c))
    assert only(rows, "friend_request.declined", a.id) == FriendRequestDeclined(
        request_id=ca, from_id=uid(c), to_id=uid(a)
    )

    resp = await client.post("/api/v1/friends/requests", headers=b.headers, json={"user_id": c.id})
    bc = int((await resp.json())["id"])
    assert (await client.delete(f"/api/v1/friends/requests/{bc}", headers=b.headers)).status == 204
    rows = await pair_events(pg, uid(b), uid(c))
    assert [r["type"] for r in rows] == ["friend_request.sent", "friend_request.cancelled"]
    assert only(rows, "friend_request.cancelled", b.id) == FriendRequestCancelled(
        request_id=bc, from_id=uid(b), to_id=uid(c)
    )
    # Answering again is a conflict and writes nothing.
    await expect_error(
        await client.post(f"/api/v1/friends/requests/{ab}/accept", headers=b.headers),
        409,
        "conflict",
    )
    assert len(await pair_events(pg, *pair)) == 2


async def test_a_crossed_request_accepts_the_first_and_unfriend_ends_it(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    a, b = await register(client), await register(client)
    resp = await client.post("/api/v1/friends/requests", headers=a.headers, json={"user_id": b.id})
    first = int((await resp.json())["id"])
    resp = await client.post("/api/v1/friends/requests", headers=b.headers, json={"user_id": a.id})
    assert resp.status == 200  # asking back accepted the first request
    pair = (uid(a), uid(b))
    rows = await pair_events(pg, *pair)
    assert [r["type"] for r in rows] == ["friend_request.sent", "friend_request.accepted"]
    assert only(rows, "friend_request.accepted", b.id) == FriendRequestAccepted(
        request_id=first, from_id=uid(a), to_id=uid(b)
    )

    assert (await client.delete(f"/api/v1/friends/{a.id}", headers=b.headers)).status == 204
    rows = await pair_events(pg, *pair, type="friendship.ended")
    assert only(rows, "friendship.ended", b.id) == FriendshipEnded(
        user_id=uid(b), friend_id=uid(a), reason="unfriend"
    )
    await expect_error(
        await client.delete(f"/api/v1/friends/{a.id}", headers=b.headers), 404, "not_found"
    )
    assert len(await pair_events(pg, *pair, type="friendship.ended")) == 1


async def test_block_and_unblock(client: TestClient, pg: asyncpg.Connection) -> None:
    a, friend, asker = await register(client), await register(client), await register(client)
    await befriend(client, a, friend)
    resp = await client.post(
        "/api/v1/friends/requests", headers=asker.headers, json={"user_id": a.id}
    )
    pending = int((await resp.json())["id"])

    await block(client, a, friend)
    pair = (uid(a), uid(friend))
    rows = await pair_events(pg, *pair)
    assert [r["type"] for r in rows][-2:] == ["user.blocked", "friendship.ended"]
    assert only(rows, "user.blocked", a.id) == UserBlocked(
        blocker_id=uid(a), blocked_id=uid(friend)
    )
    assert only(rows, "friendship.ended", a.id) == FriendshipEnded(
        user_id=uid(a), friend_id=uid(friend), reason="block"
    )
    # Blocking again changes nothing (200) and writes nothing.
    resp = await client.post("/api/v1/blocks", headers=a.headers, json={"user_id": friend.id})
    assert resp.status == 200
    assert len(await pair_events(pg, *pair)) == len(rows)

    # A block cancels the pair's pending request: the blocker cancelled it.
    await block(client, a, asker)
    rows = await pair_events(pg, uid(a), uid(asker))
    assert [r["type"] for r in rows] == [
        "friend_request.sent",
        "user.blocked",
        "friend_request.cancelled",
    ]
    assert only(rows, "friend_request.cancelled", a.id) == FriendRequestCancelled(
        request_id=pending, from_id=uid(asker), to_id=uid(a)
    )
    assert not [r for r in rows if r["type"] == "friendship.ended"]

    assert (await client.delete(f"/api/v1/blocks/{friend.id}", headers=a.headers)).status == 204
    rows = await pair_events(pg, *pair, type="user.unblocked")
    assert only(rows, "user.unblocked", a.id) == UserUnblocked(
        blocker_id=uid(a), blocked_id=uid(friend)
    )
    await expect_error(
        await client.delete(f"/api/v1/blocks/{friend.id}", headers=a.headers), 404, "not_found"
    )
    assert len(await pair_events(pg, *pair, type="user.unblocked")) == 1


# -- content ----------------------------------------------------------------------------------


async def test_post_events_in_commit_order(client: TestClient, pg: asyncpg.Connection) -> None:
    author = await register(client)
    post = await create_post(client, author, "first", "friends")
    pid = int(post["id"])
    path = f"/api/v1/posts/{pid}"
    assert only(
        await events(pg, about=[pid], aggregate="post"), "post.created", author.id
    ) == PostCreated(
        post_id=pid, author_id=uid(author), text="first", visibility="friends", media_ids=[]
    )

    resp = await client.patch(path, headers=author.headers, json={"text": "second"})
    assert resp.status == 200
    resp = await client.patch(path, headers=author.headers, json={"visibility": "public"})
    assert resp.status == 200
    # The same visibility again, or the same text: no event.
    resp = await client.patch(
        path, headers=author.headers, json={"visibility": "public", "text": "second"}
    )
    assert resp.status == 200
    assert (await client.delete(path, headers=author.headers)).status == 204

    rows = await events(pg, about=[pid], aggregate="post")
    assert [r["type"] for r in rows] == [
        "post.created",
        "post.updated",
        "post.visibility_changed",
        "post.deleted",
    ]
    positions = [r["position"] for r in rows]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert only(rows, "post.updated", author.id) == PostUpdated(
        post_id=pid, author_id=uid(author), text="second", visibility="friends"
    )
    assert only(rows, "post.visibility_changed", author.id) == PostVisibilityChanged(
        post_id=pid, author_id=uid(author), old="friends", new="public"
    )
    assert only(rows, "post.deleted", author.id) == PostDeleted(post_id=pid, author_id=uid(author))


async def test_an_edit_of_text_and_visibility_writes_both(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    author = await register(client)
    pid = int((await create_post(client, author, "a", "public"))["id"])
    resp = await client.patch(
        f"/api/v1/posts/{pid}",
        headers=author.headers,
        json={"text": "b", "visibility": "private"},
    )
    assert resp.status == 200
    rows = await events(pg, about=[pid], aggregate="post")
    assert [r["type"] for r in rows] == [
        "post.created",
        "post.updated",
        "post.visibility_changed",
    ]
    assert only(rows, "post.updated", author.id) == PostUpdated(
        post_id=pid, author_id=uid(author), text="b", visibility="private"
    )
    assert only(rows, "post.visibility_changed", author.id) == PostVisibilityChanged(
        post_id=pid, author_id=uid(author), old="public", new="private"
    )


async def test_comment_events(client: TestClient, pg: asyncpg.Connection) -> None:
    author, friend, other = await register(client), await register(client), await register(client)
    await befriend(client, author, friend)
    await befriend(client, author, other)
    pid = int((await create_post(client, author, "talk", "friends"))["id"])
    resp = await client.post(
        f"/api/v1/posts/{pid}/comments", headers=friend.headers, json={"text": "top"}
    )
    top = int((await resp.json())["id"])
    resp = await client.post(
        f"/api/v1/posts/{pid}/comments",
        headers=other.headers,
        json={"text": "reply", "parent_id": str(top)},
    )
    assert resp.status == 201, await resp.text()
    reply = int((await resp.json())["id"])

    assert only(await events(pg, about=[top]), "comment.created", friend.id) == CommentCreated(
        comment_id=top, post_id=pid, post_author_id=uid(author), author_id=uid(friend), text="top"
    )
    assert only(await events(pg, about=[reply]), "comment.created", other.id) == CommentCreated(
        comment_id=reply,
        post_id=pid,
        post_author_id=uid(author),
        author_id=uid(other),
        parent_id=top,
        parent_author_id=uid(friend),
        text="reply",
    )

    # The post's author deletes the reply: the actor is the post's author.
    assert (await client.delete(f"/api/v1/comments/{reply}", headers=author.headers)).status == 204
    assert only(await events(pg, about=[reply]), "comment.deleted", author.id) == CommentDeleted(
        comment_id=reply, post_id=pid, author_id=uid(other)
    )
    await expect_error(
        await client.delete(f"/api/v1/comments/{reply}", headers=author.headers), 404, "not_found"
    )
    assert len(await events(pg, about=[reply], type="comment.deleted")) == 1


async def test_reaction_events(client: TestClient, pg: asyncpg.Connection) -> None:
    author, fan = await register(client), await register(client)
    await befriend(client, author, fan)
    pid = int((await create_post(client, author, "react", "friends"))["id"])
    path = f"/api/v1/posts/{pid}/reactions"

    async def react(kind: str) -> None:
        resp = await client.put(path, headers=fan.headers, json={"type": kind})
        assert resp.status == 200, await resp.text()

    await react("like")
    await react("like")  # the same type again: nothing changed, no event
    await react("love")
    assert (await client.delete(path, headers=fan.headers)).status == 204
    assert (await client.delete(path, headers=fan.headers)).status == 204  # none left: no event

    rows = [r for r in await events(pg, about=[pid], aggregate="reactions")]
    assert [r["type"] for r in rows] == ["reaction.set", "reaction.set", "reaction.removed"]
    for row in rows:
        assert row["actor_id"] == uid(fan) and row["aggregate_id"] == pid and row["version"] == 1
    assert [payload_of(r) for r in rows] == [
        ReactionSet(post_id=pid, post_author_id=uid(author), user_id=uid(fan), reaction="like"),
        ReactionSet(
            post_id=pid,
            post_author_id=uid(author),
            user_id=uid(fan),
            reaction="love",
            previous="like",
        ),
        ReactionRemoved(post_id=pid, post_author_id=uid(author), user_id=uid(fan), reaction="love"),
    ]


async def test_a_first_reaction_racing_another_reports_what_it_replaced(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    """The user's first reaction commits in another transaction while ours waits to insert:
    ours replaces it, and its event says so."""
    author, fan = await register(client), await register(client)
    pid = int((await create_post(client, author, "race", "public"))["id"])
    store = PostStore(client.server.app[keys.DB])
    other = pg.transaction()
    await other.start()
    await pg.execute(
        "INSERT INTO content.reactions (post_id, user_id, type) VALUES ($1, $2, 'wow')",
        pid,
        uid(fan),
    )
    ours = asyncio.create_task(store.react(uid(fan), pid, "sad"))
    await asyncio.sleep(0.3)
    assert not ours.done()  # waiting for the other insert of the same key
    await other.commit()
    assert await ours
    rows = await events(pg, about=[pid], aggregate="reactions")
    assert only(rows, "reaction.set", fan.id) == ReactionSet(
        post_id=pid, post_author_id=uid(author), user_id=uid(fan), reaction="sad", previous="wow"
    )
    stats = await pg.fetchrow(
        "SELECT wow_count, sad_count FROM content.post_counts WHERE post_id = $1", pid
    )
    assert tuple(stats) == (0, 1)


# -- chat -------------------------------------------------------------------------------------


async def test_conversation_created_and_members(client: TestClient, pg: asyncpg.Connection) -> None:
    users, cid_text = await group(client, 3, title="G")
    me, a, b = users
    cid = int(cid_text)
    assert only(
        await events(pg, about=[cid]), "conversation.created", me.id
    ) == ConversationCreated(
        conversation_id=cid,
        kind="group",
        title="G",
        created_by=uid(me),
        member_ids=[uid(me), *sorted([uid(a), uid(b)])],
    )

    # A direct conversation asked for twice: created once.
    resp = await client.post(
        "/api/v1/conversations", headers=me.headers, json={"member_ids": [a.id]}
    )
    assert resp.status == 201
    direct = int((await resp.json())["id"])
    resp = await client.post(
        "/api/v1/conversations", headers=a.headers, json={"member_ids": [me.id]}
    )
    assert resp.status == 200 and int((await resp.json())["id"]) == direct
    created = only(await events(pg, about=[direct]), "conversation.created", me.id)
    assert isinstance(created, ConversationCreated) and created.kind == "direct"
    assert created.title is None and created.member_ids == [uid(me), uid(a)]

    c, d = await register(client), await register(client)
    await befriend(client, me, c)
    await befriend(client, me, d)
    resp = await client.post(
        f"/api/v1/conversations/{cid}/members",
        headers=me.headers,
        json={"user_ids": [a.id, c.id, d.id]},  # a is in already
    )
    assert resp.status == 200, await resp.text()
    rows = await events(pg, about=[cid], type="conversation.member_added")
    assert len(rows) == 2
    for row in rows:
        assert row["actor_id"] == uid(me) and row["aggregate"] == "conversation"
        assert row["aggregate_id"] == cid and row["version"] == 1
    assert sorted(p.user_id for p in map(payload_of, rows) if isinstance(p, MemberAdded)) == sorted(
        [uid(c), uid(d)]
    )

    path = f"/api/v1/conversations/{cid}/members"
    assert (await client.delete(f"{path}/{c.id}", headers=me.headers)).status == 204
    assert (await client.delete(f"{path}/{b.id}", headers=b.headers)).status == 204  # b leaves
    rows = await events(pg, about=[cid], type="conversation.member_removed")
    assert [(r["actor_id"], payload_of(r)) for r in rows] == [
        (uid(me), MemberRemoved(conversation_id=cid, user_id=uid(c))),
        (uid(b), MemberRemoved(conversation_id=cid, user_id=uid(b))),
    ]


async def test_message_stored_once_per_message(client: TestClient, pg: asyncpg.Connection) -> None:
    a, _b, cid_text = await friends_in_a_direct_conversation(client)
    cid = int(cid_text)
    ws = await WsClient.connect(client, a.access)
    try:
        await ws.send(
            {"type": "send", "conversation_id": cid_text, "client_id": "m1", "text": "hi"}
        )
        ack = await ws.expect("ack")
        message = (await ws.expect("message"))["message"]
        # The same client_id again: the same message, no second event.
        await ws.send(
            {"type": "send", "conversation_id": cid_text, "client_id": "m1", "text": "hi"}
        )
        again = await ws.expect("ack")
        assert again["message_id"] == ack["message_id"]
        await ws.send({"type": "send", "conversation_id": cid_text, "client_id": "m2", "text": "2"})
        second = await ws.expect("ack")
    finally:
        await ws.close()

    rows = await events(pg, about=[cid], type="message.stored")
    assert len(rows) == 2
    for row in rows:
        assert row["aggregate"] == "conversation" and row["aggregate_id"] == cid
        assert row["actor_id"] == uid(a) and row["version"] == 1
    first, then = payload_of(rows[0]), payload_of(rows[1])
    assert isinstance(first, MessageStored) and isinstance(then, MessageStored)
    created_at = datetime.fromisoformat(message["created_at"].replace("Z", "+00:00"))
    assert first == MessageStored(
        conversation_id=cid,
        message_id=int(ack["message_id"]),
        seq=1,
        sender_id=uid(a),
        text="hi",
        created_at=created_at,
    )
    assert first.created_at.tzinfo is not None
    assert first.created_at.astimezone(UTC) == created_at.astimezone(UTC)
    assert (then.seq, then.message_id, then.text) == (2, int(second["message_id"]), "2")
    assert rows[0]["position"] < rows[1]["position"]


async def test_the_commit_statement_writes_events_in_seq_order_and_none_for_resends(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    users, cid_text = await group(client, 3)
    cid = int(cid_text)
    store = ChatStore(client.server.app[keys.DB])
    state = await store.state(cid)
    assert state is not None
    batch = [Outgoing(uid(users[i % 3]), f"c{i}", f"t{i}") for i in range(5)]
    done = await store.commit(cid, state.last_seq, batch, state.members_version)
    assert [m.seq for m in done.new] == [1, 2, 3, 4, 5]
    # The same batch again with one new message: only that one is stored, and has an event.
    again = await store.commit(
        cid, 5, [*batch, Outgoing(uid(users[0]), "c5", "t5")], state.members_version
    )
    assert [m.seq for m in again.new] == [6] and len(again.earlier) == 5
    rows = await events(pg, about=[cid], type="message.stored")
    stored = [payload_of(r) for r in rows]
    assert [
        (p.seq, p.message_id, p.sender_id, p.text) for p in stored if isinstance(p, MessageStored)
    ] == [(m.seq, m.id, m.sender_id, m.text) for m in [*done.new, *again.new]]
    assert [r["actor_id"] for r in rows] == [m.sender_id for m in [*done.new, *again.new]]


# -- rolled back => no event ------------------------------------------------------------------


async def test_a_rolled_back_social_change_leaves_no_event(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    a, b = await register(client), await register(client)
    await befriend(client, a, b)
    pair = (uid(a), uid(b))
    before = await pair_events(pg, *pair)
    db: Database = client.server.app[keys.DB]
    store = SocialStore(db)
    with pytest.raises(RuntimeError, match="after the change"):
        async with db.transaction("test_block_rolled_back") as tx:
            await store.lock_pair(tx, uid(a), uid(b))
            _, created = await store.add_block(tx, uid(a), uid(b))
            assert created and await store.remove_friendship(tx, uid(a), uid(b), "block")
            # Written, in this transaction...
            assert [r["type"] for r in await pair_events(tx, *pair)][-2:] == [
                "user.blocked",
                "friendship.ended",
            ]
            raise RuntimeError("after the change")
    # ... and gone with it.
    assert await pair_events(pg, *pair) == before
    assert (
        await pg.fetchval("SELECT count(*) FROM social.friendships WHERE user_id = $1", uid(a)) == 1
    )


async def test_a_failure_after_the_event_rolls_back_change_and_event(
    client: TestClient, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    author = await register(client)
    db: Database = client.server.app[keys.DB]
    written: list[str] = []

    async def append_then_fail(tx: Tx, payload: Payload, actor_id: int | None) -> None:
        await outbox.append(tx, payload, actor_id)
        written.append(payload.type)
        raise RuntimeError("after the event")

    post = await create_post(client, author, "before")
    monkeypatch.setattr("agora.storage.content.append", append_then_fail)
    with pytest.raises(RuntimeError, match="after the event"):
        await PostStore(db).update(int(post["id"]), "never", None, uid(author))
    assert written == ["post.updated"]
    assert await events(pg, about=[post["id"]], type="post.updated") == []
    assert await pg.fetchval("SELECT text FROM content.posts WHERE id = $1", int(post["id"])) == (
        "before"
    )
    monkeypatch.undo()

    # The same through chat's store: the members stay out, no member_added.
    users, cid_text = await group(client, 2)
    newcomer = await register(client)
    monkeypatch.setattr("agora.storage.chat.append", append_then_fail)
    with pytest.raises(RuntimeError, match="after the event"):
        await ChatStore(db).add_members(int(cid_text), [uid(newcomer)], 250, actor_id=uid(users[0]))
    assert written == ["post.updated", "conversation.member_added"]
    assert await events(pg, about=[cid_text], type="conversation.member_added") == []
    members = await ChatStore(db).members_of([int(cid_text)])
    assert uid(newcomer) not in {m.id for m in members[int(cid_text)]}


async def test_a_refused_one_statement_write_leaves_neither_change_nor_event(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    # Reacting, commenting and posting are one statement each, event included: the reaction
    # refused by its CHECK takes its reaction.set with it.
    author, fan = await register(client), await register(client)
    post = await create_post(client, author, "hello", visibility="public")
    db: Database = client.server.app[keys.DB]
    with pytest.raises(asyncpg.CheckViolationError):
        await PostStore(db).react(uid(fan), int(post["id"]), "meh")
    assert await events(pg, about=[post["id"]], type="reaction.set") == []
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM content.reactions WHERE post_id = $1", int(post["id"])
        )
        == 0
    )
    # The same statement with a valid type writes both.
    assert await PostStore(db).react(uid(fan), int(post["id"]), "like")
    (event,) = await events(pg, about=[post["id"]], type="reaction.set")
    assert payload_of(event) == ReactionSet(
        post_id=int(post["id"]), post_author_id=uid(author), user_id=uid(fan), reaction="like"
    )


async def test_a_failed_commit_statement_stores_no_message_and_no_event(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    (ok_users, ok_text), (bad_users, bad_text) = await group(client, 2), await group(client, 2)
    ok, bad = int(ok_text), int(bad_text)
    store = ChatStore(client.server.app[keys.DB])
    # A row at seq 1 that `bad`'s last_seq does not know about: the commit's insert hits the
    # unique key (conversation_id, seq) and the whole statement fails, `ok`'s part with it.
    await pg.execute(
        "INSERT INTO chat.messages (conversation_id, seq, sender_id, client_id, text) "
        "VALUES ($1, 1, $2, 'planted', 'x')",
        bad,
        uid(bad_users[0]),
    )
    outcomes = await store.commit_many(
        [
            (ok, 0, 0, [Outgoing(uid(u), f"ok{i}", "fine") for i, u in enumerate(ok_users)]),
            (bad, 0, 0, [Outgoing(uid(bad_users[1]), "real", "hello")]),
        ]
    )
    assert all(isinstance(o, StaleOwner) for o in outcomes.values()), outcomes
    assert await events(pg, about=[ok, bad], type="message.stored") == []
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM chat.messages WHERE conversation_id = ANY($1::bigint[])",
            [ok, bad],
        )
        == 1  # the planted one
    )
    # Committed again on its own, `ok`'s batch has its events.
    done = await store.commit(ok, 0, [Outgoing(uid(ok_users[0]), "ok0", "fine")])
    assert [m.seq for m in done.new] == [1]
    assert len(await events(pg, about=[ok], type="message.stored")) == 1


async def test_a_comment_on_a_post_deleted_meanwhile_writes_no_event(
    client: TestClient, pg: asyncpg.Connection
) -> None:
    author = await register(client)
    pid = int((await create_post(client, author, "gone soon", "public"))["id"])
    db: Database = client.server.app[keys.DB]
    assert await PostStore(db).delete(pid, uid(author))
    assert await CommentStore(db).create(pid, uid(author), None, "too late") is None
    assert [r["type"] for r in await events(pg, about=[pid], aggregate="post")] == [
        "post.created",
        "post.deleted",
    ]
    assert await events(pg, by=[author.id], type="comment.created") == []


async def test_refused_changes_write_no_event(
    client: TestClient, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The friend cap: the acceptance is refused, the request stays pending, no event.
    monkeypatch.setattr("agora.services.social.MAX_FRIENDS", 1)
    a, b, c = await register(client), await register(client), await register(client)
    await befriend(client, a, b)
    resp = await client.post("/api/v1/friends/requests", headers=c.headers, json={"user_id": a.id})
    request_id = (await resp.json())["id"]
    await expect_error(
        await client.post(f"/api/v1/friends/requests/{request_id}/accept", headers=a.headers),
        409,
        "conflict",
    )
    rows = await pair_events(pg, uid(a), uid(c))
    assert [r["type"] for r in rows] == ["friend_request.sent"]
    status = "SELECT status FROM social.friend_requests WHERE id = $1"
    assert await pg.fetchval(status, int(request_id)) == "pending"
    monkeypatch.undo()

    # The member cap: the add is refused, no member_added.
    monkeypatch.setattr("agora.services.chat.MAX_MEMBERS", 3)
    users, cid = await group(client, 3)
    extra = await register(client)
    await befriend(client, users[0], extra)
    await expect_error(
        await client.post(
            f"/api/v1/conversations/{cid}/members",
            headers=users[0].headers,
            json={"user_ids": [extra.id]},
        ),
        409,
        "conflict",
    )
    assert await events(pg, about=[cid], type="conversation.member_added") == []
