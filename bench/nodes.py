"""Agora nodes as child processes, and signing in through their real API."""

from __future__ import annotations

import asyncio
import secrets
import sys

import aiohttp

from bench.procs import BenchError, ServerProcess, free_port, log
from bench.services import Services

LOGIN_CONCURRENCY = 4  # argon2id verification is the node's bottleneck; more only queues


def spawn_node(services: Services, node_id: str, **env: str) -> ServerProcess:
    """Start ``python -m agora serve`` on a free port, on the bench's resolved services."""
    port = free_port()
    return ServerProcess(
        node_id,
        [sys.executable, "-m", "agora", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=services.node_env(node_id, **env),
        port=port,
    )


async def start_nodes(services: Services, count: int, **env: str) -> list[ServerProcess]:
    """Start ``count`` nodes and wait until each is ready. Node ids are fresh per run
    (``bench-<hex>-<i>``), so a node never inherits the cluster registry entries of an earlier
    run's node. On failure the ones started are stopped before the error propagates."""
    nodes: list[ServerProcess] = []
    run = secrets.token_hex(3)
    try:
        for i in range(count):
            nodes.append(spawn_node(services, f"bench-{run}-{i + 1}", **env))
        await asyncio.gather(*(node.wait_ready("/readyz") for node in nodes))
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    log("node(s) ready: " + ", ".join(f"{n.url} (pid {n.pid})" for n in nodes))
    return nodes


async def login_all(url: str, logins: list[str], password: str) -> dict[str, str]:
    """``POST /api/v1/auth/login`` for each login; return ``{login: access_token}`` for those
    that succeeded (failures are reported on stderr and left out)."""
    tokens: dict[str, str] = {}
    failures: dict[int, int] = {}
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

    async def one(session: aiohttp.ClientSession, login: str) -> None:
        body = {"login": login, "password": password}
        async with gate, session.post(f"{url}/api/v1/auth/login", json=body) as resp:
            if resp.status == 200:
                tokens[login] = (await resp.json())["access_token"]
            else:
                failures[resp.status] = failures.get(resp.status, 0) + 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        try:
            await asyncio.gather(*(one(session, login) for login in logins))
        except aiohttp.ClientError as exc:
            raise BenchError(f"logging in at {url} failed: {exc}") from exc
    if failures:
        log(
            f"{sum(failures.values())} of {len(logins)} logins failed (HTTP status: count "
            f"{failures})"
        )
    return tokens
