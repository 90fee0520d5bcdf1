"""Search tests' harness: the same suite runs on every backend.

PostgreSQL always; Elasticsearch as well when ``AGORA_TEST_ELASTICSEARCH_URL`` names a server
(none runs on our machines: see the README). The test database is shared by the session, so
every test searches for words of its own (:func:`word`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.config import Config
from agora.server import keys
from tests.support.api import User
from tests.support.events import settled

ELASTICSEARCH_URL = os.environ.get("AGORA_TEST_ELASTICSEARCH_URL") or None
BACKENDS = ["postgres", *(["elasticsearch"] if ELASTICSEARCH_URL else [])]


def word(prefix: str = "w") -> str:
    """A word no other test's text holds (letters only, so no stemmer changes it)."""
    return prefix + "".join(secrets.choice("bcdfghjklmnpqrstvwxz") for _ in range(8))


@dataclass
class Searcher:
    client: TestClient
    backend: str

    async def indexed(self) -> None:
        """Make what was written so far searchable: on PostgreSQL, as if the windows a node
        keeps for a moment had run out; on Elasticsearch, through the events and a refresh."""
        if self.backend == "postgres":
            self.client.app[keys.SEARCH].backend.windows.clear()  # type: ignore[attr-defined]
            return
        await settled(self.client)
        from elasticsearch import AsyncElasticsearch

        prefix = self.client.app[keys.CONFIG].search.index_prefix
        async with AsyncElasticsearch(ELASTICSEARCH_URL) as es:
            await es.indices.refresh(index=f"{prefix}-*")

    async def get(
        self, user: User | None, q: str, type: str = "posts", status: int = 200, **params: Any
    ) -> Any:
        query = urlencode({"q": q, "type": type, **params})
        resp = await self.client.get(
            f"/api/v1/search?{query}", headers=user.headers if user else {}
        )
        body = await resp.json()
        assert resp.status == status, (q, type, resp.status, body)
        return body

    async def ids(self, user: User, q: str, type: str = "posts", **params: Any) -> list[str]:
        """The ids of every result, following next_cursor to the end."""
        await self.indexed()
        out: list[str] = []
        cursor: str | None = None
        for _ in range(200):
            page = await self.get(user, q, type, **params, **({"cursor": cursor} if cursor else {}))
            out += [item[item["type"]]["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return out
        raise AssertionError("pagination did not end")


# Fixtures of the search test modules (registered in tests/conftest.py as a plugin).


@pytest.fixture(params=BACKENDS)
async def searcher(
    request: pytest.FixtureRequest,
    make_client: Callable[..., Awaitable[TestClient]],
    config: Config,
) -> Searcher:
    """A node on each backend (Elasticsearch: indices of this test's own)."""
    if request.param == "postgres":
        return Searcher(await make_client(), "postgres")
    client = await make_client(
        elasticsearch_url=ELASTICSEARCH_URL,
        search=replace(config.search, index_prefix=f"agoratest{word('')}"),
    )
    return Searcher(client, "elasticsearch")


@pytest.fixture
async def db(config: Config) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test database, for rows a test writes in SQL."""
    assert config.database.url
    conn = await asyncpg.connect(config.database.url)
    yield conn
    await conn.close()


NO_PG_TRGM = "this PostgreSQL has no pg_trgm (the embedded one has no contrib): built-in trigrams"


async def has_pg_trgm(database_url: str) -> bool:
    """Whether migration 0010 could install pg_trgm on the test database's server."""
    conn = await asyncpg.connect(database_url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm')"
            )
        )
    finally:
        await conn.close()
