"""The WebSocket protocol on one node: auth, chat, typing, receipts, sync, presence, limits."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.config import ClusterConfig, Config, WebSocketConfig
from agora.server import keys
from tests.support.api import (
    User,
    befriend,
    block,
    create_post,
    expect_error,
    friends_in_a_direct_conversation,
    get_json,
    register,
)
from tests.support.ws import WsClient

FAST = ClusterConfig(heartbeat=0.3, node_timeout=1.5, answer_timeout=3.0, presence_debounce=0.6)


@pytest.fixture
async def node(make_client, config: Config) -> TestClient:  # type: ignore[no-untyped-def]
    return await make_client(cluster=FAST)


async def test_bad_tokens_get_401_before_the_upgrade(node: TestClient) -> None:
    for path in ("/ws", "/ws?token=", "/ws?token=garbage"):
        resp = await node.get(
            path,
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        await expect_error(resp, 401, "unauthorized")


async def test_ready_then_send_ack_and_fan_out(node: TestClient, database_url: str) -> None:
    a, b, cid = await friends_in_a_direct_conversation(node)
    a1 = await WsClient.connect(node, a.access)
    a2 = await WsClient.connect(node, a.access)
    b1 = await WsClient.connect(node, b.access)
    assert a1.of("ready")[0]["user_id"] == a.id and a1.of("ready")[0]["session_id"]
    await a1.send({"type": "send", "conversation_id": cid, "client_id": "c-1", "text": "hello"})
    ack = await a1.expect("ack")
    assert ack["client_id"] == "c-1" and ack["seq"] == 1
    for ws in (a1, a2, b1):  # every member's every session, the sender's too
        msg = (await ws.expect("message"))["message"]
        assert msg["id"] == ack["message_id"] and msg["seq"] == 1 and msg["text"] == "hello"
        assert msg["sender_id"] == a.id and msg["client_id"] == "c-1"
    # The ack came after the commit: the row is there.
    conn = await asyncpg.connect(database_url)
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM chat.messages WHERE conversation_id = $1", int(cid)
            )
            == 1
        )
        # Resending the client_id yields the same ack and no second message.
        await a1.send({"type": "send", "conversation_id": cid, "client_id": "c-1", "text": "hello"})
        again = await a1.expect("ack")
        assert again == {**ack, "_seen": True}
        await b1.quiet("message", 0.3)
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM chat.messages WHERE conversation_id = $1", int(cid)
            )
            == 1
        )
    finally:
        await conn.close()


async def test_bad_frames_get_error_frames_and_the_connection_stays(node: TestClient) -> None:
    a, _, cid = await friends_in_a_direct_conversation(node)
    ws = await WsClient.connect(node, a.access)
    cases = [
        ("not json", "not valid JSON"),
        (json.dumps({"type": "shout"}), "type"),
        (json.dumps({"type": "send", "conversation_id": cid, "text": "x"}), "client_id"),
        (
            json.dumps({"type": "send", "conversation_id": 5, "client_id": "a", "text": "x"}),
            "conversation_id",
        ),
        (
            json.dumps(
                {"type": "send", "conversation_id": cid, "client_id": "big", "text": "x" * 4001}
            ),
            "4000",
        ),
        (json.dumps({"type": "read", "conversation_id": cid, "seq": -1}), "seq"),
        (json.dumps([1, 2]), ""),
        # Past the id space (and a bigint): invalid, never an internal error.
        (json.dumps({"type": "sync", "conversation_id": "9" * 19, "after_seq": 0}), "conversation"),
        (json.dumps({"type": "typing", "conversation_id": "9" * 17}), "conversation_id"),
        (
            json.dumps({"type": "send", "conversation_id": cid, "client_id": "n", "text": "a\0"}),
            "text must not contain NUL",
        ),
        ('{"type": "ping", "x": ' + "[" * 30_000 + "]" * 30_000 + "}", "nested too deeply"),
        ('{"type": "ping", "x": ' + "[" * 30_000, "nested too deeply"),  # and cut short
    ]
    for raw, needle in cases:
        await ws.ws.send_str(raw)
        err = await ws.expect("error")
        assert err["code"] == "validation_error" and needle in err["message"], (raw[:40], err)
    big = ws.of("error")[4]
    assert big["ref"] == "big"
    await ws.ws.send_bytes(b'{"type":"ping"}')
    assert "text frames" in (await ws.expect("error"))["message"]
    await ws.send({"type": "ping"})
    await ws.expect("pong")
    assert not ws.ws.closed


async def test_oversized_frame_closes_with_1009(node: TestClient) -> None:
    a = await register(node)
    ws = await WsClient.connect(node, a.access)
    await ws.ws.send_str(json.dumps({"type": "ping", "pad": "x" * (64 * 1024)}))
    assert await ws.closed() == 1009


async def test_sessions_per_account_are_capped_before_the_upgrade(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(ws=WebSocketConfig(max_sessions_per_user=2))
    a, b = await register(client), await register(client)
    first = await WsClient.connect(client, a.access)
    await WsClient.connect(client, a.access)
    resp = await client.get(f"/ws?token={a.access}")
    await expect_error(resp, 429, "rate_limited")
    assert resp.headers["Retry-After"] == "5"
    await WsClient.connect(client, b.access)  # another account is not affected
    await first.close()
    for _ in range(50):  # the slot frees once the session has ended
        if client.server.app[keys.SESSIONS].count_of(int(a.id)) < 2:
            break
        await asyncio.sleep(0.02)
    await WsClient.connect(client, a.access)
    # A burst of upgrades cannot slip past the limit while the first ones are in flight.
    c = await register(client)
    tries = await asyncio.gather(
        *(client.ws_connect(f"/ws?token={c.access}") for _ in range(12)), return_exceptions=True
    )
    refused = [t for t in tries if isinstance(t, aiohttp.WSServerHandshakeError)]
    assert len(tries) - len(refused) == 2 and all(r.status == 429 for r in refused), tries


async def test_too_fast_closes_with_1008(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(ws=WebSocketConfig(rate_limit=5, rate_burst=10), cluster=FAST)
    a = await register(client)
    ws = await WsClient.connect(client, a.access)
    for _ in range(40):
        if ws.ws.closed:
            break
        await ws.send({"type": "ping"})
    assert await ws.closed() == 1008
    # A client within its sustained rate is fine, well past the burst: 4/s for 4 s is 16 frames
    # against a burst of 10 at 5/s.
    calm = await WsClient.connect(client, a.access)
    for _ in range(16):
        await calm.send({"type": "ping"})
        await asyncio.sleep(0.25)
    for _ in range(16):
        await calm.expect("pong")
    assert not calm.ws.closed


async def test_typing_is_announced_once_a_second_and_says_when_it_ends(node: TestClient) -> None:
    a, b, cid = await friends_in_a_direct_conversation(node)
    wa, wb = await WsClient.connect(node, a.access), await WsClient.connect(node, b.access)
    for _ in range(3):  # a client repeats `typing` while the user types
        await wa.send({"type": "typing", "conversation_id": cid})
    first = await wb.expect("typing")
    assert first == {**first, "user_id": a.id, "conversation_id": cid, "expires_in": 5.0}
    await wb.quiet("typing", 0.5)  # the repeats inside a second are not news
    assert wa.of("typing") == []  # nor told to the typist
    await wa.send({"type": "send", "conversation_id": cid, "client_id": "t1", "text": "hi"})
    await wb.expect("message")
    await wa.send({"type": "typing", "conversation_id": cid})  # typing again after sending
    assert (await wb.expect("typing", timeout=0.5))["user_id"] == a.id


async def test_non_members_cannot_send_read_sync_or_see_typing(node: TestClient) -> None:
    a, b, cid = await friends_in_a_direct_conversation(node)
    outsider = await register(node)
    await befriend(node, a, outsider)
    wa, wb, wo = [await WsClient.connect(node, u.access) for u in (a, b, outsider)]
    for frame in (
        {"type": "send", "conversation_id": cid, "client_id": "x", "text": "hi"},
        {"type": "typing", "conversation_id": cid},
        {"type": "read", "conversation_id": cid, "seq": 1},
        {"type": "sync", "conversation_id": cid, "after_seq": 0},
    ):
        await wo.send(frame)
        err = await wo.expect("error")
        assert err["code"] == "not_found", (frame, err)
    await wa.send({"type": "typing", "conversation_id": cid})
    typing = await wb.expect("typing")
    assert typing["conversation_id"] == cid and typing["user_id"] == a.id
    await wo.quiet("typing", 0.3)
    await wa.quiet("typing", 0.1)  # not echoed to the typist
    await expect_error(
        await node.get(f"/api/v1/conversations/{cid}/messages", headers=outsider.headers),
        404,
        "not_found",
    )
    await expect_error(
        await node.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=outsider.headers,
            json={"text": "hi", "client_id": "r1"},
        ),
        404,
        "not_found",
    )


async def test_read_receipts_and_unread_counts(node: TestClient) -> None:
    a, b, cid = await friends_in_a_direct_conversation(node)
    wa, wb = await WsClient.connect(node, a.access), await WsClient.connect(node, b.access)
    for i in range(3):
        await wa.send(
            {"type": "send", "conversation_id": cid, "client_id": f"m{i}", "text": str(i)}
        )
        await wa.expect("ack")
    listed = await get_json(node, "/api/v1/conversations", b)
    mine = [c for c in listed["items"] if c["id"] == cid][0]
    assert mine["unread_count"] == 3 and mine["last_seq"] == 3
    sender_view = [
        c for c in (await get_json(node, "/api/v1/conversations", a))["items"] if c["id"] == cid
    ][0]
    assert sender_view["unread_count"] == 0  # sending reads everything before
    await wb.send({"type": "read", "conversation_id": cid, "seq": 2})
    read = await wa.expect("read")
    assert read["user_id"] == b.id and read["seq"] == 2
    # Never past the end, never backwards.
    await wb.send({"type": "read", "conversation_id": cid, "seq": 99})
    assert (await wa.expect("read"))["seq"] == 3
    await wb.send({"type": "read", "conversation_id": cid, "seq": 1})
    await wa.quiet("read", 0.3)
    mine = [
        c for c in (await get_json(node, "/api/v1/conversations", b))["items"] if c["id"] == cid
    ][0]
    assert mine["unread_count"] == 0


async def test_sync_replays_missed_messages_in_order(node: TestClient) -> None:
    a, b, cid = await friends_in_a_direct_conversation(node)
    wa = await WsClient.connect(node, a.access)
    for i in range(7):
        await wa.send(
            {"type": "send", "conversation_id": cid, "client_id": f"s{i}", "text": f"t{i}"}
        )
    for _ in range(7):
        await wa.expect("ack")
    wb = await WsClient.connect(node, b.access)
    await wb.send({"type": "sync", "conversation_id": cid, "after_seq": 3})
    synced = await wb.expect("synced")
    assert synced["last_seq"] == 7
    assert [m["message"]["seq"] for m in wb.of("message")] == [4, 5, 6, 7]


async def test_presence_transitions_are_announced_once_and_debounced(node: TestClient) -> None:
    a, b, _ = await friends_in_a_direct_conversation(node)
    stranger = await register(node)
    wa = await WsClient.connect(node, a.access)
    ws_stranger = await WsClient.connect(node, stranger.access)
    wb1 = await WsClient.connect(node, b.access)
    online = await wa.expect("presence", where=lambda f: f["user_id"] == b.id)
    assert online["status"] == "online"
    wb2 = await WsClient.connect(node, b.access)
    await wb1.close()  # one session left: still online
    await wa.quiet("presence", FAST.presence_debounce + 0.4)
    # Last session closes and a new one opens within the debounce: no offline blip.
    await wb2.close()
    wb3 = await WsClient.connect(node, b.access)
    await wa.quiet("presence", FAST.presence_debounce + 0.4)
    await wb3.close()
    offline = await wa.expect("presence", timeout=FAST.presence_debounce + 3)
    assert offline["user_id"] == b.id and offline["status"] == "offline"
    assert ws_stranger.of("presence") == []


async def test_new_posts_reach_online_friends(node: TestClient) -> None:
    a, b, _ = await friends_in_a_direct_conversation(node)
    stranger = await register(node)
    wa, ws_stranger = (
        await WsClient.connect(node, a.access),
        await WsClient.connect(node, stranger.access),
    )
    post = await create_post(node, b, "fresh", "friends")
    frame = await wa.expect("post")
    assert frame["post"]["id"] == post["id"] and frame["post"]["author"]["id"] == b.id
    await create_post(node, b, "secret", "private")
    await wa.quiet("post", 0.3)
    assert ws_stranger.of("post") == []


async def test_logout_closes_that_logins_sessions(node: TestClient) -> None:
    a = await register(node)
    other_login = await (
        await node.post(
            "/api/v1/auth/login", json={"login": a.username, "password": "correct horse battery"}
        )
    ).json()
    revoked = await WsClient.connect(node, a.access)
    kept = await WsClient.connect(node, other_login["access_token"])
    assert (await node.post("/api/v1/auth/logout", json={"refresh_token": a.refresh})).status == 204
    assert await revoked.closed(timeout=5) == 4001
    await kept.send({"type": "ping"})
    await kept.expect("pong")


async def test_a_session_revoked_during_its_upgrade_leaves_presence_alone(
    node: TestClient,
) -> None:
    a = await register(node)
    live = await WsClient.connect(node, a.access)
    app = node.server.app
    presence, revocations = app[keys.PRESENCE], app[keys.ACCOUNTS].revocations
    checked = revocations.is_revoked
    # The login is revoked between the token check and the upgrade (a logout racing it): the
    # first look (authenticating the token) says no, the second (after the upgrade) says yes.
    looks: list[int] = []
    revocations.is_revoked = lambda sid: bool(looks.append(sid) or len(looks) > 1)  # type: ignore[method-assign]
    try:
        raced = await node.ws_connect(f"/ws?token={a.access}")
        await raced.receive(timeout=5)  # it ends without a `ready`
    finally:
        revocations.is_revoked = checked  # type: ignore[method-assign]
    for _ in range(50):
        if len(app[keys.SESSIONS]) == 1:
            break
        await asyncio.sleep(0.02)
    await app[keys.SESSIONS].wait_cleanups(2)
    # The live session still counts: its node stays in where:{user}, nobody hears "offline".
    assert presence.local == {int(a.id): 1}
    await live.send({"type": "ping"})
    await live.expect("pong")


async def test_blocks_stop_direct_messages_both_ways(node: TestClient) -> None:
    a, b, cid = await friends_in_a_direct_conversation(node)
    wa, wb = await WsClient.connect(node, a.access), await WsClient.connect(node, b.access)
    await block(node, b, a)
    await wa.send({"type": "send", "conversation_id": cid, "client_id": "blocked", "text": "hi"})
    assert (await wa.expect("error"))["code"] == "forbidden"
    await wb.send({"type": "send", "conversation_id": cid, "client_id": "blocked", "text": "hi"})
    assert (await wb.expect("error"))["code"] == "forbidden"
    await expect_error(
        await node.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=a.headers,
            json={"text": "hi", "client_id": "rest"},
        ),
        403,
        "forbidden",
    )


async def test_one_client_id_sent_twice_at_once_is_stored_once(
    node: TestClient, database_url: str
) -> None:
    a, b, cid = await friends_in_a_direct_conversation(node)
    phone, laptop = await WsClient.connect(node, a.access), await WsClient.connect(node, a.access)
    wb = await WsClient.connect(node, b.access)
    frame = {"type": "send", "conversation_id": cid, "client_id": "twice", "text": "once"}
    await asyncio.gather(phone.send(frame), laptop.send(frame))  # likely one batch of the actor
    acks = [await phone.expect("ack"), await laptop.expect("ack")]
    assert {(x["message_id"], x["seq"]) for x in acks} == {(acks[0]["message_id"], 1)}, acks
    await wb.expect("message")
    await wb.quiet("message", 0.3)  # the other member sees it once
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM chat.messages WHERE conversation_id = $1", int(cid)
        )
    finally:
        await conn.close()
    assert stored == 1


async def test_concurrent_senders_get_contiguous_seqs(node: TestClient, database_url: str) -> None:
    a, b, cid = await friends_in_a_direct_conversation(node)
    sockets = [await WsClient.connect(node, u.access) for u in (a, a, b, b)]
    per = 25

    async def blast(i: int) -> None:
        for n in range(per):
            await sockets[i].send(
                {
                    "type": "send",
                    "conversation_id": cid,
                    "client_id": f"w{i}-{n}",
                    "text": f"{i}/{n}",
                }
            )

    async def rest(user: User, tag: str) -> None:
        for n in range(10):
            resp = await node.post(
                f"/api/v1/conversations/{cid}/messages",
                headers=user.headers,
                json={"text": "rest", "client_id": f"{tag}-{n}"},
            )
            assert resp.status == 201

    await asyncio.gather(*[blast(i) for i in range(4)], rest(a, "ra"), rest(b, "rb"))
    total = 4 * per + 20
    for ws in sockets:
        for _ in range(per):
            await ws.expect("ack")
    for ws in sockets:
        while len(ws.of("message")) < total:
            await ws.expect("message", timeout=10)
        seqs = [m["message"]["seq"] for m in ws.of("message")]
        assert seqs == list(range(1, total + 1))
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetch(
            "SELECT seq FROM chat.messages WHERE conversation_id = $1 ORDER BY seq", int(cid)
        )
        assert [r["seq"] for r in stored] == list(range(1, total + 1))
    finally:
        await conn.close()


async def _raw_ws_that_never_reads(
    port: int, token: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        (
            f"GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    assert b"101" in await reader.readline()
    return reader, writer


async def test_a_slow_reader_is_closed_without_delaying_the_others(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(ws=WebSocketConfig(rate_limit=0, outbound_queue=64), cluster=FAST)
    a, b, cid = await friends_in_a_direct_conversation(client)
    fast = await WsClient.connect(client, b.access)
    sender = await WsClient.connect(client, a.access)
    _, slow_writer = await _raw_ws_that_never_reads(client.port, b.access)  # type: ignore[arg-type]
    total, chunk = 1600, 32  # ~6 MB: more than any socket buffers between us and the slow one
    for start in range(0, total, chunk):
        for i in range(start, start + chunk):
            await sender.send(
                {"type": "send", "conversation_id": cid, "client_id": f"f{i}", "text": "x" * 3900}
            )
        while len(fast.of("message")) < start + chunk:
            await fast.expect("message", timeout=10)
    assert [m["message"]["seq"] for m in fast.of("message")] == list(range(1, total + 1))
    app = client.server.app
    for _ in range(100):  # the close frame cannot get through: the connection is dropped
        if len(app[keys.SESSIONS].by_user.get(int(b.id), ())) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(app[keys.SESSIONS].by_user.get(int(b.id), ())) == 1  # only the fast one left
    metrics = await (await client.get("/metrics")).text()
    assert 'agora_ws_closed_total{reason="slow_consumer"} 1.0' in metrics
    slow_writer.close()


async def test_chat_keeps_working_on_one_node_when_redis_is_cut(
    make_client, config: Config
) -> None:  # type: ignore[no-untyped-def]
    from tests.support.proxy import proxy_redis

    assert config.redis.url
    proxy, through = await proxy_redis(config.redis.url)
    try:
        client = await make_client(
            cluster=FAST,
            redis=config.redis.__class__(url=through, prefix=config.redis.prefix),
        )
        a, b, cid = await friends_in_a_direct_conversation(client)
        wa, wb = await WsClient.connect(client, a.access), await WsClient.connect(client, b.access)
        proxy.cut()
        await wa.send(
            {"type": "send", "conversation_id": cid, "client_id": "no-redis", "text": "hi"}
        )
        ack = await wa.expect("ack")  # stored in PostgreSQL, acked
        assert (await wb.expect("message"))["message"]["id"] == ack["message_id"]  # same node
        metrics = await (await client.get("/metrics")).text()
        assert 'agora_actor_restarts_total{kind="conversation"}' not in metrics
        proxy.restore()
        await client.close()  # while Redis is reachable: the node deregisters itself
    finally:
        await proxy.close()


async def test_sync_of_a_backlog_larger_than_the_outbound_queue(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(ws=WebSocketConfig(rate_limit=0, outbound_queue=40), cluster=FAST)
    a, b, cid = await friends_in_a_direct_conversation(client)
    for n in range(300):
        resp = await client.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=a.headers,
            json={"text": f"m{n}", "client_id": f"b{n}"},
        )
        assert resp.status == 201, await resp.text()
    wb = await WsClient.connect(client, b.access)
    await wb.send({"type": "sync", "conversation_id": cid, "after_seq": 0})
    synced = await wb.expect("synced", timeout=20)
    assert synced["last_seq"] == 300
    assert [m["message"]["seq"] for m in wb.of("message")] == list(range(1, 301))
    assert not wb.ws.closed
