"""Routing deliveries to the nodes that hold a user's sessions (``Placements``), on real Redis.

The router posts at once to the nodes its cache names and confirms in Redis afterwards; these
tests pin the two promises that makes: nothing less reaches a node than a lookup after the
routing would have sent, and per node, deliveries are posted in the order they were routed.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agora.clock import Clock
from agora.cluster.nodes import NodeRegistry
from agora.cluster.presence import Placements, Presence
from agora.storage.redis import Keys
from tests.support.services import ServiceSet


async def _no_announce(user_id: int, status: str) -> None:
    return None


class Cluster:
    """Node "a" routes; "b" (and "a" itself) register sessions through their own Presence."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        keys = Keys(f"{prefix}placements{secrets.token_hex(3)}:")
        self.registry = NodeRegistry(redis, keys, "a", Clock())
        self.placements = Placements(redis, keys, self.registry, window=0.002)
        self.presence = {
            node: Presence(redis, keys, NodeRegistry(redis, keys, node, Clock()), _no_announce)
            for node in ("a", "b", "c")
        }
        self.posts: list[tuple[str, int, list[int]]] = []  # (node, routing number, users)

    def route(self, number: int, users: list[int]) -> None:
        self.placements.route(users, lambda node, there: self.posts.append((node, number, there)))


@pytest.fixture
async def cluster(services: ServiceSet, redis_prefix: str) -> AsyncIterator[Cluster]:
    redis = aioredis.Redis.from_url(services.redis_url)
    made = Cluster(redis, redis_prefix)
    yield made
    await made.placements.stop()
    await redis.aclose()


async def test_cached_nodes_at_once_the_rest_once_redis_confirms(cluster: Cluster) -> None:
    x, y = 101, 102
    cluster.route(1, [x, y])
    await cluster.placements.confirmed()
    assert cluster.posts == []  # nobody anywhere
    await cluster.presence["b"].connected(x)
    # The cache still says "nowhere"; the confirmation after the routing finds b all the same.
    cluster.route(2, [x, y])
    assert cluster.posts == []
    await cluster.placements.confirmed()
    assert cluster.posts == [("b", 2, [x])]
    # Now cached: posted before route() returns, no Redis round trip in between.
    lookups = cluster.placements.lookups
    cluster.route(3, [x, y])
    assert cluster.posts[-1] == ("b", 3, [x])
    await cluster.placements.confirmed()
    assert cluster.placements.lookups == lookups + 1
    assert len(cluster.posts) == 2  # the confirmation found nothing the cache had missed


async def test_never_to_this_node_or_a_dead_one(cluster: Cluster) -> None:
    x = 201
    for node in ("a", "b", "c"):
        await cluster.presence[node].connected(x)
    cluster.registry.dead = frozenset({"c"})
    cluster.route(1, [x])
    await cluster.placements.confirmed()
    cluster.route(2, [x])
    await cluster.placements.confirmed()
    assert cluster.posts == [("b", 1, [x]), ("b", 2, [x])]


async def test_a_node_that_lost_its_sessions_is_dropped_from_the_cache(cluster: Cluster) -> None:
    x = 301
    await cluster.presence["b"].connected(x)
    cluster.route(1, [x])
    await cluster.placements.confirmed()
    await cluster.presence["b"].disconnected(x)
    cluster.route(2, [x])  # the stale entry still posts once (b drops it) ...
    await cluster.placements.confirmed()
    cluster.route(3, [x])  # ... and the confirmation corrected the cache
    await cluster.placements.confirmed()
    assert [number for _node, number, _users in cluster.posts] == [1, 2]
    assert cluster.placements.cached(x) == frozenset()


async def test_order_per_node_while_sessions_come_and_go(cluster: Cluster) -> None:
    users = [401, 402, 403]
    rng = random.Random(7)
    placed_before: dict[tuple[str, int], int] = {}  # (node, user) -> first routing after it
    for number in range(300):
        if number % 40 == 39:
            node, user = rng.choice(["b", "c"]), rng.choice(users)
            await cluster.presence[node].connected(user)
            placed_before.setdefault((node, user), number)
        cluster.route(number, users)
        # Routings land while lookups are in flight, between them, and in bursts.
        await asyncio.sleep(rng.choice([0, 0, 0, 0.0005, 0.002]))
    await cluster.placements.confirmed()
    for node in ("b", "c"):
        for user in users:
            # What one session on that node sees: in routing order, each routing once ...
            seen = [number for n, number, there in cluster.posts if n == node and user in there]
            assert seen == sorted(set(seen)), (node, user)
            # ... and every routing since its session was registered.
            if (node, user) in placed_before:
                first = placed_before[node, user]
                assert [n for n in seen if n >= first] == list(range(first, 300)), (node, user)
