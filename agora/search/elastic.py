"""The Elasticsearch search backend (issue 10): index templates, query translation, the client.

Used when ``AGORA_ELASTICSEARCH_URL`` is set; PostgreSQL full text otherwise. Everything the
cluster is told is built here as plain data (templates, query bodies, alias names), so tests
check it without a cluster; only :class:`ElasticBackend` and :func:`ensure_indices` talk to it.

Indices and aliases, per type (``users``, ``posts``, ``messages``) under the configured prefix:

- ``<prefix>-<type>-<UTC yyyymmddhhmmssffffff>``: a concrete index. Its settings, analyzers and
  mappings come from the index template ``<prefix>-<type>`` (pattern ``<prefix>-<type>-*``),
  put by the indexer and by ``agora search reindex``: a changed mapping takes effect at the
  next reindex.
- ``<prefix>-<type>``: the alias searches read and the indexer writes (its write index).
- ``<prefix>-<type>-next``: only while ``agora search reindex`` builds a new index; the
  indexer writes there too, so the new index misses nothing (:mod:`agora.search.reindex`).

Matching: posts and messages analyse ``text`` twice, stemmed (``agora_english``) and as typed
(``text.exact``: lower-cased, no stemming, no stop words); a word matches either, a phrase
matches as typed, as the PostgreSQL backend's two tsvector halves do. Names get an edge n-gram
subfield (``zeph`` finds ``zephyrine``) and a fuzzy match on the plain field (``zefyrine``
finds it too); an exact username ranks first.

Ranking: relevance times ``1 + exp-decay(age)`` (a day-old post scores nearly twice a years-old
one with the same words); the decay's origin is the first page's time, carried in the cursor,
so every page of one search is scored alike and ``search_after`` on ``(_score, id)`` is exact.
"""

from __future__ import annotations

import html
import logging
import re
from datetime import UTC, date, datetime, time
from typing import Any

from elastic_transport import TransportError
from elasticsearch import ApiError, AsyncElasticsearch

from agora.clock import Clock
from agora.config import Config
from agora.protocol.cursor import from_micros, invalid_cursor, to_micros
from agora.search.backend import (
    MARK_END,
    MARK_START,
    SEARCH_TYPES,
    Hit,
    Hits,
    Scope,
    SearchType,
    search_unavailable,
    snippet,
    unmarked,
)
from agora.search.query import SearchQuery
from agora.storage.db import Database
from agora.storage.search_index import SearchIndexStore

log = logging.getLogger(__name__)

TEMPLATE_VERSION = 1
HEALTH_TIMEOUT = 1.0  # seconds; /readyz must answer quickly whatever the cluster does
SNIPPET_CHARS = 150
MAX_NAME_GRAM = 20
# Recency: the decay factor halves every RECENCY_HALF_LIFE of age.
RECENCY_HALF_LIFE = "30d"
# The largest score a cursor can carry (a float in Elasticsearch, which scores in float32).
MAX_SCORE = 3.4e38

# Errors of the cluster rather than of our request: the caller gets 503 search_unavailable.
UNAVAILABLE_STATUS = frozenset({401, 403, 404, 408, 429})


# -- names ------------------------------------------------------------------------------------


def alias(prefix: str, kind: SearchType) -> str:
    """The alias searches read and the indexer writes."""
    return f"{prefix}-{kind}"


def next_alias(prefix: str, kind: SearchType) -> str:
    """The alias marking the index a reindex is building."""
    return f"{prefix}-{kind}-next"


def index_name(prefix: str, kind: SearchType, at: datetime) -> str:
    """A new concrete index, named after its UTC creation time (microseconds)."""
    return f"{prefix}-{kind}-{at.astimezone(UTC):%Y%m%d%H%M%S%f}"


# -- templates: analyzers and mappings ----------------------------------------------------------

NAME_ANALYSIS: dict[str, Any] = {
    # "zephyr_fan" is the words "zephyr" and "fan" (the standard tokenizer keeps "_" inside).
    "char_filter": {
        "agora_underscore": {"type": "pattern_replace", "pattern": "_", "replacement": " "}
    },
    "filter": {"agora_name_edge": {"type": "edge_ngram", "min_gram": 1, "max_gram": MAX_NAME_GRAM}},
    "analyzer": {
        "agora_name": {
            "type": "custom",
            "char_filter": ["agora_underscore"],
            "tokenizer": "standard",
            "filter": ["lowercase", "asciifolding"],
        },
        # Index side only: every prefix of every word, up to MAX_NAME_GRAM characters.
        "agora_name_prefix": {
            "type": "custom",
            "char_filter": ["agora_underscore"],
            "tokenizer": "standard",
            "filter": ["lowercase", "asciifolding", "agora_name_edge"],
        },
    },
    "normalizer": {"agora_name_exact": {"type": "custom", "filter": ["lowercase", "asciifolding"]}},
}

TEXT_ANALYSIS: dict[str, Any] = {
    "filter": {
        "agora_english_possessive": {"type": "stemmer", "language": "possessive_english"},
        "agora_english_stop": {"type": "stop", "stopwords": "_english_"},
        "agora_english_stemmer": {"type": "stemmer", "language": "english"},
    },
    "analyzer": {
        "agora_english": {
            "type": "custom",
            "tokenizer": "standard",
            "filter": [
                "agora_english_possessive",
                "lowercase",
                "agora_english_stop",
                "agora_english_stemmer",
            ],
        },
        "agora_exact": {"type": "custom", "tokenizer": "standard", "filter": ["lowercase"]},
    },
}


def _name_field(*, exact: bool = False) -> dict[str, Any]:
    """A name: analysed whole (fuzzy matching), by prefixes, and (``exact``) as a keyword."""
    fields: dict[str, Any] = {
        "prefix": {"type": "text", "analyzer": "agora_name_prefix", "search_analyzer": "agora_name"}
    }
    if exact:
        fields["exact"] = {"type": "keyword", "normalizer": "agora_name_exact"}
    return {"type": "text", "analyzer": "agora_name", "fields": fields}


# Term vectors with offsets on both text fields: the fast vector highlighter combines matches
# of the stemmed and the exact field into one snippet (``matched_fields``).
TEXT_FIELD: dict[str, Any] = {
    "type": "text",
    "analyzer": "agora_english",
    "term_vector": "with_positions_offsets",
    "fields": {
        "exact": {
            "type": "text",
            "analyzer": "agora_exact",
            "term_vector": "with_positions_offsets",
        }
    },
}

MAPPINGS: dict[SearchType, dict[str, Any]] = {
    "users": {
        "dynamic": "strict",
        "properties": {
            "id": {"type": "long"},
            "username": _name_field(exact=True),
            "display_name": _name_field(),
            "created_at": {"type": "date"},
        },
    },
    "posts": {
        "dynamic": "strict",
        "properties": {
            "id": {"type": "long"},
            "author_id": {"type": "long"},
            "visibility": {"type": "keyword"},
            "text": TEXT_FIELD,
            "created_at": {"type": "date"},
            "has_media": {"type": "boolean"},
        },
    },
    "messages": {
        "dynamic": "strict",
        "properties": {
            "id": {"type": "long"},
            "conversation_id": {"type": "long"},
            "seq": {"type": "long"},
            "sender_id": {"type": "long"},
            "text": TEXT_FIELD,
            "created_at": {"type": "date"},
        },
    },
}


def index_template(prefix: str, kind: SearchType) -> dict[str, Any]:
    """The body of ``PUT _index_template/<prefix>-<kind>``."""
    settings: dict[str, Any] = {"analysis": NAME_ANALYSIS if kind == "users" else TEXT_ANALYSIS}
    if kind == "users":
        # Edge n-grams 1..MAX_NAME_GRAM; the index refuses a min/max spread above this.
        settings["index"] = {"max_ngram_diff": MAX_NAME_GRAM - 1}
    return {
        "index_patterns": [f"{prefix}-{kind}-*"],
        "priority": 200,
        "version": TEMPLATE_VERSION,
        "_meta": {"managed_by": "agora"},
        "template": {"settings": settings, "mappings": MAPPINGS[kind]},
    }


async def put_template(client: AsyncElasticsearch, prefix: str, kind: SearchType) -> None:
    """Put (or replace) the type's index template; existing indices keep their mappings."""
    body = index_template(prefix, kind)
    await client.indices.put_index_template(
        name=alias(prefix, kind),
        index_patterns=body["index_patterns"],
        priority=body["priority"],
        version=body["version"],
        meta=body["_meta"],
        template=body["template"],
    )


async def ensure_indices(
    client: AsyncElasticsearch, prefix: str, kinds: tuple[SearchType, ...] = SEARCH_TYPES
) -> None:
    """Put the templates; give each type with no alias yet a first index behind it."""
    for kind in kinds:
        await put_template(client, prefix, kind)
        if await client.indices.exists_alias(name=alias(prefix, kind)):
            continue
        try:
            # A write index: of two processes racing here, the second one's index is refused
            # (an alias has at most one write index), so the alias never spans two indices.
            await client.indices.create(
                index=index_name(prefix, kind, datetime.now(UTC)),
                aliases={alias(prefix, kind): {"is_write_index": True}},
            )
        except ApiError:
            if not await client.indices.exists_alias(name=alias(prefix, kind)):
                raise


def connect(config: Config) -> AsyncElasticsearch:
    """A client for ``AGORA_ELASTICSEARCH_URL`` (credentials may be in the URL). No request is
    made until it is used. One retry, for a pooled connection the server had closed."""
    assert config.elasticsearch_url is not None
    return AsyncElasticsearch(
        config.elasticsearch_url,
        request_timeout=config.search.timeout,
        max_retries=1,
        retry_on_timeout=False,
    )


# -- queries ----------------------------------------------------------------------------------

_MATCH_NONE: dict[str, Any] = {"match_none": {}}
_TEXT_FIELDS = ["text", "text.exact"]
_NAME_FIELDS = ["username", "display_name"]


def _midnight(day: date) -> str:
    return datetime.combine(day, time(), UTC).isoformat().replace("+00:00", "Z")


def _bool(**clauses: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bool": {name: c for name, c in clauses.items() if c}}


def _content_filters(
    query: SearchQuery, scope: Scope, author_field: str, *, media: bool
) -> list[dict[str, Any]]:
    """``from:``, ``after:`` (from the day's start, UTC), ``before:`` (up to it, excluded),
    ``has:media`` (only posts carry media)."""
    filters: list[dict[str, Any]] = []
    if scope.author_ids is not None:
        filters.append(
            {"terms": {author_field: list(scope.author_ids)}} if scope.author_ids else _MATCH_NONE
        )
    bounds = {}
    if query.after is not None:
        bounds["gte"] = _midnight(query.after)
    if query.before is not None:
        bounds["lt"] = _midnight(query.before)
    if bounds:
        filters.append({"range": {"created_at": bounds}})
    if query.has_media:
        filters.append({"term": {"has_media": True}} if media else _MATCH_NONE)
    return filters


def _text_query(
    query: SearchQuery, audience: dict[str, Any], filters: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every word (stemmed or as typed) and phrase (as typed) must match; none excluded may."""
    must: list[dict[str, Any]] = [
        {
            "multi_match": {
                "query": w,
                "fields": _TEXT_FIELDS,
                "type": "most_fields",
                "operator": "and",
            }
        }
        for w in query.words
    ]
    must += [{"match_phrase": {"text.exact": {"query": p}}} for p in query.phrases]
    must_not: list[dict[str, Any]] = [
        {"multi_match": {"query": w, "fields": _TEXT_FIELDS, "operator": "and"}}
        for w in query.excluded
    ]
    must_not += [{"match_phrase": {"text.exact": {"query": p}}} for p in query.excluded_phrases]
    # Operators alone (no text): every match scores 1, so recency alone orders them.
    return _bool(must=must or [{"match_all": {}}], filter=[audience, *filters], must_not=must_not)


def _recent_first(query: dict[str, Any], as_of: int) -> dict[str, Any]:
    """Relevance x (1 + decay): 2 for what was written at ``as_of``, halving toward 1 with
    every RECENCY_HALF_LIFE of age."""
    origin = from_micros(as_of).isoformat().replace("+00:00", "Z")
    return {
        "function_score": {
            "query": query,
            "functions": [
                {"weight": 1},
                {
                    "exp": {
                        "created_at": {
                            "origin": origin,
                            "scale": RECENCY_HALF_LIFE,
                            "decay": 0.5,
                        }
                    },
                    "weight": 1,
                },
            ],
            "score_mode": "sum",
            "boost_mode": "multiply",
        }
    }


HIGHLIGHT: dict[str, Any] = {
    "encoder": "html",
    "pre_tags": ["<mark>"],
    "post_tags": ["</mark>"],
    "fields": {
        "text": {
            "type": "fvh",
            "matched_fields": _TEXT_FIELDS,
            "fragment_size": SNIPPET_CHARS,
            "number_of_fragments": 1,
            # A snippet even when only operators matched: the text's beginning.
            "no_match_size": SNIPPET_CHARS,
        }
    },
}


def _page(
    query: dict[str, Any], after: dict[str, Any] | None, limit: int, highlight: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "query": query,
        "sort": [{"_score": {"order": "desc"}}, {"id": {"order": "desc"}}],
        "size": limit,
        "_source": False,
        "track_total_hits": False,
    }
    if after is not None:
        body["search_after"] = [after["s"], after["i"]]
    if highlight:
        body["highlight"] = HIGHLIGHT
    return body


def posts_body(
    query: SearchQuery,
    scope: Scope,
    friend_ids: list[int],
    as_of: int,
    after: dict[str, Any] | None,
    limit: int,
) -> dict[str, Any]:
    """The search request for posts. The audience an index can know: public posts, the
    viewer's own, and friends-only posts of the viewer's friends (``friend_ids``)."""
    audience: list[dict[str, Any]] = [
        {"term": {"visibility": "public"}},
        {"term": {"author_id": scope.viewer_id}},
    ]
    if friend_ids:
        audience.append(
            _bool(
                filter=[{"term": {"visibility": "friends"}}, {"terms": {"author_id": friend_ids}}]
            )
        )
    filters = _content_filters(query, scope, "author_id", media=True)
    bool_query = _text_query(
        query, {"bool": {"should": audience, "minimum_should_match": 1}}, filters
    )
    return _page(_recent_first(bool_query, as_of), after, limit, highlight=True)


def messages_body(
    query: SearchQuery,
    scope: Scope,
    conversation_ids: list[int],
    as_of: int,
    after: dict[str, Any] | None,
    limit: int,
) -> dict[str, Any]:
    """The search request for messages: only in ``conversation_ids`` (the viewer's)."""
    audience = {"terms": {"conversation_id": conversation_ids}} if conversation_ids else _MATCH_NONE
    filters = _content_filters(query, scope, "sender_id", media=False)
    bool_query = _text_query(query, audience, filters)
    return _page(_recent_first(bool_query, as_of), after, limit, highlight=True)


def users_body(query: SearchQuery, after: dict[str, Any] | None, limit: int) -> dict[str, Any]:
    """The search request for users: every word must match a name by prefix or within a typo
    or two; a username equal to a word ranks first. The content operators (``from:``, dates,
    ``has:media``) do not apply to people; a query with no words or phrases matches no one."""
    if not (query.words or query.phrases):
        return _page(_MATCH_NONE, after, limit, highlight=False)
    must: list[dict[str, Any]] = []
    for w in query.words:
        must.append(
            {
                "bool": {
                    "should": [
                        *(
                            {"match": {f"{f}.prefix": {"query": w, "operator": "and", "boost": 2}}}
                            for f in _NAME_FIELDS
                        ),
                        *(
                            {"match": {f: {"query": w, "operator": "and", "fuzziness": "AUTO"}}}
                            for f in _NAME_FIELDS
                        ),
                    ],
                    "minimum_should_match": 1,
                }
            }
        )
    must += [
        {"multi_match": {"query": p, "fields": _NAME_FIELDS, "type": "phrase"}}
        for p in query.phrases
    ]
    must_not: list[dict[str, Any]] = [
        {"multi_match": {"query": w, "fields": _NAME_FIELDS, "operator": "and"}}
        for w in query.excluded
    ]
    must_not += [
        {"multi_match": {"query": p, "fields": _NAME_FIELDS, "type": "phrase"}}
        for p in query.excluded_phrases
    ]
    should = [{"term": {"username.exact": {"value": w, "boost": 10}}} for w in query.words]
    return _page(_bool(must=must, must_not=must_not, should=should), after, limit, highlight=False)


_TAG = re.compile(r"(</?mark>)")


def html_snippet(fragment: str) -> str:
    """Elasticsearch's HTML-encoded fragment in the PostgreSQL backend's form: the same escaping
    (``html.escape`` without quotes), ``<mark>`` tags only where a match is."""
    parts = []
    for part in _TAG.split(fragment):
        if part == "<mark>":
            parts.append(MARK_START)
        elif part == "</mark>":
            parts.append(MARK_END)
        else:
            parts.append(unmarked(html.unescape(part)))
    return snippet("".join(parts))


# -- a search's pages: the cursor, the response, the errors -------------------------------------

# A cursor's state: a, the first page's time (microseconds); s and i, the last hit's (score, id).
CURSOR_FIELDS: dict[str, type] = {"a": int, "s": float, "i": int}


def search_origin(after: dict[str, Any] | None, now: datetime) -> int:
    """The recency origin of a page (microseconds): ``now`` for a first page, the first page's
    for the next ones (from the cursor). A cursor with a score no search returns is a 400."""
    if after is None:
        return to_micros(now)
    if not 0.0 <= after["s"] <= MAX_SCORE:
        raise invalid_cursor()
    return int(after["a"])


def preference(viewer_id: int) -> str:
    """The search's ``preference``: one viewer's searches go to the same shard copies, whose
    scores agree from page to page (copies of a shard can differ in deleted documents, hence
    in scores)."""
    return f"agora-{viewer_id}"


def hits_page(kind: SearchType, found: list[dict[str, Any]], limit: int, as_of: int) -> Hits:
    """A search response's ``hits.hits`` as a page: ids with snippets (none for people), and
    the next page's state when the page is full (a short page is the last)."""
    hits = [
        Hit(
            int(h["_id"]),
            None if kind == "users" else html_snippet(h.get("highlight", {}).get("text", [""])[0]),
            {"a": as_of, "s": float(h["sort"][0]), "i": int(h["sort"][1])},
        )
        for h in found
    ]
    if len(found) < limit:
        return Hits(hits)
    return Hits(hits, hits[-1].after)


def is_outage(status: int) -> bool:
    """Whether an error status of Elasticsearch means the cluster cannot answer (the caller
    gets 503 ``search_unavailable``) rather than that our request is wrong (a bug: raised)."""
    return status >= 500 or status in UNAVAILABLE_STATUS


def health_probe(prefix: str) -> dict[str, Any]:
    """The health check's request: an empty search of the three aliases, as searches are made
    (the read privilege only; a missing index is unavailable, as its type's searches are)."""
    return {
        "index": ",".join(alias(prefix, k) for k in SEARCH_TYPES),
        "query": _MATCH_NONE,
        "size": 0,
        "track_total_hits": False,
    }


def failure_reason(exc: ApiError | TransportError) -> str:
    """What health says of a failure: the error's type, nothing more (/readyz may be public)."""
    return str(exc.error) if isinstance(exc, ApiError) else type(exc).__name__


# -- the backend ------------------------------------------------------------------------------


class ElasticBackend:
    """Candidates from Elasticsearch; :class:`agora.services.search.SearchService` re-checks
    them in PostgreSQL. Never creates indices: a missing one answers 503 until the indexer's
    first batch or ``agora search reindex`` makes it."""

    name = "elasticsearch"

    def __init__(self, config: Config, db: Database, *, clock: Clock | None = None) -> None:
        self.cursor_fields = CURSOR_FIELDS
        self.prefix = config.search.index_prefix
        self.client = connect(config)
        self.store = SearchIndexStore(db)
        self.clock = clock or Clock()

    async def search(
        self,
        kind: SearchType,
        query: SearchQuery,
        scope: Scope,
        after: dict[str, Any] | None,
        limit: int,
    ) -> Hits:
        as_of = search_origin(after, self.clock.now())
        if kind == "posts":
            friends = await self.store.friend_ids(scope.viewer_id)
            body = posts_body(query, scope, friends, as_of, after, limit)
        elif kind == "messages":
            conversations = await self.store.conversation_ids(scope.viewer_id)
            body = messages_body(query, scope, conversations, as_of, after, limit)
        else:
            body = users_body(query, after, limit)
        try:
            response = await self.client.search(
                index=alias(self.prefix, kind), body=body, preference=preference(scope.viewer_id)
            )
        except ApiError as exc:
            status = exc.meta.status
            if not is_outage(status):
                raise  # our request is wrong: a bug, not an outage
            log.warning("search: Elasticsearch answered %s: %s", status, exc.message)
            raise search_unavailable() from exc
        except TransportError as exc:
            log.warning("search: Elasticsearch is unreachable: %s", exc)
            raise search_unavailable() from exc
        return hits_page(kind, response["hits"]["hits"], limit, as_of)

    async def health(self) -> dict[str, Any]:
        """What searches need, probed as they are made (:func:`health_probe`); a failure says
        only its type (:func:`failure_reason`)."""
        try:
            await self.client.options(request_timeout=HEALTH_TIMEOUT).search(
                **health_probe(self.prefix)
            )
        except (ApiError, TransportError) as exc:
            return {"status": "unavailable", "backend": self.name, "reason": failure_reason(exc)}
        return {"status": "ok", "backend": self.name}

    async def close(self) -> None:
        await self.client.close()
