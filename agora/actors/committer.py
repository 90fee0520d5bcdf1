"""The committer: one per node, it stores what every local conversation actor has waiting in
one statement (group commit across conversations, not only within one).

Each conversation actor keeps at most one commit outstanding, so per conversation the order of
seqs is the order of commits; the committer only saves PostgreSQL transactions (and the fsyncs,
wake-ups and round trips that come with each): under load dozens of conversations share one.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import asyncpg

from agora.actors.base import Actor, Reply
from agora.errors import AppError, ErrorCode
from agora.storage.chat import ChatStore, Outgoing

log = logging.getLogger(__name__)

MAX_ROWS = 2000  # per statement


class CommitRequest(NamedTuple):
    conversation_id: int
    last_seq: int
    batch: list[Outgoing]


class Committer(Actor[CommitRequest]):
    kind = "committer"

    def __init__(self, store: ChatStore, mailbox_size: int = 10_000) -> None:
        super().__init__("committer", mailbox_size)
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
        try:
            results = await self.store.commit_many(
                [(r.conversation_id, r.last_seq, r.batch) for r, _ in batch.values()]
            )
        except Exception as exc:
            if len(batch) > 1 and isinstance(exc, asyncpg.DataError):
                # One conversation's bad row must not fail the others it shared a statement
                # with (and again on every retry): each goes alone, and only the bad one fails.
                # Not for a lost connection: every conversation fails alike, at once.
                log.warning("a statement of %d conversations failed; each goes alone", len(batch))
                for cid, item in batch.items():
                    await self._commit({cid: item})
                return
            log.exception("committing conversation %d failed", next(iter(batch)))
            for _, reply in batch.values():
                if reply:
                    reply(AppError(ErrorCode.UNAVAILABLE, "could not store the message; retry"))
            return
        for conv, (_, reply) in batch.items():
            if reply:
                reply(results[conv])
