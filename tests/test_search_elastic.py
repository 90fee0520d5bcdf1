"""The Elasticsearch backend without Elasticsearch (issue 10).

No Elasticsearch can run on our machines, so what Agora tells a cluster is tested as data: the
index templates (every analyzer a field names is defined, n-gram bounds the index accepts, field
types, the client's own DSL accepts every mapping), the query body of each type and operator
(the client's DSL must accept each one), the bulk actions each event makes, the reindex's one
atomic alias swap, and the cursor's round trip.

The request flows (the indexer's batch, a reindex, a search page) run through the real client
against :class:`Recorder`, a stand-in HTTP server that records each request and answers with
what a cluster would (it keeps aliases, not documents); the rows come from the real PostgreSQL.
The real fault, a configured cluster that is down, is a closed local port.
The same end-to-end suite as PostgreSQL's runs against a real cluster when
``AGORA_TEST_ELASTICSEARCH_URL`` is set (tests/test_search.py).
"""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
import json
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from elastic_transport import TransportError
from elasticsearch.dsl import Search, construct_field

from agora.clock import Clock
from agora.config import Config
from agora.errors import AppError, ErrorCode
from agora.events.types import (
    CommentCreated,
    Event,
    MessageStored,
    Payload,
    PostCreated,
    PostDeleted,
    PostUpdated,
    PostVisibilityChanged,
    UserRegistered,
    UserUpdated,
)
from agora.protocol.cursor import decode_cursor, encode_cursor, to_micros
from agora.search.backend import SEARCH_TYPES, Hit, Scope, SearchType
from agora.search.elastic import (
    HIGHLIGHT,
    MAPPINGS,
    ElasticBackend,
    html_snippet,
    index_name,
    index_template,
    messages_body,
    posts_body,
    users_body,
)
from agora.search.indexer import (
    IndexingFailed,
    SearchIndexer,
    Write,
    bulk_operations,
    bulk_outcome,
    changed,
    search_consumers,
    writes,
)
from agora.search.query import parse_query
from agora.search.reindex import COPY_VERSION, ReindexError, copy_operations, reindex, swap_actions
from agora.storage.db import Database, id_floor
from agora.storage.search_index import MessageDoc, PostDoc, SearchIndexStore, UserDoc
from tests.support.api import unique

NOW = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
AS_OF = to_micros(NOW)
PREFIX = "agoratest"
# Tokenizers, filters and char filters Elasticsearch defines itself.
BUILTIN = {"standard", "lowercase", "asciifolding"}

_event_ids = itertools.count(id_floor(NOW))


def event(payload: Payload) -> Event:
    return Event(
        id=next(_event_ids),
        type=payload.type,
        aggregate=payload.aggregate,
        aggregate_id=payload.aggregate_id(),
        actor_id=None,
        occurred_at=NOW,
        version=1,
        payload=payload,
    )


def dsl_round_trip(body: dict[str, Any]) -> None:
    """The client's own DSL knows every query, function and option in ``body`` (an unknown
    name raises) and reads it back unchanged."""
    assert Search.from_dict(body).to_dict() == body


# -- templates ---------------------------------------------------------------------------------


def _fields(properties: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in properties.items():
        yield f"{path}{name}", spec
        yield from _fields(spec.get("fields", {}), f"{path}{name}.")


@pytest.mark.parametrize("kind", SEARCH_TYPES)
def test_every_analyzer_a_field_names_is_defined(kind: SearchType) -> None:
    template = index_template(PREFIX, kind)["template"]
    analysis = template["settings"]["analysis"]
    analyzers = analysis.get("analyzer", {})
    named = set()
    for name, spec in _fields(template["mappings"]["properties"]):
        for key in ("analyzer", "search_analyzer"):
            if key in spec:
                assert spec[key] in analyzers, f"{name}: {key} {spec[key]} is not defined"
                named.add(spec[key])
        if "normalizer" in spec:
            assert spec["normalizer"] in analysis.get("normalizer", {}), name
    assert named == set(analyzers), "an analyzer no field uses"
    for spec in [*analyzers.values(), *analysis.get("normalizer", {}).values()]:
        assert spec.get("tokenizer", "standard") in BUILTIN
        for f in spec.get("filter", []):
            assert f in BUILTIN or f in analysis["filter"], f
        for c in spec.get("char_filter", []):
            assert c in analysis["char_filter"], c


def test_edge_ngrams_fit_max_ngram_diff() -> None:
    settings = index_template(PREFIX, "users")["template"]["settings"]
    grams = [
        f for f in settings["analysis"]["filter"].values() if f["type"] in ("edge_ngram", "ngram")
    ]
    assert grams
    for f in grams:
        assert 1 <= f["min_gram"] <= f["max_gram"]
        assert f["max_gram"] - f["min_gram"] <= settings["index"]["max_ngram_diff"]
    # The prefix subfields: n-grams when indexing, the whole word when searching.
    users = MAPPINGS["users"]["properties"]
    for name in ("username", "display_name"):
        prefix = users[name]["fields"]["prefix"]
        assert prefix["analyzer"] == "agora_name_prefix"
        assert prefix["search_analyzer"] == "agora_name" == users[name]["analyzer"]


def test_field_types_and_the_documents_that_fill_them() -> None:
    def types(kind: SearchType) -> dict[str, str]:
        return {n: s["type"] for n, s in _fields(MAPPINGS[kind]["properties"])}

    assert types("users") == {
        "id": "long",
        "username": "text",
        "username.prefix": "text",
        "username.exact": "keyword",
        "display_name": "text",
        "display_name.prefix": "text",
        "created_at": "date",
    }
    text = {"text": "text", "text.exact": "text"}
    assert types("posts") == {
        "id": "long",
        "author_id": "long",
        "visibility": "keyword",
        **text,
        "created_at": "date",
        "has_media": "boolean",
    }
    assert types("messages") == {
        "id": "long",
        "conversation_id": "long",
        "seq": "long",
        "sender_id": "long",
        **text,
        "created_at": "date",
    }
    # Strict mappings: a document with a field the mapping lacks would be refused.
    for kind, doc in (("users", UserDoc), ("posts", PostDoc), ("messages", MessageDoc)):
        assert MAPPINGS[kind]["dynamic"] == "strict"
        assert set(doc.__struct_fields__) == set(MAPPINGS[kind]["properties"])
    # The fast vector highlighter needs offsets in both fields it combines.
    for kind in ("posts", "messages"):
        spec = MAPPINGS[kind]["properties"]["text"]
        assert spec["analyzer"] == "agora_english"
        assert spec["fields"]["exact"]["analyzer"] == "agora_exact"
        for s in (spec, spec["fields"]["exact"]):
            assert s["term_vector"] == "with_positions_offsets"
    assert HIGHLIGHT["fields"]["text"]["matched_fields"] == ["text", "text.exact"]


@pytest.mark.parametrize("kind", SEARCH_TYPES)
def test_mappings_are_fields_the_client_knows(kind: SearchType) -> None:
    for name, spec in MAPPINGS[kind]["properties"].items():
        assert construct_field(dict(spec)).to_dict() == spec, name


@pytest.mark.parametrize("kind", SEARCH_TYPES)
def test_template_matches_the_concrete_indices_only(kind: SearchType) -> None:
    (pattern,) = index_template(PREFIX, kind)["index_patterns"]
    name = index_name(PREFIX, kind, NOW)
    assert name == f"{PREFIX}-{kind}-20250601123000000000"
    assert fnmatch.fnmatch(name, pattern)
    assert not fnmatch.fnmatch(f"{PREFIX}-{kind}", pattern)  # the read alias
    for other in SEARCH_TYPES:
        if other != kind:
            assert not fnmatch.fnmatch(index_name(PREFIX, other, NOW), pattern)


# -- queries ----------------------------------------------------------------------------------

ME = Scope(viewer_id=5)


def _bool(body: dict[str, Any]) -> dict[str, Any]:
    """The bool query under a body's recency function."""
    return body["query"]["function_score"]["query"]["bool"]  # type: ignore[no-any-return]


def posts(q: str, scope: Scope = ME, friends: list[int] | None = None) -> dict[str, Any]:
    body = posts_body(parse_query(q), scope, friends or [], AS_OF, None, 20)
    dsl_round_trip(body)
    return body


def messages(q: str, scope: Scope = ME, conversations: list[int] | None = None) -> dict[str, Any]:
    body = messages_body(parse_query(q), scope, conversations or [], AS_OF, None, 20)
    dsl_round_trip(body)
    return body


def test_words_must_all_match_stemmed_or_as_typed() -> None:
    b = _bool(posts("running dogs"))
    assert b["must"] == [
        {
            "multi_match": {
                "query": w,
                "fields": ["text", "text.exact"],
                "type": "most_fields",
                "operator": "and",
            }
        }
        for w in ("running", "dogs")
    ]


def test_phrases_match_as_typed() -> None:
    b = _bool(posts('"the quick fox"'))
    assert b["must"] == [{"match_phrase": {"text.exact": {"query": "the quick fox"}}}]


def test_exclusions_are_must_not() -> None:
    b = _bool(posts('cats -dogs -"bad day"'))
    assert b["must_not"] == [
        {"multi_match": {"query": "dogs", "fields": ["text", "text.exact"], "operator": "and"}},
        {"match_phrase": {"text.exact": {"query": "bad day"}}},
    ]


def test_from_filters_authors_and_senders() -> None:
    scope = Scope(viewer_id=5, author_ids=(7, 8))
    assert {"terms": {"author_id": [7, 8]}} in _bool(posts("x from:bob", scope))["filter"]
    assert {"terms": {"sender_id": [7, 8]}} in _bool(messages("x from:bob", scope, [1]))["filter"]


def test_an_unknown_from_matches_nothing() -> None:
    scope = Scope(viewer_id=5, author_ids=())
    assert {"match_none": {}} in _bool(posts("from:nobody", scope))["filter"]
    assert {"match_none": {}} in _bool(messages("from:nobody", scope, [1]))["filter"]


def test_dates_are_utc_days_after_inclusive_before_exclusive() -> None:
    b = _bool(posts("x after:2025-01-02 before:2025-03-04"))
    assert {
        "range": {"created_at": {"gte": "2025-01-02T00:00:00Z", "lt": "2025-03-04T00:00:00Z"}}
    } in b["filter"]
    assert {"range": {"created_at": {"gte": "2025-01-02T00:00:00Z"}}} in _bool(
        posts("x after:2025-01-02")
    )["filter"]


def test_has_media() -> None:
    assert {"term": {"has_media": True}} in _bool(posts("x has:media"))["filter"]
    assert {"match_none": {}} in _bool(messages("x has:media", conversations=[1]))["filter"]


def test_operators_alone_order_by_recency() -> None:
    body = posts("from:bob", Scope(viewer_id=5, author_ids=(7,)))
    assert _bool(body)["must"] == [{"match_all": {}}]
    assert "must_not" not in _bool(body)


def test_posts_audience() -> None:
    audience = _bool(posts("x", friends=[11, 12]))["filter"][0]["bool"]
    assert audience["minimum_should_match"] == 1
    assert audience["should"] == [
        {"term": {"visibility": "public"}},
        {"term": {"author_id": 5}},
        {
            "bool": {
                "filter": [{"term": {"visibility": "friends"}}, {"terms": {"author_id": [11, 12]}}]
            }
        },
    ]
    # No friends: public posts and the viewer's own (no one's private posts, ever).
    assert _bool(posts("x"))["filter"][0]["bool"]["should"] == audience["should"][:2]


def test_messages_audience_is_the_viewers_conversations() -> None:
    assert _bool(messages("x", conversations=[3, 4]))["filter"][0] == {
        "terms": {"conversation_id": [3, 4]}
    }
    assert _bool(messages("x"))["filter"][0] == {"match_none": {}}


def test_ranking_sort_highlight_and_recency_origin() -> None:
    for body in (posts("x"), messages("x", conversations=[1])):
        assert body["sort"] == [{"_score": {"order": "desc"}}, {"id": {"order": "desc"}}]
        assert body["size"] == 20 and body["_source"] is False
        assert "search_after" not in body
        score = body["query"]["function_score"]
        assert (score["score_mode"], score["boost_mode"]) == ("sum", "multiply")
        (decay,) = [f["exp"]["created_at"] for f in score["functions"] if "exp" in f]
        assert decay["origin"] == "2025-06-01T12:30:00Z"
        h = body["highlight"]
        assert (h["encoder"], h["pre_tags"], h["post_tags"]) == ("html", ["<mark>"], ["</mark>"])
        text = h["fields"]["text"]
        assert text["number_of_fragments"] == 1
        assert text["fragment_size"] == text["no_match_size"] == 150


def test_users_prefix_typos_and_exact_username_first() -> None:
    body = users_body(parse_query("Zephyr -bot"), None, 10)
    dsl_round_trip(body)
    b = body["query"]["bool"]
    (word,) = b["must"]
    should = word["bool"]["should"]
    assert word["bool"]["minimum_should_match"] == 1
    assert {"match": {"username.prefix": {"query": "zephyr", "operator": "and", "boost": 2}}} in (
        should
    )
    assert {
        "match": {"display_name.prefix": {"query": "zephyr", "operator": "and", "boost": 2}}
    } in (should)
    for f in ("username", "display_name"):
        assert {"match": {f: {"query": "zephyr", "operator": "and", "fuzziness": "AUTO"}}} in should
    assert b["should"] == [{"term": {"username.exact": {"value": "zephyr", "boost": 10}}}]
    assert b["must_not"] == [
        {"multi_match": {"query": "bot", "fields": ["username", "display_name"], "operator": "and"}}
    ]
    assert "highlight" not in body


def test_users_phrases_and_an_operator_only_query() -> None:
    body = users_body(parse_query('"zeph fan"'), None, 10)
    dsl_round_trip(body)
    assert body["query"]["bool"]["must"] == [
        {
            "multi_match": {
                "query": "zeph fan",
                "fields": ["username", "display_name"],
                "type": "phrase",
            }
        }
    ]
    body = users_body(parse_query("has:media"), None, 10)
    assert body["query"] == {"match_none": {}}


def test_the_next_page_continues_after_the_last_hit() -> None:
    after = {"a": AS_OF - 5, "s": 1.25, "i": 99}
    body = posts_body(parse_query("x"), ME, [], AS_OF - 5, after, 20)
    dsl_round_trip(body)
    assert body["search_after"] == [1.25, 99]
    assert users_body(parse_query("x"), after, 20)["search_after"] == [1.25, 99]


def test_snippets_take_the_postgresql_backends_form() -> None:
    # Elasticsearch's html encoder escapes quotes and slashes too; the PostgreSQL backend's
    # snippet() escapes &, < and > only: a client sees one format whichever backend answered.
    fragment = "Tom&#x27;s &lt;b&gt; &quot;a&#x2F;b&quot; &amp; <mark>running</mark> \ue000x\ue001"
    assert html_snippet(fragment) == 'Tom\'s &lt;b&gt; "a/b" &amp; <mark>running</mark> x'
    assert html_snippet("") == ""


# -- the indexer: which documents each event changes, and the bulk request --------------------


def test_each_event_type_changes_its_document_newest_version_wins() -> None:
    user = event(UserRegistered(user_id=1, username="ann", display_name="Ann"))
    renamed = event(
        UserUpdated(user_id=1, username="ann", display_name="Annie", bio="", changed=["x"])
    )
    created = event(PostCreated(author_id=1, post_id=10, text="hi", visibility="public"))
    edited = event(PostUpdated(author_id=1, post_id=10, text="hey", visibility="public"))
    hidden = event(PostVisibilityChanged(author_id=1, post_id=11, old="public", new="private"))
    deleted = event(PostDeleted(author_id=1, post_id=12))
    message = event(
        MessageStored(
            conversation_id=3, message_id=20, seq=1, sender_id=1, text="yo", created_at=NOW
        )
    )
    comment = event(
        CommentCreated(comment_id=9, post_id=10, post_author_id=1, author_id=1, text="c")
    )
    # Out of order within a batch: the newest event id is the version.
    batch = [renamed, user, edited, created, hidden, deleted, message, comment]
    assert changed(batch) == {
        "users": {1: renamed.id},
        "posts": {10: edited.id, 11: hidden.id, 12: deleted.id},
        "messages": {20: message.id},
    }
    assert changed([comment]) == {}
    assert {e.type for e in batch[:-1]} == SearchIndexer.handles


def test_bulk_actions_index_rows_delete_missing_ones_in_every_target() -> None:
    post = PostDoc(
        id=10, author_id=1, visibility="friends", text="a", created_at=NOW, has_media=True
    )
    batch = writes({"posts": {10: 1000, 12: 1001}}, {"posts": [post]})
    assert batch == [Write("posts", 10, 1000, post), Write("posts", 12, 1001, None)]
    targets: dict[SearchType, list[str]] = {"posts": ["agora-posts", "agora-posts-next"]}
    meta = {"version_type": "external_gte"}
    source = {
        "id": 10,
        "author_id": 1,
        "visibility": "friends",
        "text": "a",
        "created_at": "2025-06-01T12:30:00Z",
        "has_media": True,
    }
    assert bulk_operations(batch, targets) == [
        {"index": {"_index": "agora-posts", "_id": "10", "version": 1000, **meta}},
        source,
        {"index": {"_index": "agora-posts-next", "_id": "10", "version": 1000, **meta}},
        source,
        {"delete": {"_index": "agora-posts", "_id": "12", "version": 1001, **meta}},
        {"delete": {"_index": "agora-posts-next", "_id": "12", "version": 1001, **meta}},
    ]


def test_bulk_outcome_conflicts_are_done_other_errors_fail() -> None:
    ok = {"index": {"_index": "i", "_id": "1", "status": 201, "result": "created"}}
    gone = {"delete": {"_index": "i", "_id": "2", "status": 404, "result": "not_found"}}
    newer = {
        "index": {
            "_index": "i",
            "_id": "3",
            "status": 409,
            "error": {"type": "version_conflict_engine_exception", "reason": "newer"},
        }
    }
    broken = {
        "index": {
            "_index": "i",
            "_id": "4",
            "status": 400,
            "error": {"type": "document_parsing_exception", "reason": "bad"},
        }
    }
    assert bulk_outcome({"errors": True, "items": [ok, gone, newer]}) == (1, [])
    assert bulk_outcome({"errors": True, "items": [ok, broken]}) == (
        0,
        ["index i/4: document_parsing_exception: bad"],
    )


# -- reindex as data ---------------------------------------------------------------------------


def test_the_alias_swap_is_one_atomic_request() -> None:
    actions = swap_actions("agora", "posts", "agora-posts-2", ["agora-posts-1"])
    assert actions == [
        {"remove": {"index": "agora-posts-1", "alias": "agora-posts", "must_exist": True}},
        {"add": {"index": "agora-posts-2", "alias": "agora-posts", "is_write_index": True}},
        {"remove": {"index": "agora-posts-2", "alias": "agora-posts-next", "must_exist": True}},
    ]
    # The first reindex of a type: nothing to remove.
    assert swap_actions("agora", "users", "agora-users-1", [])[0]["add"]["index"] == (
        "agora-users-1"
    )


def test_the_copy_never_overwrites_the_indexer() -> None:
    doc = UserDoc(id=4, username="ann", display_name="Ann", created_at=NOW)
    assert copy_operations("agora-users-2", [doc]) == [
        {
            "index": {
                "_index": "agora-users-2",
                "_id": "4",
                "version": COPY_VERSION,
                "version_type": "external_gte",
            }
        },
        {"id": 4, "username": "ann", "display_name": "Ann", "created_at": "2025-06-01T12:30:00Z"},
    ]
    # The lowest version there is: every event id the indexer writes with is at least that.
    assert COPY_VERSION == 0 <= id_floor(datetime(2025, 1, 1, tzinfo=UTC))


# -- the request flows, through the real client, against a recording stand-in -----------------


@dataclass
class Recorder:
    """Records each request; keeps aliases and indices (not documents) as a cluster would.
    ``bulk_errors`` makes the items of the listed ids fail; ``hits`` is what searches return;
    ``status`` answers every request with that status."""

    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    aliases: dict[str, set[str]] = field(default_factory=dict)
    indices: set[str] = field(default_factory=set)
    hits: list[dict[str, Any]] = field(default_factory=list)
    bulk_errors: set[str] = field(default_factory=set)
    status: int | None = None

    def of(self, method: str, pattern: str) -> list[tuple[dict[str, str], Any]]:
        return [(q, b) for m, p, q, b in self.requests if m == method and re.fullmatch(pattern, p)]

    def _matching(self, names: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for a, held in self.aliases.items():
            if any(fnmatch.fnmatch(a, n) for n in names.split(",")):
                for index in held:
                    out.setdefault(index, {"aliases": {}})["aliases"][a] = {}
        return out

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.text()
        body: Any = None
        if raw and request.path == "/_bulk":
            body = [json.loads(line) for line in raw.splitlines() if line]
        elif raw:
            body = json.loads(raw)
        method, path = request.method, request.path
        self.requests.append((method, path, dict(request.query), body))
        if self.status is not None:
            return self.json({"error": {"type": "x", "reason": "down"}}, self.status)
        if path.startswith("/_index_template/"):
            return self.json({"acknowledged": True})
        if path.startswith("/_alias/"):
            found = self._matching(request.match_info["tail"].removeprefix("_alias/"))
            if method == "HEAD":
                return web.Response(status=200 if found else 404, headers=self.product)
            return self.json(found)
        if path == "/_aliases":
            for action in body["actions"]:
                ((verb, spec),) = action.items()
                held = self.aliases.setdefault(spec["alias"], set())
                if verb == "add":
                    held.add(spec["index"])
                elif spec["index"] not in held:
                    return self.json({"error": {"type": "aliases_not_found"}}, 404)
                else:
                    held.discard(spec["index"])
            self.aliases = {a: held for a, held in self.aliases.items() if held}
            return self.json({"acknowledged": True})
        if path == "/_bulk":
            return self.json(self._bulk(body))
        if path.endswith("/_search"):
            return self.json({"hits": {"hits": self.hits}})
        if path.endswith("/_refresh"):
            return self.json({})
        index = path.strip("/")
        if method == "PUT":
            self.indices.add(index)
            for a in (body or {}).get("aliases", {}):
                self.aliases.setdefault(a, set()).add(index)
            return self.json({"acknowledged": True, "index": index})
        if method == "DELETE":
            for name in index.split(","):
                self.indices.discard(name)
                for held in self.aliases.values():
                    held.discard(name)
            self.aliases = {a: held for a, held in self.aliases.items() if held}
            return self.json({"acknowledged": True})
        return self.json({"error": "unexpected request"}, 400)

    def _bulk(self, lines: list[dict[str, Any]]) -> dict[str, Any]:
        items = []
        ops = iter(lines)
        for line in ops:
            ((op, meta),) = line.items()
            if op == "index":
                next(ops)
            result = {"_index": meta["_index"], "_id": meta["_id"], "status": 200}
            if meta["_id"] in self.bulk_errors:
                result.update(status=400, error={"type": "mapper_exception", "reason": "no"})
            items.append({op: result})
        return {"errors": bool(self.bulk_errors), "items": items}

    product: ClassVar[dict[str, str]] = {"X-Elastic-Product": "Elasticsearch"}

    def json(self, data: Any, status: int = 200) -> web.Response:
        return web.json_response(data, status=status, headers=self.product)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield rec, str(server.make_url("")).rstrip("/")
    await server.close()


def es_config(config: Config, url: str, timeout: float = 5.0) -> Config:
    return config.with_overrides(
        elasticsearch_url=url,
        search=replace(config.search, index_prefix=PREFIX, timeout=timeout),
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, min_size=1, max_size=3)
    yield database
    await database.close()


@dataclass
class Rows:
    user: int
    friend: int
    post: int
    conversation: int
    message: int


async def make_rows(database_url: str) -> Rows:
    """A user with a friend, a post with media, a conversation with one message."""
    conn = await asyncpg.connect(database_url)
    try:
        ids = []
        for _ in range(2):
            name = unique("es")
            ids.append(
                await conn.fetchval(
                    "INSERT INTO accounts.users (username, email, password_hash, display_name)"
                    " VALUES ($1, $1 || '@example.test', 'x', 'Zephyrine ' || $1) RETURNING id",
                    name,
                )
            )
        user, friend = ids
        await conn.execute(
            "INSERT INTO social.friendships (user_id, friend_id) VALUES ($1, $2), ($2, $1)",
            user,
            friend,
        )
        post = await conn.fetchval(
            "INSERT INTO content.posts (author_id, text, visibility, media_ids)"
            " VALUES ($1, 'hello <world>', 'friends', '{1}') RETURNING id",
            friend,
        )
        conversation = await conn.fetchval(
            "INSERT INTO chat.conversations (kind, created_by) VALUES ('group', $1) RETURNING id",
            user,
        )
        await conn.execute(
            "INSERT INTO chat.members (conversation_id, user_id) VALUES ($1, $2), ($1, $3)",
            conversation,
            user,
            friend,
        )
        message = await conn.fetchval(
            "INSERT INTO chat.messages (conversation_id, seq, sender_id, client_id, text)"
            " VALUES ($1, 1, $2, 'c1', 'see you') RETURNING id",
            conversation,
            friend,
        )
        return Rows(user, friend, post, conversation, message)
    finally:
        await conn.close()


def row_events(rows: Rows, *, gone_post: int) -> list[Event]:
    return [
        event(UserRegistered(user_id=rows.user, username="a", display_name="A")),
        event(PostCreated(author_id=rows.friend, post_id=rows.post, text="", visibility="x")),
        event(PostDeleted(author_id=rows.friend, post_id=gone_post)),
        event(
            MessageStored(
                conversation_id=rows.conversation,
                message_id=rows.message,
                seq=1,
                sender_id=rows.friend,
                text="",
                created_at=NOW,
            )
        ),
    ]


async def test_the_indexer_writes_current_rows_in_one_bulk_request(
    config: Config, database_url: str, db: Database, recorder: tuple[Recorder, str]
) -> None:
    rec, url = recorder
    rows = await make_rows(database_url)
    (indexer,) = search_consumers(es_config(config, url), db)
    assert isinstance(indexer, SearchIndexer)
    gone = 2**40  # no such post: a delete
    events = row_events(rows, gone_post=gone)
    try:
        async with db.transaction("test") as tx:
            assert await indexer.handle(events, tx) is None
        # The templates and the first index of each type, once.
        assert len(rec.of("PUT", "/_index_template/.*")) == 3
        assert set(rec.aliases) == {f"{PREFIX}-{k}" for k in SEARCH_TYPES}
        ((params, ops),) = rec.of("PUT", "/_bulk")
        assert params["require_alias"] == "true"
        actions = {
            (op, m["_index"], m["_id"]): m
            for line in ops
            for op, m in line.items()
            if op in ("index", "delete")
        }
        assert set(actions) == {
            ("index", f"{PREFIX}-users", str(rows.user)),
            ("index", f"{PREFIX}-posts", str(rows.post)),
            ("delete", f"{PREFIX}-posts", str(gone)),
            ("index", f"{PREFIX}-messages", str(rows.message)),
        }
        assert all(m["version_type"] == "external_gte" for m in actions.values())
        assert actions["delete", f"{PREFIX}-posts", str(gone)]["version"] == events[2].id
        docs = {d["id"]: d for d in ops if "id" in d}
        # The row as it is, not the event's payload.
        assert docs[rows.post]["text"] == "hello <world>"
        assert docs[rows.post]["has_media"] is True
        assert docs[rows.message]["text"] == "see you"
        assert docs[rows.user]["display_name"].startswith("Zephyrine ")

        # A reindex under way: the next batch writes to its index too; no templates again.
        rec.aliases[f"{PREFIX}-posts-next"] = {f"{PREFIX}-posts-new"}
        async with db.transaction("test") as tx:
            await indexer.handle(events[1:2], tx)
        assert len(rec.of("PUT", "/_index_template/.*")) == 3
        ops = rec.of("PUT", "/_bulk")[-1][1]
        assert [line["index"]["_index"] for line in ops if "index" in line] == [
            f"{PREFIX}-posts",
            f"{PREFIX}-posts-next",
        ]

        # A refused item fails the batch (the runner retries it), and the retry puts the
        # templates again in case an index went away.
        rec.bulk_errors = {str(rows.post)}
        with pytest.raises(IndexingFailed, match="mapper_exception"):
            async with db.transaction("test") as tx:
                await indexer.handle(events[1:2], tx)
        rec.bulk_errors = set()
        async with db.transaction("test") as tx:
            await indexer.handle(events[1:2], tx)
        assert len(rec.of("PUT", "/_index_template/.*")) == 6
    finally:
        await indexer.close()  # type: ignore[attr-defined]


async def test_no_url_no_indexer(config: Config, db: Database) -> None:
    assert config.elasticsearch_url is None
    assert search_consumers(config, db) == []


async def test_reindex_copies_then_swaps_the_alias_in_one_request(
    config: Config, database_url: str, db: Database, recorder: tuple[Recorder, str]
) -> None:
    rec, url = recorder
    rows = await make_rows(database_url)
    old = f"{PREFIX}-posts-20240101000000000000"
    rec.indices.add(old)
    rec.aliases[f"{PREFIX}-posts"] = {old}
    backend = ElasticBackend(es_config(config, url), db)
    store = SearchIndexStore(db)
    try:
        summary = await reindex(backend.client, store, PREFIX, "posts", _Clock())
        new = summary.index
        assert re.fullmatch(rf"{PREFIX}-posts-\d{{20}}", new)
        # Born with the -next alias, as its write index.
        ((_, created),) = rec.of("PUT", f"/{new}")
        assert created == {"aliases": {f"{PREFIX}-posts-next": {"is_write_index": True}}}
        copied = [line for _, ops in rec.of("PUT", "/_bulk") for line in ops]
        metas = [line["index"] for line in copied if "index" in line]
        assert {m["_index"] for m in metas} == {new}
        assert {m["version"] for m in metas} == {COPY_VERSION}
        assert str(rows.post) in {m["_id"] for m in metas}
        assert summary.copied == len(metas) and summary.superseded == 0
        assert rec.of("POST", f"/{new}/_refresh")
        ((_, swap),) = rec.of("POST", "/_aliases")
        assert swap == {"actions": swap_actions(PREFIX, "posts", new, [old])}
        assert rec.of("DELETE", f"/{old}")
        assert rec.aliases == {f"{PREFIX}-posts": {new}}
        assert rec.indices == {new}
        assert summary.previous == [old]

        # A -next alias left behind: the next run refuses, naming the index.
        rec.aliases[f"{PREFIX}-posts-next"] = {"leftover"}
        with pytest.raises(ReindexError, match="leftover"):
            await reindex(backend.client, store, PREFIX, "posts", _Clock())
        del rec.aliases[f"{PREFIX}-posts-next"]

        # A copy that fails deletes its new index; searches stay on the current one.
        rec.bulk_errors = {str(rows.post)}
        with pytest.raises(IndexingFailed):
            await reindex(backend.client, store, PREFIX, "posts", _Clock(1))
        assert rec.aliases == {f"{PREFIX}-posts": {new}}
        assert rec.indices == {new}
    finally:
        await backend.close()


class _Clock(Clock):
    """Wall time stopped ``seconds`` after NOW (each reindex names its index after it)."""

    def __init__(self, seconds: int = 0) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return NOW.timestamp() + self.seconds


async def test_search_pages_and_the_cursor_round_trip(
    config: Config, db: Database, database_url: str, recorder: tuple[Recorder, str]
) -> None:
    rec, url = recorder
    rows = await make_rows(database_url)
    backend = ElasticBackend(es_config(config, url), db)
    rec.hits = [
        {"_id": "30", "sort": [2.5, 30], "highlight": {"text": ["a &amp; <mark>b</mark>"]}},
        {"_id": "29", "sort": [1.0000001192092896, 29]},
    ]
    try:
        query = parse_query("b")
        first = await backend.search("posts", query, Scope(viewer_id=rows.user), None, 2)
        assert first.hits == [Hit(30, "a &amp; <mark>b</mark>"), Hit(29, "")]
        assert first.next is not None
        # Through the service's opaque cursor and back, typed as the backend declared.
        cursor = encode_cursor("search.posts", **first.next)
        state = decode_cursor(cursor, "search.posts", **backend.cursor_fields)
        assert state == first.next

        rec.hits = rec.hits[:1]
        second = await backend.search("posts", query, Scope(viewer_id=rows.user), state, 2)
        assert second.next is None  # a short page is the last
        (params, one), (_, two) = rec.of("POST", f"/{PREFIX}-posts/_search")
        assert params["preference"] == f"agora-{rows.user}"  # the same shard copies each page
        assert "search_after" not in one
        assert two["search_after"] == [1.0000001192092896, 29]
        origin = [
            [f for f in b["query"]["function_score"]["functions"] if "exp" in f][0]["exp"]
            for b in (one, two)
        ]
        assert origin[0] == origin[1]  # page 2 is scored as page 1 was
        # The audience came from PostgreSQL: the viewer's friend.
        audience = one["query"]["function_score"]["query"]["bool"]["filter"][0]["bool"]["should"]
        assert audience[2]["bool"]["filter"][1] == {"terms": {"author_id": [rows.friend]}}

        await backend.search("messages", query, Scope(viewer_id=rows.user), None, 2)
        ((_, body),) = rec.of("POST", f"/{PREFIX}-messages/_search")
        assert body["query"]["function_score"]["query"]["bool"]["filter"][0] == {
            "terms": {"conversation_id": [rows.conversation]}
        }
        users = await backend.search("users", parse_query("zeph"), Scope(viewer_id=1), None, 2)
        assert users.hits == [Hit(30)]  # no snippet for people

        # A forged score no search returns is a bad cursor, not a 500.
        with pytest.raises(AppError) as bad:
            await backend.search("posts", query, ME, {"a": 1, "s": -1.0, "i": 1}, 2)
        assert bad.value.status == 400
    finally:
        await backend.close()


@pytest.mark.parametrize("status", [404, 429, 500, 503])
async def test_a_cluster_that_cannot_answer_is_503(
    config: Config, db: Database, recorder: tuple[Recorder, str], status: int
) -> None:
    rec, url = recorder
    rec.status = status
    backend = ElasticBackend(es_config(config, url), db)
    try:
        with pytest.raises(AppError) as err:
            await backend.search("users", parse_query("x"), ME, None, 10)
        assert (err.value.code, err.value.status) == (ErrorCode.SEARCH_UNAVAILABLE, 503)
        assert (await backend.health())["status"] == "unavailable"
    finally:
        await backend.close()


async def test_health_is_an_empty_search_of_every_alias(
    config: Config, db: Database, recorder: tuple[Recorder, str]
) -> None:
    rec, url = recorder
    backend = ElasticBackend(es_config(config, url), db)
    try:
        assert await backend.health() == {"status": "ok", "backend": "elasticsearch"}
        ((_, probe),) = rec.of("POST", f"/{PREFIX}-users,{PREFIX}-posts,{PREFIX}-messages/_search")
        assert probe == {"query": {"match_none": {}}, "size": 0, "track_total_hits": False}
        rec.status = 404
        assert await backend.health() == {
            "status": "unavailable",
            "backend": "elasticsearch",
            "reason": "x",  # the error's type only: /readyz may be public
        }
    finally:
        await backend.close()


# -- the real fault: configured, but nothing listens -------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_cluster_that_is_down_is_503_quickly_and_nothing_else_breaks(
    config: Config, database_url: str, db: Database, closed_port: int
) -> None:
    timeout = 5.0
    cfg = es_config(config, f"http://127.0.0.1:{closed_port}", timeout)
    backend = ElasticBackend(cfg, db)
    (indexer,) = search_consumers(cfg, db)
    rows = await make_rows(database_url)
    try:
        for kind in SEARCH_TYPES:
            started = time.monotonic()
            with pytest.raises(AppError) as err:
                await backend.search(
                    kind, parse_query("hello"), Scope(viewer_id=rows.user), None, 10
                )
            assert time.monotonic() - started < timeout
            assert (err.value.code, err.value.status) == (ErrorCode.SEARCH_UNAVAILABLE, 503)
            assert err.value.headers == {"Retry-After": "5"}
        health = await asyncio.wait_for(backend.health(), timeout)
        assert (health["status"], health["backend"]) == ("unavailable", "elasticsearch")
        # The indexer raises, so the runner keeps the events and retries them.
        with pytest.raises(TransportError):
            async with db.transaction("test") as tx:
                await indexer.handle(row_events(rows, gone_post=2**40), tx)
    finally:
        await backend.close()
        await indexer.close()  # type: ignore[attr-defined]


async def agora(database_url: str, cwd: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """``python -m agora ARGS`` with only these AGORA_ variables (the test loop keeps running:
    the stand-in cluster lives in it)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    environ.update(AGORA_DATABASE_URL=database_url, AGORA_JWT_SECRET="c" * 40, **env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agora",
        *args,
        env=environ,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_reindex_command(
    database_url: str, tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    rec, url = recorder
    await make_rows(database_url)
    status, out, err = await agora(
        database_url,
        tmp_path,
        *("search", "reindex", "--type", "users", "--type", "messages"),
        AGORA_ELASTICSEARCH_URL=url,
        AGORA_ELASTICSEARCH_INDEX_PREFIX=PREFIX,
    )
    assert status == 0, err
    summary = json.loads(out)["reindexed"]
    assert [s["type"] for s in summary] == ["users", "messages"]
    assert all(s["copied"] > 0 and s["previous"] == [] for s in summary)
    assert rec.aliases == {f"{PREFIX}-{s['type']}": {s["index"]} for s in summary}

    # Without a URL there is no index to rebuild: said plainly, status 2.
    status, out, err = await agora(database_url, tmp_path, "search", "reindex")
    assert status == 2
    assert "AGORA_ELASTICSEARCH_URL" in err
