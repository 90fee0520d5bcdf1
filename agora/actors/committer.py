"""The committer: one per node, it stores what every local conversation actor has waiting in
one statement (group commit across conversations, not only within one).

Each conversation actor keeps at most one commit outstanding, so per conversation the order of
seqs is the order of commits; the committer only saves PostgreSQL transactions (and the fsyncs,
wake-ups and round trips that come with each): under load dozens of conversations share one.

A database blip (a lost connection, a failover, a pool timeout) is retried with backoff for up
to ``RETRY_FOR`` seconds before the senders hear "retry": a blip is not a failed send, nor an
actor crash with a state reload. A retry after a commit whose answer was lost finds last_seq
moved (StaleOwner): the conversation actor reloads and finds its messages stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

import asyncpg

from agora.actors.base import Actor, Reply
from agora.clock import Clock
from agora.errors import AppError, ErrorCode
from agora.storage.chat import ChatStore, Outgoing

log = logging.getLogger(__name__)

MAX_ROWS = 2000  # per statement
RETRY_FIRST = 0.05  # seconds before the first retry of a failed statement, doubling
RETRY_MAX = 1.0
RETRY_FOR = 5.0  # give up (senders hear "retry") after this long


T = TypeVar("T")


async def through_blips(call: Callable[[], Awaitable[T]], clock: Clock) -> T:
    """Run a database call, retrying a blip (anything but a refused statement) with backoff
    for up to ``RETRY_FOR`` seconds; then the last error propagates."""
    delay, waited = RETRY_FIRST, 0.0
    while True:
        try:
            return await call()
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
            raise
        except Exception:
            if waited >= RETRY_FOR:
                raise
            log.warning("database call failed; retrying in %.2f s", delay, exc_info=True)
            await clock.sleep(delay)
            waited += delay
            delay = min(delay * 2, RETRY_MAX)


class CommitRequest(NamedTuple):
    conversation_id: int
    last_seq: int
    members_version: int
    batch: list[Outgoing]


class Committer(Actor[CommitRequest]):
    kind = "committer"

    def __init__(
        self, store: ChatStore, mailbox_size: int = 10_000, clock: Clock | None = None
    ) -> None:
        super().__init__("committer", mailbox_size, clock)
        self.store = store

    async def receive_many(self, items: list[tuple[CommitRequest, Reply | None]]) -> None:
        # Each statement holds a conversation once and at most MAX_ROWS messages.
        rounds: list[dict[int, tuple[CommitRequest, Reply | None]]] = [{}]
        rows = [0]
        for request, reply in items:
            for i, batch in enumerate(rounds):
                if (
                    request.conversation_id not in batch
                    and rows[i] + len(request.batch) <= MAX_ROWS
                ):
                    batch[request.conversation_id] = (request, reply)
                    rows[i] += len(request.batch)
                    break
            else:
                rounds.append({request.conversation_id: (request, reply)})
                rows.append(len(request.batch))
        for batch in rounds:
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: dict[int, tuple[CommitRequest, Reply | None]]) -> None:
        requests = [
            (r.conversation_id, r.last_seq, r.members_version, r.batch) for r, _ in batch.values()
        ]
        try:
            # A blip is retried for every conversation of the statement at once.
            results = await through_blips(lambda: self.store.commit_many(requests), self.clock)
        except asyncpg.DataError:
            if len(batch) > 1:
                # One conversation's bad row must not fail the others it shared a statement
                # with (and again on every retry): each goes alone, only the bad one fails.
                log.warning("a statement of %d conversations failed; each alone", len(batch))
                for cid, item in batch.items():
                    await self._commit({cid: item})
                return
            self._fail(batch, "PostgreSQL refused a message of conversation %d")
            return
        except Exception:
            self._fail(batch, "committing conversation %d failed")
            return
        for conv, (_, reply) in batch.items():
            if reply:
                reply(results[conv])

    def _fail(self, batch: dict[int, tuple[CommitRequest, Reply | None]], why: str) -> None:
        log.exception(why, next(iter(batch)))
        for _, reply in batch.values():
            if reply:
                reply(AppError(ErrorCode.UNAVAILABLE, "could not store the message; retry"))
