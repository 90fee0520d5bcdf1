"""``connections``: what one idle authenticated WebSocket costs a node in memory.

A node is spawned (or ``--url``/``--pid`` name one; it must share the bench's database and JWT
secret). Users and login sessions are made in SQL, ``--per-user`` sessions per user (default 1:
one user per connection, none of them friends, so no presence fan-out), each with a minted
token. The node's RSS is read once it has settled after start-up, then ``count`` WebSockets
are opened in batches, each waiting for ``ready``, and the RSS is read again once settled.
The bench keeps reading every socket (so the server's pings are answered) until it is done.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiohttp

from bench.fixtures import create_accounts, delete_accounts, run_prefix
from bench.nodes import start_nodes
from bench.procs import BenchError, ServerProcess, log, raise_nofile_limit, settled_rss
from bench.services import Services
from bench.wsclient import Member, client_session, connect_all

GOAL_KIB = 30


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def connections(
    services: Services, *, count: int, url: str | None, pid: int | None, per_user: int, batch: int
) -> dict[str, Any]:
    """Open ``count`` idle WebSockets to one node; return its RSS before and after."""
    limit = raise_nofile_limit()
    if count + 200 > limit:
        raise BenchError(
            f"RLIMIT_NOFILE is {limit}; {count} connections need about "
            f"{count + 200} file descriptors in this process and in the node"
        )
    users = math.ceil(count / per_user)
    prefix = run_prefix("bconn")
    accounts = (await create_accounts(services, prefix, users, sessions_per_user=per_user))[:count]
    log(f"{users} users {prefix}*, {len(accounts)} sessions and tokens created")
    node: ServerProcess | None = None
    try:
        if url is None:
            node = (await start_nodes(services, 1))[0]
            url, pid = node.url, node.pid
        rss_before = await settled_rss(pid) if pid else None
        log(f"node RSS before: {rss_before} MiB; opening {count} WebSockets, {batch} at a time")
        async with client_session() as http:
            sockets = await connect_all(
                http,
                [Member(str(a.user_id), a.token, url) for a in accounts],
                batch=batch,
                strict=False,
            )
            readers = [asyncio.create_task(_drain(ws)) for ws in sockets]
            try:
                rss_after = await settled_rss(pid, timeout=60) if pid else None
                still_open = sum(1 for ws in sockets if not ws.closed)
            finally:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    finally:
        if node is not None:
            node.stop()
        await delete_accounts(services, prefix)
    per_connection = (
        round((rss_after - rss_before) * 1024 / len(sockets), 1)
        if rss_before is not None and rss_after is not None and sockets
        else None
    )
    return {
        "target": "agora-connections",
        "count": count,
        "users": users,
        "opened": len(sockets),
        "open_at_measurement": still_open,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_after,
        "rss_per_connection_kib": per_connection,
        "goal_kib": GOAL_KIB,
        "met": None if per_connection is None else per_connection <= GOAL_KIB,
    }
