"""Several nodes in one test process, and ways to hold one of them up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from agora.server import keys
from tests.support.api import User, group


async def started_together(*nodes: TestClient, rounds: int = 100) -> None:
    """Wait until every node sees all of them live."""
    for _ in range(rounds):
        if all(len(n.server.app[keys.NODES].live) == len(nodes) for n in nodes):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the nodes did not all see each other")


async def group_owned_by(
    node: TestClient, size: int = 2, *, owned: bool = True, via: TestClient | None = None
) -> tuple[list[User], int]:
    """A group conversation whose rendezvous owner is ``node`` (or, ``owned=False``, is not),
    created through ``via`` (default: ``node``). Tries new groups until one fits."""
    router = node.server.app[keys.ROUTER]
    while True:
        users, cid = await group(via or node, size)
        if (router.owner_of(int(cid)) == router.node_id) == owned:
            return users, int(cid)


@asynccontextmanager
async def members_locked(database_url: str, *conversation_ids: int) -> AsyncIterator[Any]:
    """Hold the member rows of these conversations locked (in a transaction rolled back on
    exit): an owner's read receipt for them stalls in PostgreSQL, keeping its actor busy."""
    conn = await asyncpg.connect(database_url)
    tx = conn.transaction()
    await tx.start()
    try:
        for cid in conversation_ids:
            await conn.execute(
                "SELECT 1 FROM chat.members WHERE conversation_id = $1 FOR UPDATE", cid
            )
        yield conn
    finally:
        await tx.rollback()
        await conn.close()
