"""The Elasticsearch backend without Elasticsearch (issue 10).

No Elasticsearch can run on our machines, and no test here stands one in: nothing in this file
answers a request the way a cluster would. What Agora sends a cluster and what it makes of the
answers are tested as data, through the pure functions that build and read them:

- the index templates: every analyzer a field names is defined, n-gram bounds the index accepts,
  field types against the documents that fill them, the client's own DSL accepts every mapping;
- the query body of each type and operator (the client's DSL must accept each one);
- a search's pages: a response's hits as a page (snippets, the next page's state), the cursor's
  round trip (page 1's state through ``encode_cursor``/``decode_cursor`` into page 2's body:
  ``search_after`` and the same recency origin), a forged cursor refused with 400, which error
  statuses are an outage (503 ``search_unavailable``) and which a bug, health's probe and what
  it says of a failure;
- the indexer: which documents each event changes, the rows it writes loaded from the real
  PostgreSQL (the row as it is, a missing row a delete), the versioned bulk actions, the
  ``-next`` target while a reindex builds, bulk outcomes;
- the reindex: the new index's aliases, the refusal naming a leftover ``-next`` index, the
  copy's actions, the one atomic alias swap.

The one real fault we can produce is a configured cluster that is down, a closed local port:
searches answer 503 quickly, health says unavailable, the indexer raises (its runner retries),
and ``agora search reindex`` (a real process) exits 1 with one error line and no traceback; it
exits 2 without ``AGORA_ELASTICSEARCH_URL``.

Not tested without a cluster: the order of the requests a reindex or an indexer batch makes
(create, copy, refresh, swap, delete; the indexer's lazy templates and their renewal after a
failure; ``require_alias``). The same end-to-end suite as PostgreSQL's runs against a real
cluster when ``AGORA_TEST_ELASTICSEARCH_URL`` is set (tests/test_search.py).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig, TransportError
from elastic_transport import ConnectionError as ConnectionFailed
from elasticsearch import ApiError
from elasticsearch.dsl import Search, construct_field

from agora.config import Config
from agora.errors import AppError, ErrorCode
from agora.events.types import (
    CommentCreated,
    Event,
    MessageRemoved,
    MessageStored,
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
    CURSOR_FIELDS,
    HIGHLIGHT,
    MAPPINGS,
    MAX_SCORE,
    ElasticBackend,
    failure_reason,
    health_probe,
    hits_page,
    html_snippet,
    index_name,
    index_template,
    is_outage,
    messages_body,
    posts_body,
    preference,
    search_origin,
    users_body,
)
from agora.search.indexer import (
    IndexingFailed,
    SearchIndexer,
    Write,
    bulk_operations,
    bulk_outcome,
    changed,
    load_rows,
    raise_failures,
    search_consumers,
    target_aliases,
    writes,
)
from agora.search.query import parse_query
from agora.search.reindex import (
    COPY_VERSION,
    copy_operations,
    interrupted,
    new_index_aliases,
    swap_actions,
)
from agora.storage.db import Database, id_floor
from agora.storage.search_index import MessageDoc, PostDoc, SearchIndexStore, UserDoc
from tests.support.api import unique
from tests.support.events import EventMaker

NOW = datetime(2025, 6, 1, 12, 30, tzinfo=UTC)
AS_OF = to_micros(NOW)
PREFIX = "agoratest"
# Tokenizers, filters and char filters Elasticsearch defines itself.
BUILTIN = {"standard", "lowercase", "asciifolding"}

event = EventMaker(first_id=id_floor(NOW), at=NOW)  # ids as the outbox makes them at NOW


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


# -- a search's pages: the response, the cursor, the errors -----------------------------------


def test_a_response_is_a_page_and_a_full_page_says_where_the_next_begins() -> None:
    found = [
        {"_id": "30", "sort": [2.5, 30], "highlight": {"text": ["a &amp; <mark>b</mark>"]}},
        {"_id": "29", "sort": [1, 29]},  # no highlight (and a score JSON wrote as an integer)
    ]
    page = hits_page("posts", found, 2, AS_OF)
    after = [{"a": AS_OF, "s": 2.5, "i": 30}, {"a": AS_OF, "s": 1.0, "i": 29}]
    assert page.hits == [Hit(30, "a &amp; <mark>b</mark>", after[0]), Hit(29, "", after[1])]
    assert page.next == after[1]  # each hit says where the search goes on after it
    assert page.next is not None and isinstance(page.next["s"], float)
    # A short page is the last; people have no snippet.
    assert hits_page("posts", found, 3, AS_OF).next is None
    assert hits_page("users", found[:1], 2, AS_OF).hits == [Hit(30, None, after[0])]


def test_page_two_continues_after_page_one_and_is_scored_alike() -> None:
    query = parse_query("b")
    friends = [7]
    as_of = search_origin(None, NOW)
    assert as_of == AS_OF
    one = posts_body(query, ME, friends, as_of, None, 2)
    found = [
        {"_id": "30", "sort": [2.5, 30]},
        {"_id": "29", "sort": [1.0000001192092896, 29]},  # a float32 score, exactly
    ]
    first = hits_page("posts", found, 2, as_of)
    assert first.next is not None

    # Through the service's opaque cursor and back, typed as the backend declares.
    cursor = encode_cursor("search.posts", **first.next)
    state = decode_cursor(cursor, "search.posts", **CURSOR_FIELDS)
    assert state == first.next

    # Asked five minutes later, page 2 still decays from page 1's time.
    later = search_origin(state, NOW + timedelta(minutes=5))
    assert later == AS_OF
    two = posts_body(query, ME, friends, later, state, 2)
    dsl_round_trip(two)
    assert "search_after" not in one
    assert two["search_after"] == [1.0000001192092896, 29]
    assert two["query"] == one["query"]  # the same query, origin included: the same scores
    assert preference(ME.viewer_id) == "agora-5"  # and the same shard copies, by viewer


@pytest.mark.parametrize("score", [-1.0, MAX_SCORE * 2])
def test_a_cursor_with_a_score_no_search_returns_is_400(score: float) -> None:
    cursor = encode_cursor("search.posts", a=AS_OF, s=score, i=1)
    state = decode_cursor(cursor, "search.posts", **CURSOR_FIELDS)
    with pytest.raises(AppError) as bad:
        search_origin(state, NOW)
    assert (bad.value.code, bad.value.status) == (ErrorCode.VALIDATION_ERROR, 400)
    assert bad.value.fields is not None and "cursor" in bad.value.fields


@pytest.mark.parametrize(
    ("status", "outage"),
    [
        (400, False),  # our request is wrong: a bug, raised as such
        (409, False),
        (401, True),  # the credentials: the cluster will not answer us
        (403, True),
        (404, True),  # no index yet (before the indexer's first batch or a reindex)
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
    ],
)
def test_which_error_statuses_are_an_outage(status: int, outage: bool) -> None:
    assert is_outage(status) is outage


def test_health_is_an_empty_search_of_every_alias_and_says_only_an_errors_type() -> None:
    probe = health_probe(PREFIX)
    assert probe == {
        "index": f"{PREFIX}-users,{PREFIX}-posts,{PREFIX}-messages",
        "query": {"match_none": {}},
        "size": 0,
        "track_total_hits": False,
    }
    dsl_round_trip({k: v for k, v in probe.items() if k != "index"})
    # An error answer as the client raises it: its message is the error's type.
    body = {
        "error": {
            "type": "index_not_found_exception",
            "reason": "no such index [agoratest-users]",
            "root_cause": [{"type": "index_not_found_exception", "reason": "no such index"}],
        },
        "status": 404,
    }
    meta = ApiResponseMeta(404, "1.1", HttpHeaders(), 0.0, NodeConfig("http", "127.0.0.1", 9200))
    reason = failure_reason(ApiError("index_not_found_exception", meta, body))
    assert reason == "index_not_found_exception"  # /readyz may be public: no index names
    assert failure_reason(ConnectionFailed("Connection error")) == "ConnectionError"


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
    # A moderator's removal rewrites the message's document (its text is gone).
    removed = event(MessageRemoved(conversation_id=3, message_id=21, seq=2, sender_id=1))
    comment = event(
        CommentCreated(comment_id=9, post_id=10, post_author_id=1, author_id=1, text="c")
    )
    # Out of order within a batch: the newest event id is the version.
    batch = [renamed, user, edited, created, hidden, deleted, message, removed, comment]
    assert changed(batch) == {
        "users": {1: renamed.id},
        "posts": {10: edited.id, 11: hidden.id, 12: deleted.id},
        "messages": {20: message.id, 21: removed.id},
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


def test_a_refused_item_fails_the_batch_saying_which() -> None:
    refused = [
        {
            "index": {
                "_index": "agoratest-posts",
                "_id": str(i),
                "status": 400,
                "error": {"type": "mapper_exception", "reason": "no"},
            }
        }
        for i in range(5)
    ]
    _, failures = bulk_outcome({"errors": True, "items": refused})
    with pytest.raises(IndexingFailed) as err:
        raise_failures(failures)
    assert str(err.value) == (
        "; ".join(f"index agoratest-posts/{i}: mapper_exception: no" for i in range(3))
        + " (and 2 more)"
    )
    raise_failures([])  # nothing refused: done


def test_while_a_reindex_builds_writes_go_to_its_index_too() -> None:
    # The body of GET _alias/<prefix>-<type>-next*: each index holding one, with its aliases.
    building = {f"{PREFIX}-posts-20250601123000000000": {"aliases": {f"{PREFIX}-posts-next": {}}}}
    assert target_aliases(PREFIX, ("users", "posts"), building) == {
        "users": [f"{PREFIX}-users"],
        "posts": [f"{PREFIX}-posts", f"{PREFIX}-posts-next"],
    }
    assert target_aliases(PREFIX, ("posts",), {}) == {"posts": [f"{PREFIX}-posts"]}


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


def test_a_new_index_is_born_with_the_next_alias_as_its_write_index() -> None:
    # A second reindex of the type cannot start: an alias has at most one write index.
    assert new_index_aliases(PREFIX, "posts") == {f"{PREFIX}-posts-next": {"is_write_index": True}}


def test_a_leftover_next_alias_refuses_a_reindex_naming_its_index() -> None:
    held = {f"{PREFIX}-posts-20240101000000000000": {"aliases": {f"{PREFIX}-posts-next": {}}}}
    message = str(interrupted(PREFIX, "posts", held))
    assert f"index {PREFIX}-posts-20240101000000000000 carries the alias {PREFIX}-posts-next" in (
        message
    )
    assert "delete that index and run this again" in message


# -- PostgreSQL's side: what the indexer and the searches read ---------------------------------


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


async def test_the_indexer_writes_the_rows_as_they_are_now(database_url: str, db: Database) -> None:
    rows = await make_rows(database_url)
    gone = 2**40  # no such post: a delete
    events = row_events(rows, gone_post=gone)
    changes = changed(events)
    async with db.transaction("test") as tx:
        loaded = await load_rows(SearchIndexStore(db), tx, changes)
    ops = bulk_operations(writes(changes, loaded), target_aliases(PREFIX, tuple(changes), {}))
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


async def test_the_audience_of_a_search_comes_from_postgresql(
    database_url: str, db: Database
) -> None:
    rows = await make_rows(database_url)
    store = SearchIndexStore(db)
    scope = Scope(viewer_id=rows.user)
    friends = await store.friend_ids(rows.user)
    assert friends == [rows.friend]
    audience = _bool(posts_body(parse_query("b"), scope, friends, AS_OF, None, 2))["filter"][0]
    assert audience["bool"]["should"][2]["bool"]["filter"][1] == {
        "terms": {"author_id": [rows.friend]}
    }
    conversations = await store.conversation_ids(rows.user)
    assert conversations == [rows.conversation]
    body = messages_body(parse_query("b"), scope, conversations, AS_OF, None, 2)
    assert _bool(body)["filter"][0] == {"terms": {"conversation_id": [rows.conversation]}}


async def test_no_url_no_indexer(config: Config, db: Database) -> None:
    assert config.elasticsearch_url is None
    assert search_consumers(config, db) == []


# -- the real fault: configured, but nothing listens -------------------------------------------


def es_config(config: Config, url: str, timeout: float = 5.0) -> Config:
    return config.with_overrides(
        elasticsearch_url=url,
        search=replace(config.search, index_prefix=PREFIX, timeout=timeout),
    )


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
        assert health == {
            "status": "unavailable",
            "backend": "elasticsearch",
            "reason": "ConnectionError",
        }
        # The indexer raises, so the runner keeps the events and retries them.
        with pytest.raises(TransportError):
            async with db.transaction("test") as tx:
                await indexer.handle(row_events(rows, gone_post=2**40), tx)
    finally:
        await backend.close()
        await indexer.close()  # type: ignore[attr-defined]


def agora(database_url: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m agora ARGS`` as a real process, with only these AGORA_ variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    environ.update(AGORA_DATABASE_URL=database_url, AGORA_JWT_SECRET="c" * 40, **env)
    return subprocess.run(
        [sys.executable, "-m", "agora", *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_reindex_command_without_a_url_says_so(database_url: str, tmp_path: Path) -> None:
    done = agora(database_url, tmp_path, "search", "reindex")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "agora: search reindex needs AGORA_ELASTICSEARCH_URL (without it, search uses "
        "PostgreSQL full-text, which has no index to rebuild)"
    ]


def test_the_reindex_command_with_a_cluster_that_is_down(
    database_url: str, tmp_path: Path, closed_port: int
) -> None:
    done = agora(
        database_url,
        tmp_path,
        *("search", "reindex", "--type", "users"),
        AGORA_ELASTICSEARCH_URL=f"http://127.0.0.1:{closed_port}",
        AGORA_ELASTICSEARCH_INDEX_PREFIX=PREFIX,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("agora:")]
    assert error.startswith(
        "agora: search reindex failed: cannot reach Elasticsearch (ConnectionError: "
    )
    assert f"127.0.0.1:{closed_port}" in error
    assert done.stdout.strip() == '{"reindexed": []}'  # nothing done, said on stdout too
