"""The Redis connection and every key name Agora uses (one place, one prefix).

Redis holds only what can be rebuilt: feed caches, presence, the cluster registry and the
node inbox streams. PostgreSQL is the record; losing Redis loses no message or post.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

# Blocking stream reads (XREAD BLOCK) must return well within the socket timeout.
SOCKET_TIMEOUT = 10.0
BLOCK_MS = 2000


def connect(url: str, max_connections: int = 256) -> aioredis.Redis:
    """A client whose pool waits for a free connection under bursts instead of failing
    (redis-py's default pool raises past 100 connections)."""
    options: dict[str, object] = {
        "socket_connect_timeout": 5,
        "socket_timeout": SOCKET_TIMEOUT,
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=SOCKET_TIMEOUT, **options
    )
    return aioredis.Redis(connection_pool=pool, decode_responses=False)


class Keys:
    """Key names under one prefix, so several deployments (or test runs) can share a Redis."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @property
    def revocations(self) -> str:
        """Stream of revoked login-session ids, read by every node."""
        return f"{self.prefix}revocations"

    @property
    def suspensions(self) -> str:
        """Stream of suspension changes (user id, on/off), read by every node."""
        return f"{self.prefix}suspensions"

    # -- the cluster ----------------------------------------------------------------------------

    # A node id here is a node *life*, ``name~incarnation`` (see agora.cluster.nodes): what one
    # run of a node wrote is never mistaken for what its next run writes.

    @property
    def nodes(self) -> str:
        """Sorted set: node life -> last heartbeat (ms since the epoch; 0 once it left)."""
        return f"{self.prefix}nodes"

    @property
    def graves(self) -> str:
        """Sorted set: buried node life -> when (ms), until what it left is surely cleared."""
        return f"{self.prefix}graves"

    def inbox(self, node_id: str) -> str:
        """Stream a node life reads: deliveries, forwarded commands and replies addressed to it."""
        return f"{self.prefix}inbox:{node_id}"

    def where(self, user_id: int) -> str:
        """Hash: node life -> number of the user's sessions on it."""
        return f"{self.prefix}where:{user_id}"

    def node_users(self, node_id: str) -> str:
        """Set of users with sessions on a node life, so a dead life's presence can be cleared."""
        return f"{self.prefix}nodeusers:{node_id}"

    def online(self, user_id: int) -> str:
        """Set while the user's friends have been told 'online' (transitions are announced once)."""
        return f"{self.prefix}online:{user_id}"

    def rate(self, bucket: str) -> str:
        return f"{self.prefix}rate:{bucket}"

    def feed(self, user_id: int) -> str:
        """Sorted set of post ids (score = id) for one user's feed; see storage/feed_cache.py."""
        return f"{self.prefix}feed:{user_id}"

    def feed_generation(self, user_id: int) -> str:
        """Bumped whenever the feed is invalidated, so a rebuild that raced it is discarded."""
        return f"{self.prefix}feedgen:{user_id}"

    # -- analytics (services/stats.py) ----------------------------------------------------------

    def active(self, day: str) -> str:
        """HyperLogLog of the users active on one UTC day (``YYYY-MM-DD``), with an expiry."""
        return f"{self.prefix}active:{day}"

    @property
    def node_sessions(self) -> str:
        """Hash: node life -> WebSocket sessions open on it (each node writes its own field)."""
        return f"{self.prefix}nodesessions"


StreamEntry = tuple[bytes, dict[bytes, bytes]]


async def stream_tail(client: aioredis.Redis, stream: str) -> bytes:
    """The id of the newest entry of ``stream`` (``0-0`` when empty): read from there on."""
    entries = await client.xrevrange(stream, count=1)
    return cast(bytes, entries[0][0]) if entries else b"0-0"


async def read_stream(
    client: aioredis.Redis, stream: str, after: bytes, count: int
) -> list[StreamEntry]:
    """Entries of ``stream`` after ``after``, waiting up to ``BLOCK_MS`` for the first."""
    reply = await client.xread({stream: after}, block=BLOCK_MS, count=count)
    entries: list[StreamEntry] = []
    for _name, items in cast(list[tuple[bytes, list[StreamEntry]]], reply or []):
        entries.extend(items)
    return entries


async def ping(client: aioredis.Redis, timeout: float = 2.0) -> bool:
    import asyncio

    try:
        return bool(await asyncio.wait_for(client.ping(), timeout))
    except (OSError, TimeoutError, aioredis.RedisError):
        return False
