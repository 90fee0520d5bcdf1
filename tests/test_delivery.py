"""Issue 8, points 3 and 7: every way a delivery can be lost between nodes is either retried or
turned into a ``resync`` frame; messages between nodes decode across versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from agora.cluster.inbox import Command, Deliver, Resync, decode_entry
from agora.config import ClusterConfig, Config
from agora.server import keys
from agora.storage.chat import ChatStore, Outgoing
from tests.support.api import User, register
from tests.support.cluster import group_owned_by, started_together
from tests.support.proxy import TCPProxy, proxy_redis
from tests.support.services import ServiceSet
from tests.support.ws import WsClient

# Long node timeout: the short Redis cuts below must not make anyone look dead.
STEADY = ClusterConfig(heartbeat=0.3, node_timeout=30, answer_timeout=3.0, presence_debounce=0.5)


async def _cluster(make_client: Any, config: Config, alpha_redis: str | None = None) -> Any:
    alpha_config = {"redis": replace(config.redis, url=alpha_redis)} if alpha_redis else {}
    alpha = await make_client(node_id="alpha", cluster=STEADY, **alpha_config)
    beta = await make_client(node_id="beta", cluster=STEADY)
    await started_together(alpha, beta)
    return alpha, beta


async def _send(node: TestClient, user: User, cid: int, client_id: str) -> dict[str, Any]:
    resp = await node.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=user.headers,
        json={"text": f"text {client_id}", "client_id": client_id},
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


@asynccontextmanager
async def _alpha_behind_a_proxy(
    make_client: Any, config: Config, services: ServiceSet
) -> AsyncIterator[tuple[TCPProxy, TestClient, User, int, WsClient]]:
    """Alpha (its Redis through a proxy the test can cut) owns a group whose second member
    listens on beta: (proxy, alpha, the sender, the conversation, the reader's socket)."""
    proxy, through = await proxy_redis(services.redis_url)
    try:
        alpha, beta = await _cluster(make_client, config, through)
        (sender, reader), cid = await group_owned_by(alpha)
        ws = await WsClient.connect(beta, reader.access)
        yield proxy, alpha, sender, cid, ws
        await ws.close()
    finally:
        await proxy.close()


async def test_a_failed_placement_lookup_still_delivers_once_redis_is_back(
    make_client: Any, config: Config, services: ServiceSet
) -> None:
    async with _alpha_behind_a_proxy(make_client, config, services) as setup:
        proxy, alpha, sender, cid, ws = setup
        await _send(alpha, sender, cid, "before")
        await ws.expect("message")
        proxy.cut()  # alpha cannot look up where the reader is, nor post to beta's inbox
        await _send(alpha, sender, cid, "during")  # stored and acked: PostgreSQL is the record
        await asyncio.sleep(0.3)
        proxy.restore()
        frame = await ws.expect("message", timeout=10)
        assert frame["message"]["client_id"] == "during"


async def test_deliveries_a_full_queue_drops_come_back_as_a_resync(
    make_client: Any, config: Config, services: ServiceSet
) -> None:
    async with _alpha_behind_a_proxy(make_client, config, services) as setup:
        proxy, alpha, sender, cid, ws = setup
        inbox = alpha.server.app[keys.ROUTER].inbox
        inbox.max_pending = 1
        proxy.cut()
        for n in range(5):  # the first waits in the queue, the next ones find it full
            await _send(alpha, sender, cid, f"m{n}")
        assert inbox.dropped >= 1
        proxy.restore()
        resync = await ws.expect("resync", timeout=10)
        assert resync["conversation_ids"] == [str(cid)]
        # What the client then does: sync from its last seq, and nothing is missing.
        await ws.send({"type": "sync", "conversation_id": str(cid), "after_seq": 0})
        synced = await ws.expect("synced")
        assert synced["last_seq"] == 5
        seqs = {f["message"]["seq"] for f in ws.of("message")}
        assert seqs == {1, 2, 3, 4, 5}


@asynccontextmanager
async def _beta_inbox(
    make_client: Any, config: Config, services: ServiceSet
) -> AsyncIterator[tuple[User, WsClient, str, aioredis.Redis]]:
    """A user listening on beta, beta's inbox stream, and a Redis client to write into it as
    another node (or a fault) would."""
    _alpha, beta = await _cluster(make_client, config)
    user = await register(beta)
    ws = await WsClient.connect(beta, user.access)
    stream = beta.server.app[keys.REDIS_KEYS].inbox(beta.server.app[keys.NODES].node_id)
    redis = aioredis.Redis.from_url(services.redis_url)
    try:
        yield user, ws, stream, redis
    finally:
        await redis.aclose()
        await ws.close()


async def test_lost_inbox_entries_make_every_session_resync(
    make_client: Any, config: Config, services: ServiceSet
) -> None:
    async with _beta_inbox(make_client, config, services) as (_user, ws, stream, redis):
        entry = msgspec.msgpack.encode([Deliver([], [])])
        for number in (b"1", b"2"):  # in order: nothing lost
            await redis.xadd(stream, {b"v": b"2", b"f": b"ghost", b"n": number, b"e": entry})
        await ws.quiet("resync", 0.3)
        await redis.xadd(stream, {b"v": b"2", b"f": b"ghost", b"n": b"5", b"e": entry})
        resync = await ws.expect("resync")
        assert resync["conversation_ids"] is None  # whom the lost entries were for is unknown


async def test_a_resend_found_stored_is_fanned_out(client: TestClient) -> None:
    (sender, reader), cid = await group_owned_by(client)
    ws = await WsClient.connect(client, reader.access)
    await _send(client, sender, cid, "first")
    await ws.expect("message")
    # An owner stored this message and died before fanning it out (or its commit's answer was
    # lost): it is in PostgreSQL, and nobody was told.
    store = ChatStore(client.server.app[keys.DB])
    state = await store.state(cid)
    assert state is not None
    await store.commit(
        cid, state.last_seq, [Outgoing(int(sender.id), "lost", "lost")], state.members_version
    )
    resp = await client.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=sender.headers,
        json={"text": "lost", "client_id": "lost"},
    )
    assert resp.status == 200  # found, not stored twice
    frame = await ws.expect("message")
    assert frame["message"]["client_id"] == "lost" and frame["message"]["seq"] == 2
    await ws.close()


# -- point 7: versions ---------------------------------------------------------------------------


def test_envelopes_of_the_previous_and_the_next_release_decode() -> None:
    older = msgspec.msgpack.encode(
        [
            ["deliver", [1, 2], [b"{}"]],  # before conversation_id existed
            ["command", 7, "alpha", 42, b"op"],  # before hops existed
        ]
    )
    deliver, command = decode_entry(older)
    assert deliver == Deliver([1, 2], [b"{}"], None)
    assert command == Command(7, "alpha", 42, b"op", 0)
    newer = msgspec.msgpack.encode(
        [
            ["deliver", [3], [b"{}"], 9, "a field of the next release"],
            ["teleport", 1, 2, 3],  # a kind this release does not know: skipped alone
            ["resync", [3], [9]],
        ]
    )
    assert decode_entry(newer) == [Deliver([3], [b"{}"], 9), Resync([3], [9])]


async def test_an_entry_in_the_previous_format_is_delivered(
    make_client: Any, config: Config, services: ServiceSet
) -> None:
    # The previous release wrote only the envelopes (no v, f, n), and Deliver had 2 fields.
    async with _beta_inbox(make_client, config, services) as (user, ws, stream, redis):
        frame = b'{"type":"pong"}'
        await redis.xadd(
            stream, {b"e": msgspec.msgpack.encode([["deliver", [int(user.id)], [frame]]])}
        )
        await ws.expect("pong")


async def test_an_entry_written_twice_is_read_once(
    make_client: Any, config: Config, services: ServiceSet
) -> None:
    # A write retried after its reply was lost (it had got through): same sender, same number.
    async with _beta_inbox(make_client, config, services) as (user, ws, stream, redis):
        entry = msgspec.msgpack.encode([Deliver([int(user.id)], [b'{"type":"pong"}'])])
        for _ in range(2):
            await redis.xadd(stream, {b"v": b"2", b"f": b"twice", b"n": b"1", b"e": entry})
        await ws.expect("pong")
        await ws.quiet("pong", 0.3)
        assert not ws.of("resync")
