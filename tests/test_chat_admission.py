"""Issue 8, points 1, 2 and 6: who may start a conversation actor, how many live, floods of
typing and receipts, membership fenced in the commit, and what happens to commands when an
actor stops or the database blinks."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.actors.committer import Committer
from agora.actors.conversation import (
    ConversationActor,
    ConversationDirectory,
    MembersChangedOp,
    ReadOp,
    SendOp,
    Sent,
    TypingOp,
)
from agora.clock import ManualClock
from agora.config import ClusterConfig, Config
from agora.errors import AppError
from agora.server import keys
from agora.server.app import create_app
from agora.storage.chat import ChatStore, TooManyMembers
from tests.support.api import befriend, friends_in_a_direct_conversation, group, register
from tests.support.cluster import group_owned_by, members_locked, started_together
from tests.support.proxy import proxy_postgres
from tests.support.ws import WsClient

# -- point 1: admission -----------------------------------------------------------------------


async def test_strangers_and_unknown_ids_start_no_actor(client: TestClient) -> None:
    a, _, cid = await friends_in_a_direct_conversation(client)
    stranger = await register(client)
    directory = client.server.app[keys.CONVERSATIONS]
    ws = await WsClient.connect(client, stranger.access)
    frames = [
        {"type": "send", "conversation_id": cid, "client_id": "x1", "text": "let me in"},
        {"type": "typing", "conversation_id": cid},
        {"type": "read", "conversation_id": cid, "seq": 1},
        {"type": "send", "conversation_id": "4242424242424242", "client_id": "x2", "text": "?"},
        {"type": "typing", "conversation_id": "4242424242424241"},
    ]
    for frame in frames:
        await ws.send(frame)
    for _ in frames:
        error = await ws.expect("error")
        assert error["code"] == "not_found"
    assert len(directory) == 0  # no actor was started for any of them
    assert directory.refused == len(frames)
    # A member still gets in, and the stranger stays out of a live conversation too.
    mine = await WsClient.connect(client, a.access)
    await mine.send({"type": "send", "conversation_id": cid, "client_id": "m1", "text": "hi"})
    await mine.expect("ack")
    assert len(directory) == 1
    await ws.send({"type": "send", "conversation_id": cid, "client_id": "x3", "text": "again"})
    assert (await ws.expect("error"))["code"] == "not_found"
    await ws.close()
    await mine.close()


async def test_refusals_are_remembered_but_an_added_member_gets_in(client: TestClient) -> None:
    users, cid = await group(client, 3)
    newcomer = await register(client)
    await befriend(client, users[0], newcomer)
    directory = client.server.app[keys.CONVERSATIONS]
    ws = await WsClient.connect(client, newcomer.access)
    await ws.send({"type": "typing", "conversation_id": cid})
    assert (await ws.expect("error"))["code"] == "not_found"
    resp = await client.post(
        f"/api/v1/conversations/{cid}/members",
        headers=users[0].headers,
        json={"user_ids": [newcomer.id]},
    )
    assert resp.status == 200, await resp.text()
    await ws.send({"type": "send", "conversation_id": cid, "client_id": "n1", "text": "hello"})
    ack = await ws.expect("ack")
    assert ack["seq"] == 1
    assert len(directory) == 1
    await ws.close()


async def test_live_actors_are_capped_and_idle_ones_make_room(
    make_client: Any, database_url: str
) -> None:
    client = await make_client(cluster=ClusterConfig(max_conversations=2))
    directory = client.server.app[keys.CONVERSATIONS]
    pairs = [await friends_in_a_direct_conversation(client) for _ in range(3)]
    sockets = [await WsClient.connect(client, a.access) for a, _, _ in pairs]
    for ws, (_, _, cid) in zip(sockets[:2], pairs[:2], strict=True):
        await ws.send({"type": "send", "conversation_id": cid, "client_id": "c", "text": "x"})
        await ws.expect("ack")
    assert len(directory) == 2
    # Both live actors busy: a row lock held here stalls their read receipts in PostgreSQL.
    async with members_locked(database_url, *(int(cid) for _, _, cid in pairs[:2])):
        readers = [await WsClient.connect(client, b.access) for _, b, _ in pairs[:2]]
        for ws, (_, _, cid) in zip(readers, pairs[:2], strict=True):
            await ws.send({"type": "read", "conversation_id": cid, "seq": 1})
        await asyncio.sleep(0.2)
        third = pairs[2][2]
        await sockets[2].send(
            {"type": "send", "conversation_id": third, "client_id": "t", "text": "x"}
        )
        error = await sockets[2].expect("error")
        assert error["code"] == "unavailable" and error["retry"] is True, error
        assert len(directory) == 2  # the node did not grow
    await asyncio.sleep(0.2)  # the receipts finish; both actors are idle now
    await sockets[2].send({"type": "send", "conversation_id": third, "client_id": "t", "text": "x"})
    assert (await sockets[2].expect("ack"))["seq"] == 1
    assert len(directory) == 2  # the least recently used idle actor made room
    for ws in [*sockets, *readers]:
        await ws.close()


async def test_a_flood_of_receipts_and_typing_takes_one_place_per_member(
    client: TestClient, database_url: str
) -> None:
    users, cid_text = await group(client, 3)
    cid = int(cid_text)
    flooder, other = int(users[1].id), int(users[2].id)
    store = ChatStore(client.server.app[keys.DB])
    committer = Committer(store)
    committer.start()
    state = await store.state(cid)
    assert state is not None

    class Out:
        async def deliver(
            self, users: list[int], frames: list[bytes], cid: int | None = None
        ) -> None:
            pass

    actor = ConversationActor(
        cid, store, committer, Out(), ManualClock(), None, mailbox_size=5, state=state
    )  # type: ignore[arg-type]
    actor.start()
    sent = await actor.ask(SendOp(int(users[0].id), "first", "one"))
    assert isinstance(sent, Sent) and sent.message.seq == 1
    async with members_locked(
        database_url, cid
    ):  # the flooder's first receipt is in hand, stalled on this lock
        first = actor.ask(ReadOp(flooder, 1))
        await asyncio.sleep(0.05)
        for _ in range(500):  # far more than the mailbox holds
            actor.tell(ReadOp(flooder, 1))
        for _ in range(500):
            actor.tell(TypingOp(flooder))
        # The others still have room.
        theirs = actor.ask(SendOp(other, "mine", "still here"))
    await first
    message = await theirs
    assert message.message.seq == 2
    await actor.stop()
    await committer.stop()


# -- point 2: membership is fenced in the commit ------------------------------------------------


async def test_a_removed_member_cannot_send_or_receive_even_if_the_notice_is_lost(
    client: TestClient,
) -> None:
    users, cid = await group(client, 3)
    _owner, _stays, leaver = users
    sockets = [await WsClient.connect(client, u.access) for u in users]
    await sockets[0].send({"type": "send", "conversation_id": cid, "client_id": "a", "text": "1"})
    await sockets[0].expect("ack")
    for ws in sockets:
        await ws.expect("message")
    # Removed in PostgreSQL behind the live actor's back (the notice never arrives).
    store = ChatStore(client.server.app[keys.DB])
    assert await store.remove_member(int(cid), int(leaver.id))
    await sockets[2].send({"type": "send", "conversation_id": cid, "client_id": "z", "text": "no"})
    assert (await sockets[2].expect("error"))["code"] == "not_found"
    await sockets[1].send({"type": "send", "conversation_id": cid, "client_id": "b", "text": "2"})
    assert (await sockets[1].expect("ack"))["seq"] == 2
    await sockets[0].expect("message", where=lambda f: f["message"]["seq"] == 2)
    await sockets[2].quiet("message", 0.3)
    assert [m["message"]["seq"] for m in sockets[2].of("message")] == [1]
    rows = await store.messages_after(int(cid), 0, 10)
    assert [r.client_id for r in rows] == ["a", "b"]
    for ws in sockets:
        await ws.close()


async def test_the_member_cap_holds_under_concurrent_adds(
    client: TestClient, database_url: str
) -> None:
    _users, cid_text = await group(client, 2)
    cid = int(cid_text)
    conn = await asyncpg.connect(database_url)
    try:
        # 247 more members straight in SQL (fast), then 12 concurrent adds of one user each.
        ids = await conn.fetch(
            "INSERT INTO accounts.users (username, email, password_hash, display_name) "
            "SELECT 'cap' || g || '_' || $1, 'cap' || g || '_' || $1 || '@x.invalid', 'x', 'c' "
            "FROM generate_series(1, 259) g RETURNING id",
            cid_text,
        )
        await conn.execute(
            "INSERT INTO chat.members (conversation_id, user_id) SELECT $1, unnest($2::bigint[])",
            cid,
            [r["id"] for r in ids[:246]],
        )
    finally:
        await conn.close()
    store = ChatStore(client.server.app[keys.DB])
    outcomes = await asyncio.gather(
        *(store.add_members(cid, [r["id"]], 250) for r in ids[246:]), return_exceptions=True
    )
    assert sum(o is None for o in outcomes) == 2
    assert all(o is None or isinstance(o, TooManyMembers) for o in outcomes), outcomes
    members = await store.members_of([cid])
    assert len(members[cid]) == 250


async def test_member_changes_answer_success_when_the_owner_does_not_answer(
    make_client: Any, config: Config
) -> None:
    fast = ClusterConfig(heartbeat=0.3, node_timeout=30, answer_timeout=3.0)
    n1 = await make_client(node_id="one", cluster=fast)
    n2 = await make_client(node_id="two", cluster=fast)
    await started_together(n1, n2)
    # A group owned by node two, whose inbox reader we stop: it hears nothing from now on.
    users, cid = await group_owned_by(n1, 3, owned=False)
    inbox = n2.server.app[keys.ROUTER].inbox
    assert inbox is not None and inbox._reader is not None
    inbox._reader.cancel()
    started = asyncio.get_running_loop().time()
    resp = await n1.delete(
        f"/api/v1/conversations/{cid}/members/{users[2].id}", headers=users[0].headers
    )
    assert resp.status == 204, await resp.text()
    assert asyncio.get_running_loop().time() - started < fast.answer_timeout  # did not wait for it


# -- point 6: lifecycle -------------------------------------------------------------------------


async def test_commands_queued_behind_a_stopping_actor_go_to_a_fresh_one(
    client: TestClient, database_url: str
) -> None:
    users, cid_text = await group(client, 3)
    cid = int(cid_text)
    directory: ConversationDirectory = client.server.app[keys.CONVERSATIONS]
    router = client.server.app[keys.ROUTER]
    await router.ask(cid, SendOp(int(users[0].id), "warm", "up"))
    async with members_locked(
        database_url, cid
    ):  # a receipt in hand stalls on this lock while sends queue behind it
        stalled = asyncio.ensure_future(router.ask(cid, ReadOp(int(users[1].id), 1)))
        await asyncio.sleep(0.05)
        queued = [
            asyncio.ensure_future(router.ask(cid, SendOp(int(users[2].id), f"q{n}", "x")))
            for n in range(5)
        ]
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(directory.stop_where(lambda c: c == cid))
        await asyncio.sleep(0.05)
    await stopping
    await stalled
    results = await asyncio.gather(*queued)
    assert sorted(r.message.seq for r in results) == [2, 3, 4, 5, 6]


async def test_an_idle_actor_stops_on_the_clock_and_a_fresh_one_takes_over(
    config: Config, aiohttp_client: Any
) -> None:
    clock = ManualClock(start=__import__("time").time())
    app = create_app(
        config.with_overrides(cluster=ClusterConfig(conversation_idle=30)), clock=clock
    )
    client = await aiohttp_client(app)
    a, _, cid = await friends_in_a_direct_conversation(client)
    directory = app[keys.CONVERSATIONS]
    router = app[keys.ROUTER]
    first = await router.ask(int(cid), SendOp(int(a.id), "one", "x"))
    actor = directory._actors[int(cid)]
    for _ in range(100):  # the fan-out after the ack ends the batch
        if not actor.busy:
            break
        await asyncio.sleep(0.01)
    clock.advance(29)
    await asyncio.sleep(0.05)
    assert actor.alive  # not yet
    clock.advance(2)
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert not actor.alive and len(directory) == 0
    second = await router.ask(int(cid), SendOp(int(a.id), "two", "x"))
    assert (first.message.seq, second.message.seq) == (1, 2)
    assert directory._actors[int(cid)] is not actor


@pytest.mark.parametrize("kind", ["direct", "group"])
async def test_a_database_blip_is_retried_not_failed(
    make_client: Any, config: Config, database_url: str, kind: str
) -> None:
    proxy, through = await proxy_postgres(database_url)
    try:
        client = await make_client(database=replace(config.database, url=through))
        if kind == "direct":
            a, _, cid = await friends_in_a_direct_conversation(client)
        else:
            users, cid = await group(client, 3)
            a = users[0]
        ws = await WsClient.connect(client, a.access)
        await ws.send({"type": "send", "conversation_id": cid, "client_id": "1", "text": "x"})
        await ws.expect("ack")
        actor = client.server.app[keys.CONVERSATIONS]._actors[int(cid)]
        proxy.cut()
        await ws.send({"type": "send", "conversation_id": cid, "client_id": "2", "text": "y"})
        await asyncio.sleep(0.6)  # PostgreSQL is away this long: a blip
        proxy.restore()
        ack = await ws.expect("ack", timeout=10)
        assert ack["seq"] == 2 and not ws.of("error"), ws.of("error")
        assert actor.alive and actor is client.server.app[keys.CONVERSATIONS]._actors[int(cid)]
        await ws.close()
    finally:
        await proxy.close()


async def test_members_changed_for_a_conversation_with_no_actor_starts_none(
    client: TestClient,
) -> None:
    _, _, cid = await friends_in_a_direct_conversation(client)
    directory = client.server.app[keys.CONVERSATIONS]
    assert await client.server.app[keys.ROUTER].ask(int(cid), MembersChangedOp()) is None
    assert len(directory) == 0


@pytest.mark.parametrize("op", ["send", "read"])
async def test_admission_answers_retry_when_postgresql_is_away(
    make_client: Any, config: Config, database_url: str, op: str
) -> None:
    proxy, through = await proxy_postgres(database_url)
    try:
        client = await make_client(database=replace(config.database, url=through))
        a, _, cid = await friends_in_a_direct_conversation(client)
        router = client.server.app[keys.ROUTER]
        proxy.cut()
        command = SendOp(int(a.id), "c", "x") if op == "send" else ReadOp(int(a.id), 1)
        with pytest.raises(AppError) as info:
            await asyncio.wait_for(router.ask(int(cid), command), 30)
        assert info.value.code.value == "unavailable"
        assert len(client.server.app[keys.CONVERSATIONS]) == 0
    finally:
        proxy.restore()
        await proxy.close()


async def test_commands_queued_on_a_node_that_shuts_down_go_to_the_new_owner(
    make_client: Any, database_url: str
) -> None:
    steady = ClusterConfig(heartbeat=0.3, node_timeout=30, answer_timeout=10.0)
    alpha = await make_client(node_id="alpha", cluster=steady)
    beta = await make_client(node_id="beta", cluster=steady)
    await started_together(alpha, beta)
    router = alpha.server.app[keys.ROUTER]
    users, cid = await group_owned_by(alpha, 3)
    await router.ask(cid, SendOp(int(users[0].id), "warm", "up"))
    ws = await WsClient.connect(beta, users[2].access)
    # Alpha's actor holds a stalled receipt; sends from beta queue behind it.
    async with members_locked(database_url, cid):
        stalled = asyncio.ensure_future(router.ask(cid, ReadOp(int(users[1].id), 1)))
        await asyncio.sleep(0.05)
        for n in range(5):
            await ws.send(
                {"type": "send", "conversation_id": str(cid), "client_id": f"s{n}", "text": "x"}
            )
        await asyncio.sleep(0.3)
        closing = asyncio.ensure_future(alpha.close())  # SIGTERM's path: the app shuts down
        await asyncio.sleep(0.3)
    await closing
    await asyncio.gather(stalled, return_exceptions=True)
    acks = [await ws.expect("ack", timeout=10) for _ in range(5)]
    assert sorted(a["seq"] for a in acks) == [2, 3, 4, 5, 6]
    assert not ws.of("error"), ws.of("error")
    await ws.close()


async def test_an_unanswered_command_times_out_on_the_injected_clock(
    config: Config, aiohttp_client: Any
) -> None:
    clock = ManualClock(start=__import__("time").time())
    cluster = ClusterConfig(heartbeat=1, node_timeout=600, answer_timeout=5.0)
    alpha = await aiohttp_client(
        create_app(config.with_overrides(node_id="alpha", cluster=cluster), clock=clock)
    )
    beta = await aiohttp_client(
        create_app(config.with_overrides(node_id="beta", cluster=cluster), clock=clock)
    )
    await started_together(alpha, beta)  # beta announces itself: no beat (no clock) needed
    router = alpha.server.app[keys.ROUTER]
    users, cid = await group_owned_by(alpha, 2, owned=False)
    inbox = beta.server.app[keys.ROUTER].inbox
    assert inbox is not None and inbox._reader is not None
    inbox._reader.cancel()  # the owner hears nothing
    asked = asyncio.ensure_future(router.ask(int(cid), SendOp(int(users[0].id), "c", "x")))
    await asyncio.sleep(0.2)
    assert not asked.done()  # real time passes; the clock does not
    clock.advance(5)
    with pytest.raises(AppError) as info:
        await asyncio.wait_for(asked, 1)
    assert info.value.code.value == "unavailable"
    for node in (alpha, beta):
        await node.close()
