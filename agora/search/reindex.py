"""``agora search reindex``: rebuild a type's Elasticsearch index from PostgreSQL, no downtime.

Per type (``users``, ``posts``, ``messages``):

1. put the template (a changed mapping takes effect in the new index), create
   ``<prefix>-<type>-<UTC time>`` born with the alias ``<prefix>-<type>-next`` (as its write
   index: a second reindex of the same type cannot start, its index would be refused);
2. copy every row in id-keyset batches of :data:`BATCH`, one bulk request each, while the
   indexer (:mod:`agora.search.indexer`) writes every change to the new index too;
3. refresh it, then in ONE ``_aliases`` request move the read alias ``<prefix>-<type>`` from
   the old index to the new one and drop ``-next``: searches read the old index until that
   instant and the new one from then on;
4. delete the old index.

A failure before the swap deletes the new index (and ``-next`` with it) and leaves searches on
the old one. A reindex killed outright leaves ``-next`` behind: the next run says so and names
the index to delete.

Why nothing is lost or made stale: the indexer looks up ``-next`` on every batch, so an event
handled without it was committed before ``-next`` existed, hence before the copy read that row.
The indexer writes the row as it is when handled, versioned with the event's id (``external_gte``);
the copy writes with :data:`COPY_VERSION` = 0, the lowest version there is. So the copy never
replaces what the indexer wrote into the new index, and the indexer always replaces the copy:
each document ends as the copy read it (no change since ``-next`` existed) or as the indexer
last loaded it (after the newest change). The limit: a deletion the indexer applies leaves a
tombstone for ``index.gc_deletes`` (60 s by default); a copy of that row read before the
deletion whose bulk request reaches the cluster more than 60 s after the delete would bring the
document back (until the row's next change or the next reindex). The service's re-check in
PostgreSQL still never shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from elastic_transport import TransportError
from elasticsearch import ApiError, AsyncElasticsearch

from agora.clock import Clock
from agora.config import Config
from agora.search.backend import SearchType
from agora.search.elastic import alias, connect, index_name, next_alias, put_template
from agora.search.indexer import VERSION_TYPE, IndexingFailed, bulk_outcome, raise_failures
from agora.storage.db import Database
from agora.storage.search_index import Doc, SearchIndexStore

BATCH = 1000
COPY_VERSION = 0  # external versions start at 0; every event id is at least that


class ReindexError(Exception):
    """A reindex that cannot start or finish, with what to do about it."""


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    type: SearchType
    index: str
    previous: list[str]
    copied: int  # documents the copy wrote
    superseded: int  # documents the indexer had already written newer
    seconds: float


def new_index_aliases(prefix: str, kind: SearchType) -> dict[str, Any]:
    """The aliases a new index is born with: ``-next`` as its write index, so a second reindex
    of the type cannot start (its index would be refused: an alias has one write index)."""
    return {next_alias(prefix, kind): {"is_write_index": True}}


def interrupted(prefix: str, kind: SearchType, held: Iterable[str]) -> ReindexError:
    """The refusal to start while ``-next`` exists, naming the indices that carry it."""
    building = next_alias(prefix, kind)
    return ReindexError(
        f"a reindex of {kind} is running or was interrupted: index {', '.join(held)} carries the "
        f"alias {building}; if no reindex is running, delete that index and run this again"
    )


def copy_operations(index: str, docs: Sequence[Doc]) -> list[dict[str, Any]]:
    """A copy batch's bulk lines, into the new index by its concrete name."""
    ops: list[dict[str, Any]] = []
    for doc in docs:
        meta = {
            "_index": index,
            "_id": str(doc.id),
            "version": COPY_VERSION,
            "version_type": VERSION_TYPE,
        }
        ops += [{"index": meta}, msgspec.to_builtins(doc)]
    return ops


def swap_actions(
    prefix: str, kind: SearchType, new: str, previous: list[str]
) -> list[dict[str, Any]]:
    """The one atomic ``_aliases`` request: the read alias leaves the previous indices (each
    removal must find it there, so a concurrent change fails the request rather than leaving
    the alias on two indices) and moves to ``new``, whose ``-next`` alias goes."""
    read = alias(prefix, kind)
    return [
        *({"remove": {"index": old, "alias": read, "must_exist": True}} for old in previous),
        {"add": {"index": new, "alias": read, "is_write_index": True}},
        {"remove": {"index": new, "alias": next_alias(prefix, kind), "must_exist": True}},
    ]


def _loader(
    store: SearchIndexStore, kind: SearchType
) -> Callable[[int, int], Awaitable[Sequence[Doc]]]:
    if kind == "users":
        return store.users_after
    if kind == "posts":
        return store.posts_after
    return store.messages_after


async def reindex(
    client: AsyncElasticsearch,
    store: SearchIndexStore,
    prefix: str,
    kind: SearchType,
    clock: Clock,
) -> Summary:
    building = next_alias(prefix, kind)
    if await client.indices.exists_alias(name=building):
        raise interrupted(prefix, kind, (await client.indices.get_alias(name=building)).body)
    await put_template(client, prefix, kind)
    started = clock.monotonic()
    new = index_name(prefix, kind, clock.now())
    await client.indices.create(index=new, aliases=new_index_aliases(prefix, kind))
    try:
        copied, superseded = await _copy(client, _loader(store, kind), new)
        await client.indices.refresh(index=new)
        read = alias(prefix, kind)
        previous: list[str] = []
        if await client.indices.exists_alias(name=read):
            previous = sorted((await client.indices.get_alias(name=read)).body)
        await client.indices.update_aliases(actions=swap_actions(prefix, kind, new, previous))
    except (Exception, asyncio.CancelledError):
        with contextlib.suppress(ApiError, TransportError):  # the error that matters is raised
            await client.indices.delete(index=new, ignore_unavailable=True)
        raise
    if previous:
        await client.indices.delete(index=",".join(previous))
    return Summary(
        type=kind,
        index=new,
        previous=previous,
        copied=copied,
        superseded=superseded,
        seconds=round(clock.monotonic() - started, 3),
    )


async def _copy(
    client: AsyncElasticsearch, load: Callable[[int, int], Awaitable[Sequence[Doc]]], index: str
) -> tuple[int, int]:
    copied = superseded = 0
    after = 0
    while docs := await load(after, BATCH):
        response = await client.bulk(operations=copy_operations(index, docs))
        conflicts, failures = bulk_outcome(response.body)
        raise_failures(failures)
        copied += len(docs) - conflicts
        superseded += conflicts
        after = docs[-1].id
    return copied, superseded


def unreachable(exc: TransportError) -> str:
    """A transport failure in one line: its type and the innermost cause (the client wraps a
    failed retry's error in the next one's)."""
    cause: BaseException = exc
    while isinstance(cause, TransportError) and cause.errors:
        cause = cause.errors[0]
    return f"cannot reach Elasticsearch ({type(exc).__name__}: {cause})"


async def command(config: Config, kinds: Sequence[SearchType]) -> int:
    """Reindex ``kinds`` in turn; print ``{"reindexed": [summary...]}`` (those done, also when
    one fails: the error goes to stderr in one line and the status is 1)."""
    assert config.database.url is not None
    # The client logs every failed attempt with its traceback; the command says what failed,
    # once, below.
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)
    db = await Database.connect(config.database.url, min_size=1, max_size=2)
    client = connect(config)
    store = SearchIndexStore(db)
    done: list[Summary] = []
    status = 0
    try:
        for kind in kinds:
            done.append(await reindex(client, store, config.search.index_prefix, kind, Clock()))
    except ReindexError as exc:
        print(f"agora: {exc}", file=sys.stderr)
        status = 1
    except TransportError as exc:
        print(f"agora: search reindex failed: {unreachable(exc)}", file=sys.stderr)
        status = 1
    except (ApiError, IndexingFailed) as exc:
        print(f"agora: search reindex failed: {exc}", file=sys.stderr)
        status = 1
    finally:
        await client.close()
        await db.close()
    print(json.dumps({"reindexed": msgspec.to_builtins(done)}))
    return status
