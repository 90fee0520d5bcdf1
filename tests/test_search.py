"""GET /api/v1/search end to end: each operator, the three kinds, snippets, ranking, pagination,
limits and errors. The same suite runs on every backend of tests/support/search.py."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agora.clock import ManualClock
from agora.config import Config
from agora.search.postgres import PostgresBackend
from agora.server import keys
from agora.storage.search import TEXT_WINDOW, WINDOW
from tests.conftest import AppFactory
from tests.support.api import (
    User,
    befriend,
    create_post,
    expect_error,
    friends_in_a_direct_conversation,
    register,
)
from tests.support.events import settled
from tests.support.search import NO_PG_TRGM, Searcher, has_pg_trgm, word


async def post(client: TestClient, author: User, text: str, visibility: str = "public") -> str:
    return str((await create_post(client, author, text, visibility))["id"])


async def insert_post(
    db: asyncpg.Connection,
    author: User,
    text: str,
    at: datetime,
    media: bool = False,
) -> str:
    """A post written at ``at`` (an id of that time, as the seed makes them)."""
    post_id = await db.fetchval(
        """INSERT INTO content.posts (id, author_id, text, visibility, media_ids, created_at,
                                      updated_at)
           VALUES (agora.next_id($4), $1, $2, 'public', $3, $4, $4) RETURNING id""",
        int(author.id),
        text,
        [1] if media else [],
        at,
    )
    return str(post_id)


# -- posts: one operator at a time ------------------------------------------------------------


async def test_every_word_must_match(searcher: Searcher) -> None:
    client = searcher.client
    a, w1, w2 = await register(client), word(), word()
    both = await post(client, a, f"{w1} and {w2}")
    first = await post(client, a, f"only {w1}")
    second = await post(client, a, f"only {w2}")
    assert set(await searcher.ids(a, w1)) == {both, first}
    assert set(await searcher.ids(a, f"{w1} {w2}")) == {both}
    assert set(await searcher.ids(a, w2.upper())) == {both, second}  # case does not matter


async def test_stems_stop_words_and_other_languages(searcher: Searcher) -> None:
    client = searcher.client
    a, w = await register(client), word()
    runs = await post(client, a, f"the runner runs every morning {w}")
    cafe = await post(client, a, f"un café très noir {w}")
    assert set(await searcher.ids(a, f"running {w}")) == {runs}  # english stems
    assert set(await searcher.ids(a, f"the {w}")) == {runs}  # stop words as typed
    assert set(await searcher.ids(a, f"café {w}")) == {cafe}  # any language, as typed
    assert set(await searcher.ids(a, f"TRÈS {w}")) == {cafe}


async def test_phrases_match_words_in_order(searcher: Searcher) -> None:
    client = searcher.client
    a, w1, w2, w3 = await register(client), word(), word(), word()
    in_order = await post(client, a, f"{w1} {w2} {w3}")
    await post(client, a, f"{w2} {w1} {w3}")
    assert set(await searcher.ids(a, f'"{w1} {w2}"')) == {in_order}
    assert set(await searcher.ids(a, f'"{w1}   {w2}" {w3}')) == {in_order}


async def test_exclusions(searcher: Searcher) -> None:
    client = searcher.client
    a, w, x, y = await register(client), word(), word(), word()
    plain = await post(client, a, f"{w} alone")
    with_x = await post(client, a, f"{w} with {x}")
    with_phrase = await post(client, a, f"{w} with {x} {y}")
    assert set(await searcher.ids(a, f"{w} -{x}")) == {plain}
    assert set(await searcher.ids(a, f'{w} -"{x} {y}"')) == {plain, with_x}
    assert with_phrase in await searcher.ids(a, w)


async def test_from_names_authors(searcher: Searcher) -> None:
    client = searcher.client
    a, b, w = await register(client), await register(client), word()
    by_a = await post(client, a, f"{w} by a")
    by_b = await post(client, b, f"{w} by b")
    assert set(await searcher.ids(a, f"{w} from:{b.username}")) == {by_b}
    assert set(await searcher.ids(a, f"{w} from:{b.username.upper()}")) == {by_b}
    assert set(await searcher.ids(a, f"{w} from:{a.username} from:{b.username}")) == {by_a, by_b}
    # An unknown name matches nothing (not an error); a from: alone is a query.
    assert await searcher.ids(a, f"{w} from:nobody_{word()}") == []
    assert by_b in await searcher.ids(a, f"from:{b.username}")


async def test_before_and_after_are_utc_days(searcher: Searcher, db: asyncpg.Connection) -> None:
    if searcher.backend != "postgres":
        pytest.skip("rows written in SQL reach Elasticsearch only through a reindex")
    client = searcher.client
    a, w = await register(client), word()
    day = lambda d, h=12: datetime(2026, 1, d, h, tzinfo=UTC)  # noqa: E731
    early = await insert_post(db, a, f"{w} early", day(10))
    edge = await insert_post(db, a, f"{w} at midnight", day(20, 0))
    late = await insert_post(db, a, f"{w} late", day(25, 23))
    assert set(await searcher.ids(a, f"{w} after:2026-01-20")) == {edge, late}  # inclusive
    assert set(await searcher.ids(a, f"{w} before:2026-01-20")) == {early}  # exclusive
    assert set(await searcher.ids(a, f"{w} after:2026-01-11 before:2026-01-25")) == {edge}
    assert await searcher.ids(a, f"{w} after:2026-01-20 before:2026-01-20") == []
    assert set(await searcher.ids(a, f"from:{a.username} before:2026-02-01")) == {
        early,
        edge,
        late,
    }


async def test_has_media(searcher: Searcher, db: asyncpg.Connection) -> None:
    if searcher.backend != "postgres":
        pytest.skip("rows written in SQL reach Elasticsearch only through a reindex")
    client = searcher.client
    a, w = await register(client), word()
    now = datetime.now(UTC)
    with_media = await insert_post(db, a, f"{w} a photo", now, media=True)
    await insert_post(db, a, f"{w} just text", now)
    assert set(await searcher.ids(a, f"{w} has:media")) == {with_media}
    assert with_media in await searcher.ids(a, f"from:{a.username} has:media")


# -- what a result carries -------------------------------------------------------------------


async def test_post_results_carry_the_post_and_an_escaped_highlighted_snippet(
    searcher: Searcher,
) -> None:
    client = searcher.client
    a, w = await register(client), word()
    text = f"careful: <script>alert(1)</script> & {w} \ue000forged\ue001 tea"
    post_id = await post(client, a, text)
    await searcher.indexed()
    page = await searcher.get(a, w)
    [item] = page["items"]
    assert item["type"] == "post"
    assert item["post"]["id"] == post_id and item["post"]["text"] == text
    assert item["post"]["author"]["username"] == a.username
    snippet = item["snippet"]
    assert f"<mark>{w}</mark>" in snippet
    assert "<script>" not in snippet and "forged" in snippet
    assert snippet.count("<mark>") == 1  # the stored markers forge nothing


async def test_ranking_prefers_the_exact_form_then_the_newer(searcher: Searcher) -> None:
    client = searcher.client
    a, w = await register(client), word()
    exact = await post(client, a, f"running {w}")
    stemmed = await post(client, a, f"runs {w}")
    older = await post(client, a, f"{w} swimming")
    newer = await post(client, a, f"{w} swimming")
    ranked = await searcher.ids(a, f"running {w}")
    assert ranked == [exact, stemmed]
    assert await searcher.ids(a, f"swimming {w}") == [newer, older]


async def test_pages_follow_the_cursor_without_repeats(searcher: Searcher) -> None:
    client = searcher.client
    a, w = await register(client), word()
    made = {await post(client, a, f"{w} number {i}") for i in range(45)}
    await searcher.indexed()
    pages = []
    cursor = None
    while True:
        page = await searcher.get(a, w, limit=20, **({"cursor": cursor} if cursor else {}))
        pages.append(len(page["items"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [20, 20, 5]
    found = await searcher.ids(a, w, limit=7)
    assert len(found) == len(set(found)) == 45 and set(found) == made


async def test_windows_page_through_every_match(searcher: Searcher, db: asyncpg.Connection) -> None:
    """More matches than one ranking window: every one comes, once, window after window."""
    if searcher.backend != "postgres":
        pytest.skip("the ranking window is the PostgreSQL backend's")
    a, w = await register(searcher.client), word()
    now = datetime.now(UTC)
    await db.executemany(
        """INSERT INTO content.posts (id, author_id, text, visibility, created_at, updated_at)
           VALUES (agora.next_id($3), $1, $2, 'public', $3, $3)""",
        [(int(a.id), f"{w} {'again ' * (i % 3)}{i}", now) for i in range(2 * WINDOW + 50)],
    )
    found = await searcher.ids(a, w, limit=100)
    assert len(found) == len(set(found)) == 2 * WINDOW + 50
    # Two words take the other way (search.newest_posts), in windows of TEXT_WINDOW.
    both = await searcher.ids(a, f"{w} again", limit=30)
    assert len(both) == len(set(both)) == sum(1 for i in range(2 * WINDOW + 50) if i % 3)
    assert len(both) > 2 * TEXT_WINDOW


async def test_users_by_prefix_and_within_a_typo(searcher: Searcher, trigrams: str | None) -> None:
    client = searcher.client
    if trigrams is not None:
        app = client.app
        service = app[keys.SEARCH]
        assert isinstance(service.backend, PostgresBackend)
        service.backend = PostgresBackend(service.store, app[keys.CLOCK], trigrams=trigrams)
    tag = word("")[:6]
    zeph = await register(client, f"zephyrine_{tag}", display_name=f"Zephyrine Quill{tag}")
    other = await register(client, f"zed_{tag}", display_name=f"Someone Else{tag}")
    viewer = await register(client)

    async def names(q: str) -> list[str]:
        await searcher.indexed()
        page = await searcher.get(viewer, q, "users", limit=50)
        assert all(item["type"] == "user" for item in page["items"])
        return [item["user"]["username"] for item in page["items"]]

    assert zeph.username in await names(f"zephyr_{tag[:3]}")  # username prefix
    assert zeph.username in await names(f"zefyrine_{tag}")  # a typo
    assert zeph.username in await names(f"quill{tag}")  # a word of the display name
    assert (await names(zeph.username.upper()))[0] == zeph.username  # exact name first
    assert (await names(f"someone else{tag}"))[0] == other.username  # display name prefix
    assert zeph.username not in await names(f"zephyrine_{tag} -quill{tag}")


@pytest.fixture(params=[None, "pg_trgm", "builtin"])
async def trigrams(
    request: pytest.FixtureRequest, searcher: Searcher, database_url: str
) -> str | None:
    """User search with pg_trgm and with the embedded PostgreSQL's built-in trigrams (pg_trgm
    where the server has it: the machine's and CI's; not the embedded one)."""
    if request.param is not None and searcher.backend != "postgres":
        pytest.skip("trigram modes are the PostgreSQL backend's")
    if request.param == "pg_trgm" and not await has_pg_trgm(database_url):
        pytest.skip(NO_PG_TRGM)
    return request.param  # type: ignore[no-any-return]


async def test_messages_of_my_conversations_only(searcher: Searcher) -> None:
    client = searcher.client
    a, b, conversation = await friends_in_a_direct_conversation(client)
    outsider, w = await register(client), word()
    sent = []
    for i, (sender, text) in enumerate([(a, f"hello {w}"), (b, f"{w} to you too"), (a, "bye")]):
        resp = await client.post(
            f"/api/v1/conversations/{conversation}/messages",
            headers=sender.headers,
            json={"client_id": f"c{i}", "text": text},
        )
        assert resp.status == 201, await resp.text()
        sent.append(await resp.json())
    await searcher.indexed()
    page = await searcher.get(b, w, "messages")
    assert [item["message"]["id"] for item in page["items"]] == [sent[1]["id"], sent[0]["id"]]
    first = page["items"][1]
    assert first["type"] == "message"
    assert first["message"]["conversation_id"] == conversation and first["message"]["seq"] == 1
    assert first["sender"]["username"] == a.username
    assert f"<mark>{w}</mark>" in first["snippet"]
    assert await searcher.ids(outsider, w, "messages") == []
    assert await searcher.ids(a, f"{w} from:{b.username}", "messages") == [sent[1]["id"]]


# -- limits and errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "-only -exclusions"}, "q"),
        ({"q": "before:2026-13-01"}, "q"),
        ({"q": "ok", "type": "comments"}, "type"),
        ({"q": "ok", "limit": "101"}, "limit"),
        ({"q": "ok from:bob", "type": "users"}, "q"),
        ({"q": "ok has:media", "type": "messages"}, "q"),
        ({"q": "ok", "cursor": "not-a-cursor"}, "cursor"),
    ],
)
async def test_bad_queries_answer_400_naming_the_field(
    client: TestClient, params: dict[str, str], field: str
) -> None:
    a = await register(client)
    resp = await client.get("/api/v1/search", params=params, headers=a.headers)
    error = await expect_error(resp, 400, "validation_error")
    assert field in error["fields"], error


async def test_a_cursor_belongs_to_its_search(client: TestClient) -> None:
    a, w = await register(client), word()
    for i in range(3):
        await post(client, a, f"{w} {i}")
    resp = await client.get("/api/v1/search", params={"q": w, "limit": "1"}, headers=a.headers)
    cursor = (await resp.json())["next_cursor"]
    assert cursor
    for params in ({"q": f"{w} other"}, {"q": w, "type": "messages"}):
        resp = await client.get(
            "/api/v1/search", params={**params, "cursor": cursor}, headers=a.headers
        )
        error = await expect_error(resp, 400, "validation_error")
        assert "cursor" in error["fields"]


async def test_search_needs_an_account(client: TestClient) -> None:
    resp = await client.get("/api/v1/search", params={"q": "hello"})
    await expect_error(resp, 401, "unauthorized")


async def test_rate_limit_per_account(make_client: AppFactory, config: Config) -> None:
    client = await make_client(limits=config.limits.but(search=(3, 60)))
    a, b = await register(client), await register(client)
    for _ in range(3):
        resp = await client.get("/api/v1/search", params={"q": "hello"}, headers=a.headers)
        assert resp.status == 200
    resp = await client.get("/api/v1/search", params={"q": "hello"}, headers=a.headers)
    await expect_error(resp, 429, "rate_limited")
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # A query refused before it is run (400) costs nothing; others are not held back.
    resp = await client.get("/api/v1/search", params={"q": "hello"}, headers=b.headers)
    assert resp.status == 200


async def test_befriending_opens_friends_posts(searcher: Searcher) -> None:
    client = searcher.client
    a, b, w = await register(client), await register(client), word()
    friends_only = await post(client, a, f"{w} for friends", "friends")
    assert await searcher.ids(b, w) == []
    await befriend(client, a, b)
    assert await searcher.ids(b, w) == [friends_only]


async def test_elasticsearch_down_costs_search_only(
    make_client: AppFactory, config: Config
) -> None:
    """Configured but unreachable (a closed port): search answers 503 search_unavailable at
    once, /readyz reports it but stays 200 (the node serves everything else), and writes,
    reads and their event consumers go on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = await make_client(
        elasticsearch_url=f"http://127.0.0.1:{port}",
        search=replace(config.search, index_prefix=f"agoratest{word('')}", timeout=2.0),
    )
    a, b = await register(client), await register(client)
    resp = await client.get("/api/v1/search", params={"q": "hello"}, headers=a.headers)
    await expect_error(resp, 503, "search_unavailable")
    assert resp.headers["Retry-After"]

    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["checks"]["search"]["status"] == "unavailable"
    assert body["checks"]["search"]["backend"] == "elasticsearch"

    await befriend(client, a, b)
    post_id = await post(client, a, "still posting", "friends")
    feed = await client.get("/api/v1/feed", headers=b.headers)
    assert post_id in [p["id"] for p in (await feed.json())["items"]]
    await settled(client)  # the notifications consumer is not held up by the search one
    resp = await client.get("/api/v1/notifications", headers=a.headers)
    kinds = [n["kind"] for n in (await resp.json())["items"]]
    assert "friend_accepted" in kinds


async def test_a_node_shares_windows_for_a_moment(client: TestClient) -> None:
    """Searches of the same words share a ranking window for AGORA_SEARCH_CACHE_TTL: a new
    post shows once it runs out; a deleted one is gone at once all the same (re-checked)."""
    clock = ManualClock(start=time.time())
    service = client.app[keys.SEARCH]
    backend = PostgresBackend(service.store, clock, cache_ttl=2.0, cache_size=10)
    service.backend = backend
    a, b, w = await register(client), await register(client), word()
    first = await post(client, a, f"{w} first")
    clock.advance(0.5)  # the node's clock past the post

    async def found(user: User) -> list[str]:
        page = await searcher_get(client, user, w)
        return [item["post"]["id"] for item in page["items"]]

    assert await found(a) == [first]
    second = await post(client, a, f"{w} second")
    assert await found(b) == [first]  # the window a's search made, shared
    resp = await client.delete(f"/api/v1/posts/{first}", headers=a.headers)
    assert resp.status == 204
    assert await found(b) == []  # deleted: gone at once
    clock.advance(2.0)
    assert await found(b) == [second]
    assert backend.windows.hits >= 2 and len(backend.windows) <= 10
    # The node's own backend's windows are on /metrics.
    text = await (await client.get("/metrics")).text()
    assert "agora_search_window_cache_hits_total" in text


async def searcher_get(client: TestClient, user: User, q: str) -> Any:
    resp = await client.get("/api/v1/search", params={"q": q}, headers=user.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_both_ways_to_the_newest_matches_agree(db: asyncpg.Connection) -> None:
    """search.newest_posts (migration 0011) reads the matches from the GIN index, or walks the
    newest posts up to a budget and takes what is missing from the index below them: every way
    gives the same newest matches, in a range too."""
    author = await db.fetchval(
        "INSERT INTO accounts.users (username, email, password_hash) VALUES ($1, $1 || '@x.test',"
        " 'x') RETURNING id",
        word("u"),
    )
    w1, w2 = word(), word()
    now = datetime.now(UTC)
    await db.executemany(
        """INSERT INTO content.posts (id, author_id, text, visibility, created_at, updated_at)
           VALUES (agora.next_id($3), $1, $2, 'public', $3, $3)""",
        [(author, f"{w1} {w2 if i % 3 == 0 else 'other'} {i}", now) for i in range(90)],
    )
    q = "search.query($1::text[], '{}', '{}', '{}')"
    sql = f"SELECT n.id FROM search.newest_posts({q}, $2, $3, 25, $4, $5) AS n(id)"
    top = 2**53
    everything = [r["id"] for r in await db.fetch(sql, [w1], top, 0, 1000, False)]
    middle = (everything[3], everything[20])  # a range inside the matches
    for words, (upper, lower) in (([w1], (top, 0)), ([w1, w2], (top, 0)), ([w1], middle)):
        ways = {
            "index": await db.fetch(sql, words, upper, lower, 1000, False),
            "walk": await db.fetch(sql, words, upper, lower, 100_000, True),
            "walk, then index": await db.fetch(sql, words, upper, lower, 4, True),
            "estimate": await db.fetch(sql, words, upper, lower, 10_000, None),
        }
        found = {way: [r["id"] for r in rows] for way, rows in ways.items()}
        expected = found["index"]
        assert expected == sorted(expected, reverse=True)
        assert all(lower <= i < upper for i in expected)
        assert len(expected) == (17 if (upper, lower) == middle else 25)
        assert all(ids == expected for ids in found.values()), found
