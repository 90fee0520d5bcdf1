"""What a conversation object tells a client after a reload: every member's receipt
(``read_seqs``) and the newest message (``last_message``), on GET /conversations and
/conversations/{id}, and nothing a member may not see."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.api import (
    User,
    befriend,
    expect_error,
    friends_in_a_direct_conversation,
    get_json,
    group,
    register,
)
from tests.support.moderation import report, resolve, with_role
from tests.support.ws import WsClient


async def listed(client: TestClient, user: User, cid: str) -> dict[str, Any] | None:
    """The conversation as ``user``'s list shows it (None: not in it)."""
    items = (await get_json(client, "/api/v1/conversations?limit=100", user))["items"]
    return next((c for c in items if c["id"] == cid), None)


async def shown(client: TestClient, user: User, cid: str) -> dict[str, Any]:
    """The conversation in ``user``'s list, the same as GET /conversations/{id} shows it."""
    conv = await listed(client, user, cid)
    assert conv is not None
    assert conv == await get_json(client, f"/api/v1/conversations/{cid}", user)
    return conv


async def newest(client: TestClient, user: User, cid: str) -> dict[str, Any]:
    """The newest message as history shows it."""
    page = await get_json(client, f"/api/v1/conversations/{cid}/messages?limit=1", user)
    return page["items"][0]  # type: ignore[no-any-return]


async def rest_send(client: TestClient, user: User, cid: str, text: str) -> dict[str, Any]:
    resp = await client.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=user.headers,
        json={"text": text, "client_id": secrets.token_hex(8)},
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_direct_receipts_follow_read_frames_and_sends(client: TestClient) -> None:
    a, b, cid = await friends_in_a_direct_conversation(client)
    empty = await shown(client, a, cid)
    assert empty["last_message"] is None and empty["last_seq"] == 0
    assert empty["read_seqs"] == {a.id: 0, b.id: 0}

    wa, wb = await WsClient.connect(client, a.access), await WsClient.connect(client, b.access)
    for i in range(3):
        await wa.send(
            {"type": "send", "conversation_id": cid, "client_id": f"m{i}", "text": f"m{i}"}
        )
        await wa.expect("ack")
    for viewer in (a, b):  # the same object for both members, but their own unread counts
        conv = await shown(client, viewer, cid)
        assert conv["last_message"] == await newest(client, viewer, cid)
        assert conv["last_message"]["text"] == "m2" and conv["last_message"]["seq"] == 3
        assert conv["last_message"]["sender_id"] == a.id and not conv["last_message"]["removed"]
        assert conv["read_seqs"] == {a.id: 3, b.id: 0}  # sending reads everything before
        assert conv["read_seqs"][viewer.id] == conv["last_read_seq"]
    assert (await shown(client, b, cid))["unread_count"] == 3

    # The WebSocket `read` frame: forward only, never past the end.
    await wb.send({"type": "read", "conversation_id": cid, "seq": 2})
    assert (await wa.expect("read"))["seq"] == 2
    assert (await shown(client, a, cid))["read_seqs"] == {a.id: 3, b.id: 2}
    await wb.send({"type": "read", "conversation_id": cid, "seq": 99})
    assert (await wa.expect("read"))["seq"] == 3
    await wb.send({"type": "read", "conversation_id": cid, "seq": 1})
    await wa.quiet("read", 0.3)
    assert (await shown(client, a, cid))["read_seqs"] == {a.id: 3, b.id: 3}

    # REST has no read endpoint: a REST send moves its sender's receipt, as a WebSocket one does.
    sent = await rest_send(client, b, cid, "over REST")
    conv = await shown(client, a, cid)
    assert conv["last_message"] == sent == await newest(client, a, cid)
    assert conv["read_seqs"] == {a.id: 3, b.id: 4} and conv["unread_count"] == 1


async def test_group_last_message_and_a_removed_member(client: TestClient) -> None:
    (me, pal, leaver), cid = await group(client, 3, "trio")
    assert (await shown(client, pal, cid))["last_message"] is None
    await rest_send(client, me, cid, "hello all")
    last = await rest_send(client, pal, cid, "hi")
    conv = await shown(client, leaver, cid)
    assert conv["last_message"] == last
    assert conv["read_seqs"] == {me.id: 1, pal.id: 2, leaver.id: 0}
    wl, wp = (
        await WsClient.connect(client, leaver.access),
        await WsClient.connect(client, pal.access),
    )
    await wl.send({"type": "read", "conversation_id": cid, "seq": 2})
    assert (await wp.expect("read"))["user_id"] == leaver.id
    assert (await shown(client, me, cid))["read_seqs"][leaver.id] == 2

    # The creator removes a member: their receipt goes from the others' view, and they no
    # longer get the conversation, nor its messages since.
    removed = await client.delete(
        f"/api/v1/conversations/{cid}/members/{leaver.id}", headers=me.headers
    )
    assert removed.status == 204
    after = await rest_send(client, me, cid, "just us now")
    conv = await shown(client, pal, cid)
    assert conv["read_seqs"] == {me.id: 3, pal.id: 2}
    assert conv["last_message"] == after
    assert {m["id"] for m in conv["members"]} == {me.id, pal.id}
    assert await listed(client, leaver, cid) is None
    await expect_error(
        await client.get(f"/api/v1/conversations/{cid}", headers=leaver.headers), 404, "not_found"
    )
    # A stranger (never a member) gets nothing either.
    stranger = await register(client)
    await expect_error(
        await client.get(f"/api/v1/conversations/{cid}", headers=stranger.headers),
        404,
        "not_found",
    )


async def test_a_removed_last_message_is_a_tombstone(client: TestClient) -> None:
    a, b, cid = await friends_in_a_direct_conversation(client)
    await rest_send(client, a, cid, "fine")
    bad = await rest_send(client, a, cid, "zqtombstone marker")
    moderator = await with_role(client, "moderator")
    made = await report(client, b, "message", bad["id"])
    await resolve(client, moderator, made["id"], "remove")
    for viewer in (a, b):
        conv = await shown(client, viewer, cid)
        assert conv["last_message"] == await newest(client, viewer, cid)
        assert conv["last_message"]["id"] == bad["id"] and conv["last_message"]["seq"] == 2
        assert conv["last_message"]["removed"] and conv["last_message"]["text"] == ""
        resp = await client.get("/api/v1/conversations", headers=viewer.headers)
        assert "zqtombstone" not in await resp.text()


async def test_receipts_of_a_big_group_are_its_furthest_readers(client: TestClient) -> None:
    users, cid = await group(client, 55, "crowd")
    creator, members = users[0], users[1:]
    await rest_send(client, creator, cid, "welcome")
    for n, member in enumerate(members[:3]):
        await rest_send(client, member, cid, f"hi {n}")  # each reads up to their own send
    conv = await shown(client, members[-1], cid)
    assert len(conv["members"]) == 55
    reads = conv["read_seqs"]
    assert len(reads) == 50  # READERS_SHOWN: the furthest readers, then the oldest accounts
    assert {uid: reads[uid] for uid in (creator.id, *(m.id for m in members[:3]))} == {
        creator.id: 1,
        members[0].id: 2,
        members[1].id: 3,
        members[2].id: 4,
    }
    zeros = sorted((u.id for u in members[3:]), key=int)[:46]
    assert {uid for uid, seq in reads.items() if seq == 0} == set(zeros)


async def test_a_new_friend_group_member_gets_the_preview_at_once(client: TestClient) -> None:
    (me, pal), cid = await group(client, 2, "pair")
    await rest_send(client, pal, cid, "before you came")
    late = await register(client)
    await befriend(client, me, late)
    resp = await client.post(
        f"/api/v1/conversations/{cid}/members", headers=me.headers, json={"user_ids": [late.id]}
    )
    assert resp.status == 200
    added = await resp.json()
    assert added["last_message"]["text"] == "before you came"  # POST answers the object too
    conv = await shown(client, late, cid)
    assert conv["last_message"] == added["last_message"]
    # A member joins having read up to where the conversation was (unread_count starts at 0).
    assert conv["read_seqs"][late.id] == 1 and conv["unread_count"] == 0
