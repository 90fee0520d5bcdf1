"""Two nodes, one cluster: routing to the conversation owner, fan-out across nodes, failover."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.cluster.inbox import Answer
from agora.cluster.nodes import name_of, rendezvous
from agora.cluster.router import _answer_result, conversation_key
from agora.config import ClusterConfig
from agora.errors import AppError, ErrorCode
from agora.server import keys
from tests.conftest import JWT_SECRET
from tests.support.api import PASSWORD, User, befriend, create_post, group, register
from tests.support.node import NodeProcess
from tests.support.services import ServiceSet
from tests.support.ws import WsClient

FAST = ClusterConfig(heartbeat=0.3, node_timeout=1.5, answer_timeout=3.0, presence_debounce=0.5)


async def _two_nodes(make_client: Any) -> tuple[TestClient, TestClient]:
    n1 = await make_client(node_id="alpha", cluster=FAST)
    n2 = await make_client(node_id="beta", cluster=FAST)
    for _ in range(50):  # both see both
        if all(len(n.server.app[keys.NODES].live) == 2 for n in (n1, n2)):
            break
        await asyncio.sleep(0.1)
    assert n1.server.app[keys.NODES].live == n2.server.app[keys.NODES].live
    assert {name_of(life) for life in n1.server.app[keys.NODES].live} == {"alpha", "beta"}
    return n1, n2


def _check_stream(ws: WsClient, total: int) -> None:
    """Every message exactly once after dropping duplicates by id, in seq order, from 1."""
    seen: dict[str, int] = {}
    order: list[int] = []
    for frame in ws.of("message"):
        message = frame["message"]
        if message["id"] not in seen:
            seen[message["id"]] = message["seq"]
            order.append(message["seq"])
    assert order == list(range(1, total + 1)), order[:20]


async def test_members_on_both_nodes_and_senders_on_both(make_client, database_url: str) -> None:  # type: ignore[no-untyped-def]
    n1, n2 = await _two_nodes(make_client)
    users, cid = await group(n1, 6)
    owner = n1.server.app[keys.ROUTER].owner_of(int(cid))
    assert owner == n2.server.app[keys.ROUTER].owner_of(int(cid))
    # Members spread over both nodes; some with a session on each.
    sockets = []
    for i, user in enumerate(users):
        sockets.append(await WsClient.connect((n1, n2)[i % 2], user.access))
        if i < 2:
            sockets.append(await WsClient.connect((n2, n1)[i % 2], user.access))
    senders = [(sockets[0], "a"), (sockets[1], "b"), (sockets[3], "c"), (sockets[4], "d")]
    per = 30

    async def blast(ws: WsClient, tag: str) -> None:
        for n in range(per):
            await ws.send(
                {
                    "type": "send",
                    "conversation_id": cid,
                    "client_id": f"{tag}{n}",
                    "text": f"{tag} says {n}",
                }
            )

    await asyncio.gather(*[blast(ws, tag) for ws, tag in senders])
    total = per * len(senders)
    for ws, _ in senders:
        acks = [await ws.expect("ack", timeout=10) for _ in range(per)]
        assert len({a["seq"] for a in acks}) == per
    for ws in sockets:
        while len({f["message"]["id"] for f in ws.of("message")}) < total:
            await ws.expect("message", timeout=10)
        _check_stream(ws, total)
    conn = await asyncpg.connect(database_url)
    try:
        seqs = [
            r["seq"]
            for r in await conn.fetch(
                "SELECT seq FROM chat.messages WHERE conversation_id = $1 ORDER BY seq", int(cid)
            )
        ]
    finally:
        await conn.close()
    assert seqs == list(range(1, total + 1))
    # Only the owner node ran an actor for the conversation.
    owner_app = (n1 if name_of(owner) == "alpha" else n2).server.app
    other_app = (n2 if name_of(owner) == "alpha" else n1).server.app
    assert len(owner_app[keys.CONVERSATIONS]) == 1 and len(other_app[keys.CONVERSATIONS]) == 0


async def test_revoked_login_closes_sessions_on_both_nodes(make_client) -> None:  # type: ignore[no-untyped-def]
    n1, n2 = await _two_nodes(make_client)
    user = await register(n1)
    on1, on2 = await WsClient.connect(n1, user.access), await WsClient.connect(n2, user.access)
    assert (
        await n2.post("/api/v1/auth/logout", json={"refresh_token": user.refresh})
    ).status == 204
    assert await on1.closed(timeout=5) == 4001
    assert await on2.closed(timeout=5) == 4001


async def test_typing_and_receipts_cross_nodes(make_client) -> None:  # type: ignore[no-untyped-def]
    n1, n2 = await _two_nodes(make_client)
    (a, b), cid = await group(n1, 2)
    wa, wb = await WsClient.connect(n1, a.access), await WsClient.connect(n2, b.access)
    await wa.send({"type": "typing", "conversation_id": cid})
    assert (await wb.expect("typing"))["user_id"] == a.id
    await wa.send({"type": "send", "conversation_id": cid, "client_id": "x", "text": "hi"})
    await wb.expect("message")
    await wb.send({"type": "read", "conversation_id": cid, "seq": 1})
    assert (await wa.expect("read"))["user_id"] == b.id


async def test_online_while_any_session_on_any_node_is_open(make_client) -> None:  # type: ignore[no-untyped-def]
    n1, n2 = await _two_nodes(make_client)
    watcher, roamer = await register(n1), await register(n1)
    await befriend(n1, watcher, roamer)
    ww = await WsClient.connect(n1, watcher.access)
    on_one, on_two = (
        await WsClient.connect(n1, roamer.access),
        await WsClient.connect(n2, roamer.access),
    )
    await ww.expect("presence", where=lambda f: f["user_id"] == roamer.id)
    await on_two.close()  # still online on the other node: no "offline", past the debounce
    await ww.quiet("presence", 1.5)
    await on_one.close()
    offline = await ww.expect("presence", timeout=5, where=lambda f: f["user_id"] == roamer.id)
    assert offline["status"] == "offline"
    assert [f["status"] for f in ww.of("presence")] == ["online", "offline"]


async def test_a_new_session_is_told_which_friends_are_online_on_any_node(make_client) -> None:  # type: ignore[no-untyped-def]
    n1, n2 = await _two_nodes(make_client)
    me, here, there, away, stranger = [await register(n1) for _ in range(5)]
    for friend in (here, there, away):
        await befriend(n1, me, friend)
    others = [
        await WsClient.connect(n1, here.access),
        await WsClient.connect(n2, there.access),
        await WsClient.connect(n2, stranger.access),  # online, but no friend of mine
    ]
    for node in (n1, n2):  # their own "online" announcements are over (else I may hear both)
        await node.server.app[keys.PRESENCE].idle()
    mine = await WsClient.connect(n1, me.access)
    assert mine.frames[0]["type"] == "ready"
    snapshot = [await mine.expect("presence", timeout=2) for _ in range(2)]
    assert {(f["user_id"], f["status"]) for f in snapshot} == {
        (here.id, "online"),
        (there.id, "online"),
    }
    await mine.quiet("presence", 0.5)  # nothing for the offline friend or the stranger
    # After the snapshot, changes come as before: a friend arriving is told once.
    late = await WsClient.connect(n2, away.access)
    arrived = await mine.expect("presence", where=lambda f: f["user_id"] == away.id)
    assert arrived["status"] == "online"
    await mine.quiet("presence", 0.5)
    for ws in [*others, late, mine]:
        await ws.close()


async def test_a_new_post_reaches_online_friends_on_any_node_after_its_answer(make_client) -> None:  # type: ignore[no-untyped-def]
    # The post frames go out in the background once the author has the 201 (agora.tasks
    # .Background): every online friend still gets one, on either node; strangers and the
    # author get none, and a private post reaches nobody.
    n1, n2 = await _two_nodes(make_client)
    author, near, far, stranger = [await register(n1) for _ in range(4)]
    for friend in (near, far):
        await befriend(n1, author, friend)
    sockets = {
        "near": await WsClient.connect(n1, near.access),
        "far": await WsClient.connect(n2, far.access),
        "stranger": await WsClient.connect(n2, stranger.access),
        "author": await WsClient.connect(n1, author.access),
    }
    post = await create_post(n1, author, "live", visibility="friends")
    for name in ("near", "far"):
        frame = await sockets[name].expect("post", timeout=5)
        assert frame["post"]["id"] == post["id"] and frame["post"]["text"] == "live"
    await create_post(n1, author, "just me", visibility="private")
    for ws in sockets.values():
        await ws.quiet("post", 0.5)
    for ws in sockets.values():
        await ws.close()


async def test_a_node_leaving_hands_its_offline_checks_to_the_others(make_client) -> None:  # type: ignore[no-untyped-def]
    n1, n2 = await _two_nodes(make_client)
    watcher, gone, moved = [await register(n1) for _ in range(3)]
    for friend in (gone, moved):
        await befriend(n1, watcher, friend)
    ww = await WsClient.connect(n1, watcher.access)
    await WsClient.connect(n2, gone.access)
    await WsClient.connect(n2, moved.access)
    for user in (gone, moved):
        await ww.expect("presence", where=lambda f, u=user: f["user_id"] == u.id)
    await n2.server.close()  # a graceful leave: its sessions close with 1001
    await WsClient.connect(n1, moved.access)  # reconnects elsewhere inside the debounce
    await ww.expect(
        "presence", timeout=5, where=lambda f: f["user_id"] == gone.id and f["status"] == "offline"
    )
    await ww.quiet("presence", 1.0)  # and "moved" shows no blip
    assert [f["user_id"] for f in ww.of("presence") if f["status"] == "offline"] == [gone.id]


# -- real processes: kill the owner ---------------------------------------------------------


class Sender:
    """A client that keeps sending numbered messages and retries until each is acked, moving
    to the surviving node when its own dies (what a real client's outbox does)."""

    def __init__(
        self, name: str, user: User, cid: str, urls: list[str], http: aiohttp.ClientSession
    ) -> None:
        self.name, self.user, self.cid, self.urls, self.http = name, user, cid, urls, http
        self.acked: dict[str, int] = {}
        self.ws: WsClient | None = None

    async def connect(self) -> None:
        for url in itertools.cycle(self.urls):
            try:
                self.ws = await WsClient.connect(url, self.user.access, session=self.http)
                return
            except (aiohttp.ClientError, AssertionError, OSError):
                await asyncio.sleep(0.2)

    async def run(self, count: int) -> None:
        await self.connect()
        for n in range(count):
            client_id = f"{self.name}-{n}"
            while client_id not in self.acked:
                assert self.ws is not None
                try:
                    await self.ws.send(
                        {
                            "type": "send",
                            "conversation_id": self.cid,
                            "client_id": client_id,
                            "text": f"{self.name} {n}",
                        }
                    )
                    frame = await self._answer(client_id)
                except (ConnectionError, AssertionError, aiohttp.ClientError, RuntimeError):
                    await self.connect()  # the node died: reconnect, resend the same client_id
                    continue
                if frame["type"] == "ack":
                    self.acked[client_id] = frame["seq"]
                else:
                    assert frame.get("retry"), frame
                    await asyncio.sleep(0.2)
            await asyncio.sleep(random.uniform(0, 0.02))

    async def _answer(self, client_id: str) -> dict[str, Any]:
        assert self.ws is not None
        ws = self.ws
        deadline = asyncio.get_running_loop().time() + 15
        while asyncio.get_running_loop().time() < deadline:
            for frame in ws.frames:
                mine = client_id in (frame.get("client_id"), frame.get("ref"))
                if mine and frame["type"] in ("ack", "error") and not frame.get("_seen"):
                    frame["_seen"] = True
                    return frame
            if ws.ws.closed:
                raise ConnectionError("closed")
            await asyncio.sleep(0.02)
        raise AssertionError(f"no answer for {client_id}")


@pytest.mark.slow
async def test_killing_the_owner_mid_stream_loses_no_acked_message(
    tmp_path: Path, services: ServiceSet, database_url: str, redis_prefix: str
) -> None:
    env = {
        "AGORA_DATABASE_URL": database_url,
        "AGORA_REDIS_URL": services.redis_url,
        "AGORA_REDIS_PREFIX": redis_prefix + "kill:",
        "AGORA_JWT_SECRET": JWT_SECRET,
        "AGORA_WS_RATE_LIMIT": "0",
        "AGORA_CLUSTER_HEARTBEAT": "0.3",
        "AGORA_CLUSTER_NODE_TIMEOUT": "2",
        "AGORA_PRESENCE_DEBOUNCE": "0.5",
        "AGORA_LOG_LEVEL": "WARNING",
    }
    nodes = {name: NodeProcess({**env, "AGORA_NODE_ID": name}, tmp_path) for name in ("n1", "n2")}
    for node in nodes.values():
        node.start()
    try:
        async with aiohttp.ClientSession() as http:
            base = nodes["n1"].url

            async def make_user() -> User:
                from tests.support.api import unique

                name = unique("k")
                resp = await http.post(
                    f"{base}/api/v1/auth/register",
                    json={"username": name, "email": f"{name}@example.test", "password": PASSWORD},
                )
                return User(await resp.json())

            users = [await make_user() for _ in range(5)]
            for other in users[1:]:
                r = await http.post(
                    f"{base}/api/v1/friends/requests",
                    headers=users[0].headers,
                    json={"user_id": other.id},
                )
                rid = (await r.json())["id"]
                await http.post(
                    f"{base}/api/v1/friends/requests/{rid}/accept", headers=other.headers
                )
            resp = await http.post(
                f"{base}/api/v1/conversations",
                headers=users[0].headers,
                json={"member_ids": [u.id for u in users[1:]], "title": "k"},
            )
            cid = (await resp.json())["id"]
            owner = rendezvous(["n1", "n2"], conversation_key(int(cid)))
            survivor = "n2" if owner == "n1" else "n1"
            urls_owner_first = [nodes[owner].url, nodes[survivor].url]
            urls_survivor_first = [nodes[survivor].url, nodes[owner].url]
            # A listener that lives only on the doomed node, and a friend watching it.
            watcher = await WsClient.connect(nodes[survivor].url, users[0].access, session=http)
            await WsClient.connect(nodes[owner].url, users[4].access, session=http)
            await watcher.expect(
                "presence", where=lambda f: f["user_id"] == users[4].id and f["status"] == "online"
            )

            senders = [
                Sender(
                    f"s{i}", users[i], cid, urls_owner_first if i % 2 else urls_survivor_first, http
                )
                for i in range(4)
            ]
            per = 40
            runs = [asyncio.create_task(s.run(per)) for s in senders]
            while sum(len(s.acked) for s in senders) < 30:
                await asyncio.sleep(0.05)
            assert nodes[owner].proc is not None
            nodes[owner].proc.send_signal(signal.SIGKILL)  # mid-stream
            nodes[owner].proc.wait()
            await asyncio.wait_for(asyncio.gather(*runs), 120)

            acked = {cid_: seq for s in senders for cid_, seq in s.acked.items()}
            assert len(acked) == per * len(senders)
            # Its presence is cleared: the friend hears "offline" within the node timeout.
            offline = await watcher.expect(
                "presence", timeout=10, where=lambda f: f["user_id"] == users[4].id
            )
            assert offline["status"] == "offline"
            # A reconnecting client syncs everything from the survivor.
            await watcher.send({"type": "sync", "conversation_id": cid, "after_seq": 0})
            synced = await watcher.expect("synced", timeout=10)
            by_id = {f["message"]["id"]: f["message"] for f in watcher.of("message")}
            assert synced["last_seq"] == len(acked)
            assert sorted(m["seq"] for m in by_id.values()) == list(range(1, len(acked) + 1))
            await watcher.close()

        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT client_id, seq FROM chat.messages WHERE conversation_id = $1", int(cid)
            )
        finally:
            await conn.close()
        stored = {r["client_id"]: r["seq"] for r in rows}
        assert len(rows) == len(stored) == len(acked)  # no duplicate stored
        assert stored == acked  # every acked message stored, with the seq its ack named
        assert sorted(stored.values()) == list(range(1, len(acked) + 1))
    finally:
        for node in nodes.values():
            node.kill()


def test_an_answer_this_node_cannot_read_still_answers() -> None:
    # A node of another version may send an error code or a body this one does not know.
    odd = _answer_result(Answer(1, False, code="from_the_future", message="?"))
    assert isinstance(odd, AppError) and odd.code is ErrorCode.INTERNAL_ERROR
    garbled = _answer_result(Answer(2, True, body=b"\xc1"))
    assert isinstance(garbled, AppError)
    known = _answer_result(Answer(3, False, code="forbidden", message="no"))
    assert isinstance(known, AppError) and known.code is ErrorCode.FORBIDDEN
