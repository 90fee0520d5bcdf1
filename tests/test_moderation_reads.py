"""Removed and suspended content is absent from every read path.

The table below names every GET endpoint of the API: either the URLs that show content (each
is read after a moderator removed a post, a comment and a message and suspended an account,
and must show none of it) or why the path shows no content. A GET endpoint added without an
entry fails the test, so nobody adds a read path without deciding what it shows.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp.test_utils import TestClient

from agora.server import keys
from tests.support.api import User, befriend, create_post, register, unique
from tests.support.moderation import (
    API,
    notification,
    report,
    resolve,
    suspend,
    with_role,
)
from tests.support.ws import WsClient


def marker(kind: str) -> str:
    """A word found nowhere else (letters only: one search token)."""
    return f"zq{kind}" + "".join(random.choices(string.ascii_lowercase, k=10))


@dataclass
class World:
    viewer: User
    suspended: User
    author: User
    conversation: str
    removed_post: str
    suspended_post: str
    kept_post: str
    markers: dict[str, str]


@dataclass(frozen=True)
class Reads:
    """The URLs (under /api/v1) that read a path with content; ``shows_members``: the
    suspended account may be listed as a member (not its content: messages are tombstones)."""

    urls: Callable[[World], list[str]]
    shows_members: bool = False


CONTENT: dict[str, Reads] = {
    "/users/{id}": Reads(lambda w: [f"/users/{w.suspended.id}", f"/users/{w.author.id}"]),
    "/users/relationships": Reads(
        lambda w: [f"/users/relationships?ids={w.suspended.id},{w.author.id}"]
    ),
    "/users/{id}/friends": Reads(
        lambda w: [f"/users/{w.viewer.id}/friends", f"/users/{w.author.id}/friends"]
    ),
    "/friends": Reads(lambda w: ["/friends"]),
    "/friends/requests": Reads(
        lambda w: ["/friends/requests?direction=incoming", "/friends/requests?direction=outgoing"]
    ),
    "/blocks": Reads(lambda w: ["/blocks"]),
    "/posts/{id}": Reads(
        lambda w: [f"/posts/{p}" for p in (w.removed_post, w.suspended_post, w.kept_post)]
    ),
    "/users/{id}/posts": Reads(
        lambda w: [f"/users/{w.suspended.id}/posts", f"/users/{w.author.id}/posts"]
    ),
    "/posts/{id}/comments": Reads(lambda w: [f"/posts/{w.kept_post}/comments"]),
    "/feed": Reads(lambda w: ["/feed", "/feed?rank=top"]),
    "/conversations": Reads(lambda w: ["/conversations"], shows_members=True),
    "/conversations/{id}": Reads(
        lambda w: [f"/conversations/{w.conversation}"], shows_members=True
    ),
    "/conversations/{id}/messages": Reads(
        lambda w: [
            f"/conversations/{w.conversation}/messages?after_seq=0",
            f"/conversations/{w.conversation}/messages",
        ],
        shows_members=True,
    ),
    "/notifications": Reads(lambda w: ["/notifications", "/notifications?unread=true"]),
    "/search": Reads(
        lambda w: [
            *(f"/search?type=posts&q={m}" for m in w.markers.values()),
            *(f"/search?type=messages&q={m}" for m in w.markers.values()),
            f"/search?type=users&q={w.suspended.username}",
        ]
    ),
}
NO_CONTENT = {
    "/users/me": "the caller's own account",
    "/reports/{id}": "the caller's own report and its outcome, no copy of the subject",
    "/notifications/settings": "the caller's preferences",
    "/admin/reports": "the moderators' queue shows what was reported, by design (403 to users)",
    "/admin/audit": "the audit log keeps a copy of what was removed, by design (403 to users)",
    "/admin/stats": "counts only, for admins",
}


async def test_every_get_path_is_in_the_table(client: TestClient) -> None:
    mounted = {
        ep.path.removeprefix(API) for ep in client.server.app[keys.ENDPOINTS] if ep.method == "GET"
    }
    missing = mounted - set(CONTENT) - set(NO_CONTENT)
    assert not missing, f"GET paths with no entry in CONTENT or NO_CONTENT: {sorted(missing)}"


async def _world(client: TestClient, moderator: User) -> World:
    viewer = await register(client)
    suspended = await register(client, unique("zqsusp"))
    author = await register(client)
    for a, b in ((viewer, suspended), (viewer, author), (suspended, author)):
        await befriend(client, a, b)
    resp = await client.post(
        f"{API}/conversations",
        headers=viewer.headers,
        json={"member_ids": [suspended.id, author.id], "title": "the group"},
    )
    conversation = (await resp.json())["id"]
    m = {
        k: marker(k)
        for k in ("rmpost", "rmcomment", "rmmessage", "suspost", "suscomment", "susmessage")
    }
    removed = await create_post(client, author, f"{m['rmpost']} @{viewer.username}", "public")
    kept = await create_post(client, author, "an ordinary post", "public")
    own = await create_post(client, suspended, f"{m['suspost']} @{viewer.username}", "public")

    async def comment(user: User, text: str) -> str:
        resp = await client.post(
            f"{API}/posts/{kept['id']}/comments", headers=user.headers, json={"text": text}
        )
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])

    async def message(user: User, text: str) -> str:
        resp = await client.post(
            f"{API}/conversations/{conversation}/messages",
            headers=user.headers,
            json={"text": text, "client_id": unique("c")},
        )
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])

    removed_comment = await comment(author, m["rmcomment"])
    await comment(suspended, m["suscomment"])
    removed_message = await message(author, m["rmmessage"])
    await message(suspended, m["susmessage"])
    await comment(viewer, f"hello @{suspended.username}")  # a mention of the suspended user
    # The viewer's notifications of both mentions exist before the moderation.
    await notification(client, viewer, "mention")
    for _ in range(100):
        resp = await client.get(f"{API}/notifications", headers=viewer.headers)
        if len([n for n in (await resp.json())["items"] if n["kind"] == "mention"]) >= 2:
            break
        await asyncio.sleep(0.1)
    world = World(viewer, suspended, author, conversation, removed["id"], own["id"], kept["id"], m)
    # Everything is readable first (so the test below is not vacuous), and the viewer's feed
    # pages are now in the node's page cache.
    seen = ""
    for reads in CONTENT.values():
        for url in reads.urls(world):
            resp = await client.get(f"{API}{url}", headers=viewer.headers)
            seen += await resp.text()
    assert all(v in seen for v in m.values()), [k for k, v in m.items() if v not in seen]

    # The suspension first, alone: the feed pages cached above must go with it (the removals
    # below would drop them anyway, as the removed post is on them).
    await suspend(client, moderator, suspended.id)
    await assert_clean(client, world, ["/feed"], ["suspost"])
    for kind, subject in (
        ("post", removed["id"]),
        ("comment", removed_comment),
        ("message", removed_message),
    ):
        made = await report(client, viewer, kind, subject)
        await resolve(client, moderator, made["id"], "remove")
    return world


async def assert_clean(
    client: TestClient, w: World, templates: list[str], kinds: list[str] | None = None
) -> None:
    """None of the markers (of ``kinds``, default all) on the URLs of ``templates``."""
    markers = {k: v for k, v in w.markers.items() if kinds is None or k in kinds}
    for template in templates:
        reads = CONTENT[template]
        for url in reads.urls(w):
            resp = await client.get(f"{API}{url}", headers=w.viewer.headers)
            assert resp.status in (200, 404), (url, resp.status, await resp.text())
            body = await resp.text()
            leaked = [k for k, v in markers.items() if v in body]
            assert not leaked, (template, url, leaked)
            if not reads.shows_members:
                assert w.suspended.id not in body, (template, url, "the suspended account")


async def test_removed_and_suspended_content_is_on_no_read_path(client: TestClient) -> None:
    moderator = await with_role(client, "moderator")
    w = await _world(client, moderator)
    await assert_clean(client, w, list(CONTENT))
    # Suspended: their profile and post list are gone, not only emptied.
    for url in (f"/users/{w.suspended.id}", f"/users/{w.suspended.id}/posts"):
        assert (await client.get(f"{API}{url}", headers=w.viewer.headers)).status == 404

    # sync over the WebSocket: the removed message and the suspended sender's are tombstones.
    ws = await WsClient.connect(client, w.viewer.access)
    try:
        await ws.send({"type": "sync", "conversation_id": w.conversation, "after_seq": 0})
        await ws.expect("synced")
        texts = " ".join(f["message"]["text"] for f in ws.of("message"))
        assert not [k for k, v in w.markers.items() if v in texts]
        assert sum(f["message"]["removed"] for f in ws.of("message")) == 2
    finally:
        await ws.close()
