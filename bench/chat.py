"""``chat``: group chat through Agora nodes, with the client code of ``baseline-ws``.

1 or 2 nodes are spawned on the same PostgreSQL and Redis (distinct ``AGORA_NODE_ID``,
``AGORA_WS_RATE_LIMIT=0``). ``conversations * members`` users are made in SQL, each room's
members mutual friends, one login session and minted access token each. Each room is created
with ``POST /api/v1/conversations`` by its first member; member k of every room connects to
node ``k % nodes``, so with 2 nodes every room spans both and most deliveries cross nodes.
``senders`` limits who sends to the first members of each room (one 50-member room with 5
senders is the room fan-out).
"""

from __future__ import annotations

from typing import Any

from bench.chatload import run_chat
from bench.fixtures import create_accounts, delete_accounts, run_prefix
from bench.nodes import start_nodes
from bench.procs import log, raise_nofile_limit
from bench.services import Services
from bench.wsclient import Member


async def chat(
    services: Services,
    *,
    nodes: int,
    conversations: int,
    members: int,
    rate: float,
    duration: float,
    warmup: float,
    senders: int | None = None,
) -> dict[str, Any]:
    """Run the chat benchmark on ``nodes`` fresh nodes; return the report."""
    raise_nofile_limit()
    prefix = run_prefix("bchat")
    accounts = await create_accounts(
        services, prefix, conversations * members, friend_groups_of=members
    )
    log(f"{len(accounts)} users {prefix}* with sessions and tokens created")
    try:
        procs = await start_nodes(services, nodes, AGORA_WS_RATE_LIMIT="0")
        try:
            rooms = [
                [
                    Member(str(a.user_id), a.token, procs[k % nodes].url)
                    for k, a in enumerate(accounts[c * members : (c + 1) * members])
                ]
                for c in range(conversations)
            ]
            cpu_before = [p.cpu_seconds() for p in procs]
            result = await run_chat(
                rooms, rate=rate, duration=duration, warmup=warmup, senders=senders
            )
            rss = [p.rss_mib() for p in procs]
            cpu = [
                round(100 * (p.cpu_seconds() - c) / (warmup + duration), 1)
                for p, c in zip(procs, cpu_before, strict=False)
            ]
        finally:
            for p in procs:
                p.stop()
    finally:
        await delete_accounts(services, prefix)
    return {
        "target": "agora-chat",
        "nodes": nodes,
        **result.figures(),
        "server_rss_mib": rss,
        "server_cpu_pct": cpu,
    }
