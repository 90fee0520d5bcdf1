"""The events schema: the transactional outbox, relay claims, consumers' bookkeeping and (without
RabbitMQ) their queues and dead letters.

Every domain store writes its events with :func:`append` inside the transaction of the change,
so a rolled-back change leaves no event and a committed one always has its event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import msgspec

from agora.events.types import Payload
from agora.storage.db import Database, Record, Tx

PARTITIONS = 16

INSERT_EVENT = """
INSERT INTO events.outbox (type, aggregate, aggregate_id, actor_id, version, payload)
VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)
"""
# The relay's batch, in one transaction: claim the partitions of one lane (partition mod
# lanes) that no other relay holds, then the oldest unsent rows of those partitions. Two
# statements, not one: the read must take its snapshot after the claim. In one statement the
# snapshot predates the locks, so a relay that waited out another's claim read as unsent the
# rows the other had just marked sent, and published them again (test_events' two relays saw
# duplicates).
CLAIM_PARTITIONS = """
SELECT partition FROM events.relay_partitions WHERE partition % $1 = $2
FOR UPDATE SKIP LOCKED
"""
EVENT_COLUMNS = """position, id, type, aggregate, aggregate_id, actor_id, occurred_at, version,
       payload::text AS payload"""
UNSENT = f"""
SELECT {EVENT_COLUMNS}
FROM events.outbox
WHERE sent_at IS NULL AND partition = ANY($1::smallint[])
ORDER BY position LIMIT $2
"""
MARK_SENT = """
UPDATE events.outbox SET sent_at = clock_timestamp() WHERE position = ANY($1::bigint[])
"""
# In-process mode: the same batch goes into the queues of the consumers bound to each type.
ENQUEUE = """
INSERT INTO events.deliveries (consumer, event_id, body)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
"""
BACKLOG = """
SELECT count(*) AS unsent, min(occurred_at) AS oldest FROM events.outbox WHERE sent_at IS NULL
"""
PURGE_SENT = """
DELETE FROM events.outbox WHERE position IN (
    SELECT position FROM events.outbox
    WHERE sent_at IS NOT NULL AND sent_at < now() - $1 * interval '1 second' LIMIT $2)
"""
PURGE_PROCESSED = """
DELETE FROM events.processed WHERE (consumer, event_id) IN (
    SELECT consumer, event_id FROM events.processed
    WHERE processed_at < now() - $1 * interval '1 second' LIMIT $2)
"""
# Idempotency: the ids of $2 this consumer has not handled before (now recorded as handled).
CLAIM_PROCESSED = """
INSERT INTO events.processed (consumer, event_id) SELECT $1, unnest($2::bigint[])
ON CONFLICT DO NOTHING RETURNING event_id
"""
LEASE = """
UPDATE events.deliveries d SET leased_until = now() + $3 * interval '1 second'
WHERE d.id IN (SELECT id FROM events.deliveries
               WHERE consumer = $1 AND leased_until < now()
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
RETURNING d.id, d.body
"""
ACK = "DELETE FROM events.deliveries WHERE id = ANY($1::bigint[])"
RELEASE = "UPDATE events.deliveries SET leased_until = '-infinity' WHERE id = ANY($1::bigint[])"
QUEUE_DEPTH = "SELECT consumer, count(*) AS n FROM events.deliveries GROUP BY consumer"
DEAD_LETTER = """
WITH gone AS (DELETE FROM events.deliveries WHERE id = $1 RETURNING consumer, event_id, body)
INSERT INTO events.dead_letters (consumer, event_id, type, body, error, attempts)
SELECT consumer, event_id, $2, body, $3, $4 FROM gone
"""
DEAD_LETTERS = """
SELECT id, consumer, event_id, type, body, error, attempts, failed_at FROM events.dead_letters
WHERE ($1::text IS NULL OR consumer = $1) ORDER BY id LIMIT $2
"""
DEAD_LETTER_DEPTH = "SELECT consumer, count(*) AS n FROM events.dead_letters GROUP BY consumer"
REPLAY = """
WITH back AS (
    DELETE FROM events.dead_letters
    WHERE ($1::text IS NULL OR consumer = $1) AND ($2::bigint[] IS NULL OR event_id = ANY($2))
    RETURNING consumer, event_id, body
)
INSERT INTO events.deliveries (consumer, event_id, body)
SELECT consumer, event_id, body FROM back ORDER BY event_id
RETURNING consumer, event_id
"""

_json = msgspec.json.Encoder()


async def append(tx: Tx, payload: Payload, actor_id: int | None) -> None:
    """Write ``payload``'s event in ``tx``: it commits or rolls back with the change (and the
    relay hears of it once the transaction has committed)."""
    tx.wrote_events = True
    await tx.execute(
        f"event:{payload.type}",
        INSERT_EVENT,
        payload.type,
        payload.aggregate,
        payload.aggregate_id(),
        actor_id,
        1,
        _json.encode(payload).decode(),
    )


def events_from(
    payload: type[Payload],
    fields: Mapping[str, str],
    *,
    aggregate_id: str,
    actor_id: str,
    source: str,
) -> str:
    """An ``INSERT ... SELECT`` of one ``payload`` event per row of ``source`` (what follows
    FROM: tables, joins, conditions, an ORDER BY), the payload built in SQL from ``fields``
    (every field of the payload, as an SQL expression; RFC 3339 text for a datetime). For a
    write that is one statement, its event included (a CTE of it): one round trip, no
    transaction held open between statements. The caller tells the relay after it returns
    (``Database.events_committed``), as a transaction does at commit."""
    wanted = set(payload.__struct_fields__)
    assert set(fields) == wanted, f"{payload.type}: fields {sorted(set(fields) ^ wanted)}"
    body = ", ".join(f"'{k}', {v}" for k, v in fields.items())
    return f"""INSERT INTO events.outbox (type, aggregate, aggregate_id, actor_id, version, payload)
    SELECT '{payload.type}', '{payload.aggregate}', {aggregate_id}, {actor_id}, 1,
           jsonb_build_object({body})
    FROM {source}"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    position: int
    body: bytes  # the event's JSON, as published
    type: str
    id: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    consumer: str
    event_id: int
    type: str
    body: bytes
    error: str
    attempts: int
    failed_at: datetime | None


def envelope(row: Record) -> bytes:
    """The event's JSON from its outbox row (the columns of ``EVENT_COLUMNS``), the stored
    payload spliced in as it is: the bytes every transport carries."""
    head = _json.encode(
        {
            "id": row["id"],
            "type": row["type"],
            "aggregate": row["aggregate"],
            "aggregate_id": row["aggregate_id"],
            "actor_id": row["actor_id"],
            "occurred_at": row["occurred_at"],
            "version": row["version"],
        }
    )
    payload: str = row["payload"]
    return head[:-1] + b',"payload":' + payload.encode() + b"}"


class OutboxStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the relay (inside its batch transaction) --------------------------------------------

    async def claim(self, tx: Tx, lanes: int, lane: int, limit: int) -> list[OutboxRow]:
        """Claim the free partitions of one lane for this transaction and read their oldest
        unsent events, in position order (within an aggregate: commit order)."""
        claimed = [
            r["partition"]
            for r in await tx.fetch("claim_partitions", CLAIM_PARTITIONS, lanes, lane)
        ]
        if not claimed:
            return []
        rows = await tx.fetch("unsent_events", UNSENT, claimed, limit)
        return [OutboxRow(r["position"], envelope(r), r["type"], r["id"]) for r in rows]

    async def mark_sent(self, tx: Tx, positions: list[int]) -> None:
        await tx.execute("mark_events_sent", MARK_SENT, positions)

    async def enqueue(self, tx: Tx, deliveries: list[tuple[str, int, bytes]]) -> None:
        if deliveries:
            consumers, ids, bodies = zip(*deliveries, strict=True)
            await tx.execute("enqueue_deliveries", ENQUEUE, consumers, ids, bodies)

    async def backlog(self) -> tuple[int, datetime | None]:
        row = await self.db.fetchrow("outbox_backlog", BACKLOG)
        assert row is not None
        return row["unsent"], row["oldest"]

    async def purge(self, retention: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` events sent longer than ``retention`` seconds ago and as many
        consumers' records of handled events; the number deleted."""
        sent = await self.db.execute("purge_sent_events", PURGE_SENT, retention, limit)
        handled = await self.db.execute("purge_processed", PURGE_PROCESSED, retention, limit)
        return int(sent.split()[-1]) + int(handled.split()[-1])

    # -- consumers -----------------------------------------------------------------------------

    async def first_time(self, tx: Tx, consumer: str, event_ids: list[int]) -> set[int]:
        """Record these events as handled by ``consumer``; the ones it had not handled before."""
        rows = await tx.fetch("claim_processed", CLAIM_PROCESSED, consumer, event_ids)
        return {r["event_id"] for r in rows}

    # -- in-process queues (no RabbitMQ) ------------------------------------------------------

    async def lease(self, consumer: str, limit: int, seconds: float) -> list[tuple[int, bytes]]:
        rows = await self.db.fetch("lease_deliveries", LEASE, consumer, limit, seconds)
        return sorted((r["id"], bytes(r["body"])) for r in rows)

    async def ack(self, delivery_ids: list[int]) -> None:
        await self.db.execute("ack_deliveries", ACK, delivery_ids)

    async def release(self, delivery_ids: list[int]) -> None:
        """Give leased deliveries back at once (a consumer stopping cleanly)."""
        await self.db.execute("release_deliveries", RELEASE, delivery_ids)

    async def dead_letter(
        self, delivery_id: int, event_type: str, error: str, attempts: int
    ) -> None:
        await self.db.execute(
            "dead_letter_delivery", DEAD_LETTER, delivery_id, event_type, error, attempts
        )

    async def queue_depths(self) -> dict[str, int]:
        return {r["consumer"]: r["n"] for r in await self.db.fetch("queue_depths", QUEUE_DEPTH)}

    async def dead_letter_depths(self) -> dict[str, int]:
        rows = await self.db.fetch("dead_letter_depths", DEAD_LETTER_DEPTH)
        return {r["consumer"]: r["n"] for r in rows}

    async def dead_letters(self, consumer: str | None, limit: int = 1000) -> list[DeadLetter]:
        rows = await self.db.fetch("dead_letters", DEAD_LETTERS, consumer, limit)
        return [
            DeadLetter(
                r["id"],
                r["consumer"],
                r["event_id"],
                r["type"],
                bytes(r["body"]),
                r["error"],
                r["attempts"],
                r["failed_at"],
            )
            for r in rows
        ]

    async def replay(self, consumer: str | None, event_ids: list[int] | None) -> int:
        """Put dead letters back in their consumers' queues; how many."""
        rows = await self.db.fetch("replay_dead_letters", REPLAY, consumer, event_ids)
        return len(rows)
