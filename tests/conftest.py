"""Session-wide real services and a fresh database; per-test apps on real sockets."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from agora.config import Config, load_config
from agora.server.app import create_app
from agora.storage.migrations import migrate
from tests.support.events import amqp_namespace, delete_namespace, exchange_name, require_amqp
from tests.support.services import ServiceSet, create_database, drop_database

# Fixtures several suites share: searcher and db (search), moto_endpoint (media on S3).
pytest_plugins = ("tests.support.search", "tests.support.media")

JWT_SECRET = "test-secret-" + "x" * 52  # 64 bytes: long enough for HS512 too (a test forges one)


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceSet]:
    found = ServiceSet()
    found.start()
    yield found
    found.stop()


@pytest.fixture(scope="session")
def database_url(services: ServiceSet) -> Iterator[str]:
    """A fresh database for this test session, migrated, dropped at the end."""
    name = f"agora_test_{secrets.token_hex(4)}"
    asyncio.run(create_database(services.pg_admin_dsn, name))
    url = services.database_dsn(name)
    asyncio.run(migrate(url))
    yield url
    asyncio.run(drop_database(services.pg_admin_dsn, name))


@pytest.fixture(scope="session")
def redis_prefix(services: ServiceSet) -> Iterator[str]:
    """This session's Redis key namespace, deleted at the end."""
    prefix = f"agoratest{secrets.token_hex(4)}:"
    yield prefix

    async def clean() -> None:
        client = aioredis.Redis.from_url(services.redis_url)
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
        await client.aclose()

    asyncio.run(clean())


@pytest.fixture(scope="session")
def amqp_exchange(services: ServiceSet) -> Iterator[str]:
    """This session's RabbitMQ exchange (its queues are named after it), deleted at the end."""
    exchange = exchange_name()
    yield exchange
    if services.amqp_url is not None:
        asyncio.run(delete_namespace(services.amqp_url, exchange))


@pytest.fixture
def config(
    services: ServiceSet,
    database_url: str,
    redis_prefix: str,
    amqp_exchange: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Config:
    base = load_config(
        {
            "AGORA_ENV": "test",
            "AGORA_DATABASE_URL": database_url,
            "AGORA_REDIS_URL": services.redis_url,
            # Each test its own namespace inside the session's: a node a test left registered
            # (killed, or stopped on a manual clock) must not be a live peer of the next test's.
            "AGORA_REDIS_PREFIX": f"{redis_prefix}{secrets.token_hex(3)}:",
            "AGORA_JWT_SECRET": JWT_SECRET,
            "AGORA_DATA_DIR": str(tmp_path_factory.mktemp("var")),
            "AGORA_DB_POOL_MIN": "1",
            "AGORA_DB_POOL_MAX": "10",
            "AGORA_EVENTS_EXCHANGE": amqp_exchange,
            # Node processes killed by tests leave leased deliveries behind: short leases let
            # the next test's consumers take them over within seconds.
            "AGORA_EVENTS_LEASE": "5",
            # Every request goes through the rate limits, a thousand times looser than the
            # defaults so that no test trips them by accident (tests/test_ratelimit.py sets
            # its own).
            "AGORA_RATE_LIMIT_SCALE": "1000",
        }
    )
    # Cheap argon2 parameters: the hashing itself is argon2-cffi's business, not ours.
    return replace(base, auth=replace(base.auth, password_time_cost=1, password_memory_kib=8192))


AppFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_client(
    aiohttp_client: Callable[..., Awaitable[TestClient]], config: Config
) -> AsyncIterator[AppFactory]:
    """Build a node app (optionally with config changes) and a client on a real socket."""

    async def make(app: web.Application | None = None, **changes: object) -> TestClient:
        return await aiohttp_client(app or create_app(config.with_overrides(**changes)))

    yield make


@pytest.fixture
async def client(make_client: AppFactory) -> TestClient:
    return await make_client()


@pytest.fixture(params=["in-process", "rabbitmq"])
async def transport(
    request: pytest.FixtureRequest, config: Config, services: ServiceSet
) -> AsyncIterator[Config]:
    """The node config for each event transport: in process (queues in PostgreSQL), then
    through the machine's RabbitMQ in an exchange and queues of this test's own."""
    if request.param == "in-process":
        yield config
        return
    url = require_amqp(services)
    async with amqp_namespace(url) as exchange:
        yield config.with_overrides(amqp_url=url, events=replace(config.events, exchange=exchange))
