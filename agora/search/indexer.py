"""The search indexer: the event consumer that keeps Elasticsearch's documents in step.

:class:`SearchIndexer` (``name = "search"``) runs only when ``AGORA_ELASTICSEARCH_URL`` is set
(:func:`search_consumers`). For a batch of events it works out which documents changed
(``user.*`` -> users, ``post.*`` -> posts, ``message.stored`` -> messages), loads each one's row
as it is now inside the runner's transaction (a row that is gone is a deletion) and writes one
bulk request, inside ``handle``: a failure raises, and the runner retries.

Repeats and reordering are harmless: every action is versioned ``external_gte`` with the id of
the newest event behind it, so an older write never replaces a newer one, and a version
conflict (409: something newer is there) counts as done. Event ids are time-ordered, and a
row's events are appended after the row is written, under its lock, so one row's ids grow in
commit order; what is written is the row as loaded after its newest event committed, so the
write with the highest version is the current row. A repeated version is accepted (``_gte``)
and writes the same row again.

While Elasticsearch is down every batch fails; the runner retries each event and, after its
attempts, dead-letters it. ``agora events replay --consumer search`` (or ``agora search
reindex``) catches the index up once the cluster is back.

Writes go to the read alias and, while ``agora search reindex`` builds a new index, to its
``-next`` alias too; ``require_alias`` keeps a write to an alias that just went away from
creating an index of that name (it fails, and the retry sees the aliases as they are now).
The templates and the first indices are put lazily, at the first batch, so a node or worker
starts while Elasticsearch is down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from elasticsearch import AsyncElasticsearch

from agora.config import Config
from agora.events.consumer import AfterCommit, Consumer
from agora.events.types import (
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
from agora.search.backend import SearchType
from agora.search.elastic import alias, connect, ensure_indices, next_alias
from agora.storage.db import Database, Tx
from agora.storage.search_index import Doc, SearchIndexStore

VERSION_TYPE = "external_gte"


class IndexingFailed(RuntimeError):
    """Elasticsearch refused some of a bulk request's actions (other than version conflicts)."""


class Write(msgspec.Struct, frozen=True):
    """One document to write: ``doc`` None deletes it."""

    kind: SearchType
    id: int
    version: int
    doc: Doc | None


def changed(events: list[Event]) -> dict[SearchType, dict[int, int]]:
    """The documents ``events`` change, by type: id -> the newest event id (the version)."""
    out: dict[SearchType, dict[int, int]] = {"users": {}, "posts": {}, "messages": {}}
    for e in events:
        p = e.payload
        if isinstance(p, UserRegistered | UserUpdated):
            kind: SearchType = "users"
            doc_id = p.user_id
        elif isinstance(p, PostCreated | PostUpdated | PostVisibilityChanged | PostDeleted):
            kind, doc_id = "posts", p.post_id
        elif isinstance(p, MessageStored | MessageRemoved):  # removed: reindexed without text
            kind, doc_id = "messages", p.message_id
        else:
            continue
        out[kind][doc_id] = max(e.id, out[kind].get(doc_id, 0))
    return {k: v for k, v in out.items() if v}


def writes(
    changes: Mapping[SearchType, Mapping[int, int]],
    rows: Mapping[SearchType, list[Doc]],
) -> list[Write]:
    """Index what has a row, delete what has none."""
    out = []
    for kind, versions in changes.items():
        found = {d.id: d for d in rows.get(kind, [])}
        out += [Write(kind, i, v, found.get(i)) for i, v in sorted(versions.items())]
    return out


def bulk_operations(
    batch: list[Write], targets: Mapping[SearchType, list[str]]
) -> list[dict[str, Any]]:
    """The bulk request's lines: each write to every target of its type (alias names)."""
    ops: list[dict[str, Any]] = []
    for w in batch:
        for index in targets[w.kind]:
            meta = {
                "_index": index,
                "_id": str(w.id),
                "version": w.version,
                "version_type": VERSION_TYPE,
            }
            if w.doc is None:
                ops.append({"delete": meta})
            else:
                ops += [{"index": meta}, msgspec.to_builtins(w.doc)]
    return ops


def bulk_outcome(response: Mapping[str, Any]) -> tuple[int, list[str]]:
    """(version conflicts, failures) of a bulk response. A conflict means a newer version is
    already there: done. A delete of a missing document (404 ``not_found``) is done too."""
    conflicts, failures = 0, []
    for item in response.get("items", []):
        ((op, result),) = item.items()
        error = result.get("error")
        if error is None:
            continue
        if result.get("status") == 409:
            conflicts += 1
            continue
        reason = error.get("reason") if isinstance(error, dict) else error
        kind = error.get("type") if isinstance(error, dict) else "error"
        failures.append(f"{op} {result.get('_index')}/{result.get('_id')}: {kind}: {reason}")
    return conflicts, failures


def target_aliases(
    prefix: str, kinds: tuple[SearchType, ...], found: Mapping[str, Any]
) -> dict[SearchType, list[str]]:
    """Each type's write targets: its read alias, and its ``-next`` alias when ``found`` (the
    body of ``GET _alias/<prefix>-<type>-next*,...``: index -> its aliases) holds it."""
    building = {name for entry in found.values() for name in entry.get("aliases", {})}
    return {
        k: [alias(prefix, k)]
        + ([next_alias(prefix, k)] if next_alias(prefix, k) in building else [])
        for k in kinds
    }


async def load_rows(
    store: SearchIndexStore, tx: Tx, changes: Mapping[SearchType, Mapping[int, int]]
) -> dict[SearchType, list[Doc]]:
    """The changed documents' rows as they are now (a row that is gone has none)."""
    rows: dict[SearchType, list[Doc]] = {}
    if "users" in changes:
        rows["users"] = list(await store.users(tx, list(changes["users"])))
    if "posts" in changes:
        rows["posts"] = list(await store.posts(tx, list(changes["posts"])))
    if "messages" in changes:
        rows["messages"] = list(await store.messages(tx, list(changes["messages"])))
    return rows


def raise_failures(failures: list[str]) -> None:
    if failures:
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        raise IndexingFailed("; ".join(failures[:3]) + more)


class SearchIndexer:
    name = "search"
    handles = frozenset(
        {
            UserRegistered.type,
            UserUpdated.type,
            PostCreated.type,
            PostUpdated.type,
            PostVisibilityChanged.type,
            PostDeleted.type,
            MessageStored.type,
            MessageRemoved.type,
        }
    )

    def __init__(self, client: AsyncElasticsearch, store: SearchIndexStore, prefix: str) -> None:
        self.client = client
        self.store = store
        self.prefix = prefix
        self._ready = False  # templates and indices put (until a failure)

    async def handle(self, events: list[Event], tx: Tx) -> AfterCommit | None:
        changes = changed(events)
        if not changes:
            return None
        rows = await load_rows(self.store, tx, changes)
        try:
            if not self._ready:
                await ensure_indices(self.client, self.prefix)
                self._ready = True
            targets = await self.targets(tuple(changes))
            response = await self.client.bulk(
                operations=bulk_operations(writes(changes, rows), targets), require_alias=True
            )
            raise_failures(bulk_outcome(response.body)[1])
        except Exception:
            self._ready = False  # an index may have gone: put them again on the retry
            raise
        return None

    async def targets(self, kinds: tuple[SearchType, ...]) -> dict[SearchType, list[str]]:
        """Each type's read alias, and its ``-next`` alias while a reindex builds one. Asked on
        every batch: a batch that missed a reindex's start consumed only events committed
        before it began, whose rows the reindex's copy reads afterwards."""
        # Wildcards: a missing alias is an empty answer, not a 404.
        pattern = ",".join(f"{next_alias(self.prefix, k)}*" for k in kinds)
        found = await self.client.indices.get_alias(name=pattern)
        return target_aliases(self.prefix, kinds, found.body)

    async def close(self) -> None:
        await self.client.close()


def search_consumers(config: Config, db: Database) -> list[Consumer]:
    """The consumers search needs: the indexer when Elasticsearch is configured, else none."""
    if config.elasticsearch_url is None:
        return []
    return [SearchIndexer(connect(config), SearchIndexStore(db), config.search.index_prefix)]
