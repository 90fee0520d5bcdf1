"""``chat``: group chat through Agora nodes, with the client code of ``baseline-ws``.

1 or 2 nodes are spawned on the same PostgreSQL and Redis (distinct ``AGORA_NODE_ID``,
``AGORA_WS_RATE_LIMIT=0``). ``conversations * members`` users are made in SQL, each room's
members mutual friends, one login session and minted access token each. Each room is created
with ``POST /api/v1/conversations`` by its first member; member k of every room connects to
node ``k % nodes``, so with 2 nodes every room spans both and most deliveries cross nodes.
``senders`` limits who sends to the first members of each room (one 50-member room with 5
senders is the room fan-out).

The nodes run with rate limits on (``limits="on"``, scaled out of reach: every ``send`` is
counted against the ``messages`` bucket in Redis) or off; ``limits="both"`` measures the
limiter's cost: fresh nodes and fresh conversations per round, the variants interleaved
(bench/limits.py), the same users throughout.
"""

from __future__ import annotations

from typing import Any

from bench.chatload import run_chat
from bench.events import _cpu_figures, _cpu_mark
from bench.fixtures import Account, create_accounts, delete_accounts, run_prefix
from bench.limits import (
    CHOICES,
    GOAL,
    VARIANTS,
    diff,
    goal_met,
    limits_env,
    pct_change,
    probe,
    schedule,
    summarise,
)
from bench.nodes import start_nodes
from bench.procs import BenchError, log, own_cpu_seconds, raise_nofile_limit
from bench.services import Services
from bench.wsclient import Member

# Figures of a round that the variants' summaries give (medians over the rounds; errors summed).
ROUND_KEYS = (
    "sends_per_s",
    "deliveries_per_s",
    "ack_ms.p50",
    "ack_ms.p90",
    "ack_ms.p99",
    "ack_ms.mean",
    "delivery_ms.p50",
    "delivery_ms.p90",
    "delivery_ms.p99",
    "delivery_ms.mean",
    "send_lag_ms.p99",
    "errors",
    "node_cpu_pct",
    "node_cpu_us_per_send",
    "client_cpu_pct",
    "cpu_pct.machine",
    "cpu_pct.everything_else",
)
_TOP_KEYS = tuple(dict.fromkeys(k.split(".")[0] for k in ROUND_KEYS))


async def _round(
    services: Services,
    accounts: list[Account],
    *,
    nodes: int,
    members: int,
    rooms: int,
    rate: float,
    duration: float,
    warmup: float,
    senders: int | None,
    limits: str,
) -> dict[str, Any]:
    """Fresh nodes with rate limits ``limits``, fresh conversations, one open-loop run."""
    procs = await start_nodes(services, nodes, AGORA_WS_RATE_LIMIT="0", **limits_env(limits))
    try:
        groups = [
            [
                Member(str(a.user_id), a.token, procs[k % nodes].url)
                for k, a in enumerate(accounts[c * members : (c + 1) * members])
            ]
            for c in range(rooms)
        ]
        limit_header = await probe(procs[0].url, accounts[0].token)
        cpu_before = [p.cpu_seconds() for p in procs]
        own_before, mark = own_cpu_seconds(), _cpu_mark()
        result = await run_chat(
            groups, rate=rate, duration=duration, warmup=warmup, senders=senders
        )
        after = _cpu_mark()
        rss = [p.rss_mib() for p in procs]
        cpu_s = [p.cpu_seconds() - c for p, c in zip(procs, cpu_before, strict=False)]
        cpu = [round(100 * c / (warmup + duration), 1) for c in cpu_s]
    finally:
        for p in procs:
            p.stop()
    # The whole machine over the same span (other work on the box shows as everything_else).
    known = 100 * (sum(cpu_s) + own_cpu_seconds() - own_before) / (after.at - mark.at)
    return {
        **result.figures(),
        "server_rss_mib": rss,
        "server_cpu_pct": cpu,
        "cpu_pct": _cpu_figures(mark, after, known),
        "x_ratelimit_limit": limit_header,
    }


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
    limits: str = "on",
    rounds: int = 3,
) -> dict[str, Any]:
    """Run the chat benchmark on ``nodes`` fresh nodes; return the report."""
    if limits not in CHOICES:
        raise BenchError(f"--limits must be one of {', '.join(CHOICES)}")
    if limits == "both" and rounds < 2:
        raise BenchError("--limits both needs --rounds >= 2")
    raise_nofile_limit()
    prefix = run_prefix("bchat")
    accounts = await create_accounts(
        services, prefix, conversations * members, friend_groups_of=members
    )
    log(f"{len(accounts)} users {prefix}* with sessions and tokens created")

    async def one(variant: str) -> dict[str, Any]:
        return await _round(
            services,
            accounts,
            nodes=nodes,
            members=members,
            rooms=conversations,
            rate=rate,
            duration=duration,
            warmup=warmup,
            senders=senders,
            limits=variant,
        )

    try:
        if limits != "both":
            out = await one(limits)
            return {"target": "agora-chat", "nodes": nodes, "limits": limits, **out}
        order = schedule(rounds)
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for i, variant in enumerate(order):
            log(f"round {i + 1}/{len(order)}: rate limits {variant}")
            out = await one(variant)
            out["node_cpu_pct"] = round(sum(out["server_cpu_pct"]), 1)
            # CPU and sends both over warm-up + window (the sends at `rate` throughout)
            out["node_cpu_us_per_send"] = round(out["node_cpu_pct"] * 1e4 / rate, 1)
            log(
                f"  {out['deliveries_per_s']:.0f} deliveries/s, ack p50 {out['ack_ms']['p50']} "
                f"p99 {out['ack_ms']['p99']} ms, delivery p99 {out['delivery_ms']['p99']} ms, "
                f"{out['errors']} errors, other work on the box "
                f"{out['cpu_pct']['everything_else']}% CPU"
            )
            results[variant].append(
                {k: out[k] for k in (*_TOP_KEYS, "server_cpu_pct", "x_ratelimit_limit")}
            )
    finally:
        await delete_accounts(services, prefix)
    variants = {v: {**summarise(results[v], ROUND_KEYS), "rounds": results[v]} for v in VARIANTS}
    on, off = variants["on"], variants["off"]
    delta = {
        "deliveries_per_s_pct": pct_change(on["deliveries_per_s"], off["deliveries_per_s"]),
        "ack_p50_ms": diff(on["ack_ms"]["p50"], off["ack_ms"]["p50"]),
        "ack_p99_ms": diff(on["ack_ms"]["p99"], off["ack_ms"]["p99"]),
        "delivery_p50_ms": diff(on["delivery_ms"]["p50"], off["delivery_ms"]["p50"]),
        "delivery_p99_ms": diff(on["delivery_ms"]["p99"], off["delivery_ms"]["p99"]),
        "node_cpu_pct": diff(on["node_cpu_pct"], off["node_cpu_pct"]),
        "node_cpu_us_per_send": diff(on["node_cpu_us_per_send"], off["node_cpu_us_per_send"]),
    }
    return {
        "target": "agora-chat-limits",
        "nodes": nodes,
        "limits": "both",
        "rate_limit_scale": services.node_env("-").get("AGORA_RATE_LIMIT_SCALE"),
        "parameters": {
            "conversations": conversations,
            "members": members,
            "senders": senders or members,
            "connections": conversations * members,
            "rate": rate,
            "duration_s": duration,
            "warmup_s": warmup,
            "rounds": rounds,
        },
        "order": order,
        "variants": variants,
        "delta": delta,
        "goal": GOAL,
        "met": goal_met(
            delta["deliveries_per_s_pct"],
            [delta["ack_p99_ms"], delta["delivery_p99_ms"]],
            on["errors"] + off["errors"],
        ),
    }
