"""The fenced group commit in PostgreSQL: seqs without gaps, stale owners refused, resends found."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from agora.actors.committer import CommitRequest, Committer
from agora.errors import AppError
from agora.server import keys
from agora.storage.chat import ChatStore, Outgoing, StaleOwner
from tests.support.api import befriend, register


async def _conversation(client: TestClient) -> tuple[ChatStore, int, int, int]:
    a, b = await register(client), await register(client)
    await befriend(client, a, b)
    store = ChatStore(client.server.app[keys.DB])
    cid, created = await store.create("direct", None, int(a.id), [int(b.id)])
    assert created
    return store, cid, int(a.id), int(b.id)


async def test_commit_assigns_contiguous_seqs_and_finds_resends(client: TestClient) -> None:
    store, cid, a, b = await _conversation(client)
    done = await store.commit(cid, 0, [Outgoing(a, "x", "1"), Outgoing(b, "x", "2")])
    assert [m.seq for m in done.new] == [1, 2] and done.earlier == {}
    done = await store.commit(cid, 2, [Outgoing(a, "x", "again"), Outgoing(a, "y", "3")])
    assert [m.seq for m in done.new] == [3]
    assert done.earlier[(a, "x")].seq == 1 and done.earlier[(a, "x")].text == "1"
    state = await store.state(cid)
    assert state is not None and state.last_seq == 3 and state.members == {a, b}


async def test_a_stale_owner_is_refused(client: TestClient) -> None:
    store, cid, a, _ = await _conversation(client)
    await store.commit(cid, 0, [Outgoing(a, "first", "hello")])
    with pytest.raises(StaleOwner):  # believes last_seq is 0 but it is 1
        await store.commit(cid, 0, [Outgoing(a, "second", "hello")])
    assert [m.seq for m in await store.messages_after(cid, 0, 10)] == [1]


async def test_two_owners_racing_never_store_a_seq_twice(client: TestClient) -> None:
    store, cid, a, b = await _conversation(client)

    async def owner(name: str, sender: int) -> int:
        stored, last = 0, 0
        for n in range(20):
            while True:
                try:
                    done = await store.commit(cid, last, [Outgoing(sender, f"{name}{n}", "t")])
                    last = done.new[-1].seq
                    stored += 1
                    break
                except StaleOwner:
                    state = await store.state(cid)
                    assert state is not None
                    last = state.last_seq
        return stored

    assert await asyncio.gather(owner("p", a), owner("q", b)) == [20, 20]
    seqs = [m.seq for m in await store.messages_after(cid, 0, 100)]
    assert seqs == list(range(1, 41))


async def test_many_conversations_in_one_statement_each_fenced_alone(client: TestClient) -> None:
    store, c1, a, b = await _conversation(client)
    _, c2, x, y = await _conversation(client)
    await store.commit(c2, 0, [Outgoing(x, "pre", "moved on")])  # c2's owner believes 0: stale
    results = await store.commit_many(
        [
            (c1, 0, 0, [Outgoing(a, "m1", "one"), Outgoing(b, "m2", "two")]),
            (c2, 0, 0, [Outgoing(y, "m3", "three")]),
        ]
    )
    first, second = results[c1], results[c2]
    assert isinstance(second, StaleOwner)
    assert not isinstance(first, StaleOwner) and [m.seq for m in first.new] == [1, 2]
    assert [m.text for m in await store.messages_after(c2, 0, 10)] == ["moved on"]


async def test_a_row_postgresql_refuses_fails_only_its_own_conversation(client: TestClient) -> None:
    store, good, a, _ = await _conversation(client)
    _, bad, c, _ = await _conversation(client)
    committer = Committer(store)
    committer.start()
    try:
        # Both asked in one turn of the loop: they share the committer's statement. (Bodies and
        # frames refuse NUL before this point; this is the defence behind that check.)
        results = await asyncio.gather(
            committer.ask(CommitRequest(good, 0, 0, [Outgoing(a, "ok", "fine")])),
            committer.ask(CommitRequest(bad, 0, 0, [Outgoing(c, "nul", "bad\x00")])),
            return_exceptions=True,
        )
    finally:
        await committer.stop()
    assert [m.seq for m in results[0].new] == [1], results[0]  # type: ignore[union-attr]
    assert isinstance(results[1], AppError)
    assert [m.text for m in await store.messages_after(good, 0, 10)] == ["fine"]
    assert await store.messages_after(bad, 0, 10) == []
