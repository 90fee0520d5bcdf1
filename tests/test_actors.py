"""The actor base (supervision, bounded mailboxes, stop) and actor lifecycles in a node."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from agora.actors.base import Actor, ActorStopped, MailboxFull, Reply
from agora.config import ClusterConfig, WebSocketConfig
from agora.errors import AppError
from agora.server import keys
from tests.support.api import friends_in_a_direct_conversation, register
from tests.support.ws import WsClient


class Flaky(Actor[str]):
    def __init__(self) -> None:
        super().__init__("flaky", mailbox_size=3)
        self.starts = 0
        self.seen: list[str] = []

    async def on_start(self) -> None:
        self.starts += 1

    async def receive(self, message: str) -> str:
        if message == "boom":
            raise RuntimeError("bug")
        if message == "wait":
            await asyncio.sleep(0.2)
        self.seen.append(message)
        return message.upper()


async def test_a_crash_is_answered_and_the_actor_carries_on() -> None:
    actor = Flaky()
    actor.start()
    assert await actor.ask("a") == "A"
    with pytest.raises(AppError) as info:
        await actor.ask("boom")
    assert info.value.code.value == "internal_error"
    assert await actor.ask("b") == "B"
    assert actor.starts == 2  # on_failure rebuilt the state
    await actor.stop()


class Batcher(Actor[str]):
    """Handles a batch itself, as the conversation actor does, and can fail half-way."""

    def __init__(self) -> None:
        super().__init__("batcher")

    async def receive_many(self, items: list[tuple[str, Reply | None]]) -> None:
        for message, reply in items:
            if message == "bug":
                raise RuntimeError("a bug outside receive()")
            if message == "hang":
                await asyncio.sleep(30)
            if reply:
                reply(message.upper())


async def test_every_asker_of_a_crashed_batch_hears_back() -> None:
    actor = Batcher()
    actor.start()
    first, bug, after = actor.ask("a"), actor.ask("bug"), actor.ask("b")  # one batch
    assert await first == "A"
    for unanswered in (bug, after):
        with pytest.raises(AppError) as info:
            await asyncio.wait_for(unanswered, 1)
        assert info.value.code.value == "unavailable"  # retry
    assert await asyncio.wait_for(actor.ask("c"), 1) == "C"  # and it carries on
    # Stopped while a batch is in hand: those askers hear back too.
    hung, behind = actor.ask("hang"), actor.ask("x")
    await asyncio.sleep(0.01)
    assert actor._task is not None
    actor._task.cancel()
    for future in (hung, behind):
        with pytest.raises(AppError):
            await asyncio.wait_for(future, 1)


async def test_full_mailbox_and_stopped_actor_fail_fast() -> None:
    actor = Flaky()
    actor.start()
    in_hand = actor.ask("wait")
    await asyncio.sleep(0.01)
    queued = [actor.ask(str(i)) for i in range(3)]
    with pytest.raises(MailboxFull):
        actor.tell("one too many")
    await actor.stop()
    assert await in_hand == "WAIT"  # the item in hand finishes ...
    for future in queued:  # ... what was still queued is answered "stopped, retry"
        with pytest.raises(ActorStopped):
            await future
    assert actor.seen == ["wait"]
    with pytest.raises(ActorStopped):
        actor.tell("late")


FAST = ClusterConfig(
    heartbeat=0.3,
    node_timeout=1.5,
    answer_timeout=3.0,
    presence_debounce=0.5,
    conversation_idle=0.5,
)


async def test_idle_conversation_actors_stop_and_restart_from_postgresql(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(cluster=FAST)
    a, _, cid = await friends_in_a_direct_conversation(client)
    directory = client.server.app[keys.CONVERSATIONS]
    for n in range(3):
        resp = await client.post(
            f"/api/v1/conversations/{cid}/messages",
            headers=a.headers,
            json={"text": "x", "client_id": f"i{n}"},
        )
        assert (await resp.json())["seq"] == n + 1
    assert len(directory) == 1
    for _ in range(40):
        if len(directory) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(directory) == 0
    resp = await client.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=a.headers,
        json={"text": "after a nap", "client_id": "i3"},
    )
    assert resp.status == 201 and (await resp.json())["seq"] == 4
    # A resend across the restart still finds the first message (in PostgreSQL now).
    again = await client.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=a.headers,
        json={"text": "x", "client_id": "i0"},
    )
    assert again.status == 200 and (await again.json())["seq"] == 1


async def test_heartbeats_drop_a_peer_that_stopped_answering(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(cluster=FAST, ws=WebSocketConfig(heartbeat=0.4))
    user = await register(client)
    # autoping=False: this client never answers the server's pings, like a vanished phone.
    ws = await client.ws_connect(f"/ws?token={user.access}", autoping=False)
    sessions = client.server.app[keys.SESSIONS]
    assert len(sessions) == 1
    closed = False
    for _ in range(60):
        msg = await ws.receive(timeout=3)
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            closed = True
            break
    assert closed
    for _ in range(40):
        if len(sessions) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(sessions) == 0


async def test_crashes_are_counted_in_the_metrics(make_client) -> None:  # type: ignore[no-untyped-def]
    client = await make_client(cluster=FAST)
    a, _, cid = await friends_in_a_direct_conversation(client)
    directory = client.server.app[keys.CONVERSATIONS]
    await client.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=a.headers,
        json={"text": "x", "client_id": "c0"},
    )
    actor = directory._actors[int(cid)]

    async def broken(op):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in a command handler")

    actor.receive = broken  # type: ignore[method-assign]
    ws = await WsClient.connect(client, a.access)
    await ws.send({"type": "typing", "conversation_id": cid})
    assert (await ws.expect("error"))["code"] == "internal_error"
    metrics = await (await client.get("/metrics")).text()
    assert 'agora_actor_restarts_total{kind="conversation"} 1.0' in metrics
    resp = await client.post(
        f"/api/v1/conversations/{cid}/messages",
        headers=a.headers,
        json={"text": "still works", "client_id": "c1"},
    )
    assert resp.status == 201 and (await resp.json())["seq"] == 2


class _Capture(asyncio.Transport):
    """Keeps what is written (aiohttp's writer is given this instead of a socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
async def test_batched_frame_headers_are_the_ones_aiohttp_writes(length: int) -> None:
    """The session writer builds text-frame headers itself (one write for many frames): they
    must be byte for byte what aiohttp's own writer sends, at every length boundary."""
    from aiohttp._websocket.writer import WebSocketWriter
    from aiohttp.base_protocol import BaseProtocol

    from agora.actors.session import text_frame_header

    transport = _Capture()
    writer = WebSocketWriter(BaseProtocol(asyncio.get_running_loop()), transport, limit=1 << 30)
    payload = b"x" * length
    await writer.send_frame(payload, aiohttp.WSMsgType.TEXT)
    assert bytes(transport.written) == text_frame_header(length) + payload
