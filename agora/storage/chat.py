"""Conversations, members and messages.

Messages are written only by a conversation's owner actor through :meth:`ChatStore.commit`: one
transaction per batch that moves ``last_seq`` from what the owner believes to the batch's last
seq. A stale owner (one that lost ownership without knowing) matches no row and gets
:class:`StaleOwner`; the unique keys ``(conversation_id, seq)`` and
``(conversation_id, sender_id, client_id)`` back that up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from agora.events.types import (
    ConversationCreated,
    MemberAdded,
    MemberRemoved,
    MessageRemoved,
    MessageStored,
)
from agora.storage.accounts import PUBLIC_USER_COLUMNS, PublicUser
from agora.storage.db import Database, Record
from agora.storage.events import append, events_from
from agora.storage.visibility import message_shown, users_hidden

_CONVERSATION_COLUMNS = (
    "c.id, c.kind, c.title, c.created_by, c.last_seq, c.created_at, c.last_activity_at"
)
INSERT_CONVERSATION = """
INSERT INTO chat.conversations (kind, title, created_by, direct_key) VALUES ($1, $2, $3, $4)
ON CONFLICT (direct_key) DO NOTHING
RETURNING id
"""
DIRECT_BY_KEY = "SELECT id FROM chat.conversations WHERE direct_key = $1"
INSERT_MEMBERS = """
INSERT INTO chat.members (conversation_id, user_id, last_read_seq)
SELECT $1, u, (SELECT last_seq FROM chat.conversations WHERE id = $1) FROM unnest($2::bigint[]) u
ON CONFLICT DO NOTHING
RETURNING user_id
"""
DELETE_MEMBER = "DELETE FROM chat.members WHERE conversation_id = $1 AND user_id = $2"
# Member changes take the conversation's row lock first: concurrent adds are counted one after
# another (the cap holds), and a commit racing the change waits for it and then sees the new
# members_version (its fence fails and the owner reloads the member set). The count is its own
# statement: under READ COMMITTED it then sees what the lock's previous holder committed (a
# sub-select in the locking statement would count from before the wait).
LOCK_MEMBERS = "SELECT members_version FROM chat.conversations WHERE id = $1 FOR UPDATE"
COUNT_MEMBERS = """
SELECT count(*) AS members,
       (SELECT count(*) FROM unnest($2::bigint[]) u
        WHERE NOT EXISTS (SELECT 1 FROM chat.members n
                          WHERE n.conversation_id = $1 AND n.user_id = u)) AS new
FROM chat.members m WHERE m.conversation_id = $1
"""
BUMP_MEMBERS_VERSION = """
UPDATE chat.conversations SET members_version = members_version + 1 WHERE id = $1
"""


def _read_columns(m: str, prefix: str = "") -> str:
    """A message as members read it (``chat.messages`` aliased ``m``; the columns of
    :class:`MessageRow`, named with ``prefix``). One removed by a moderator, or whose sender is
    suspended, is a tombstone (its id and seq, no text, ``removed``), so seqs stay gapless for
    sync."""
    return f"""
{m}.id AS {prefix}id, {m}.conversation_id AS {prefix}conversation_id, {m}.seq AS {prefix}seq,
{m}.sender_id AS {prefix}sender_id, {m}.client_id AS {prefix}client_id,
CASE WHEN {message_shown(m)} THEN {m}.text ELSE '' END AS {prefix}text,
{m}.created_at AS {prefix}created_at, NOT {message_shown(m)} AS {prefix}removed
"""


def _with_last_message(conversations: str, order: str = "") -> str:
    """The rows of ``conversations`` (a query of conversation columns), each followed by its
    newest message's columns (``lm_*``; all NULL while it has none): one probe of the unique
    index on (conversation_id, seq) per row, made after the page is cut to its LIMIT. The
    subquery's LIMIT 1 keeps it a lookup per row: without it PostgreSQL may flatten it into a
    join that reads every message of the conversation (it did on small tables)."""
    return f"""
SELECT p.*, {_read_columns("l", "lm_")}
FROM ({conversations}) p
LEFT JOIN LATERAL (SELECT * FROM chat.messages l
                   WHERE l.conversation_id = p.id AND l.seq = p.last_seq LIMIT 1) l ON true
{order}"""


CONVERSATION_FOR_MEMBER = f"""
SELECT {_CONVERSATION_COLUMNS}, m.last_read_seq
FROM chat.conversations c JOIN chat.members m ON m.conversation_id = c.id AND m.user_id = $1
WHERE c.id = $2
"""
# What GET /conversations and /conversations/{id} show: with the newest message.
CONVERSATION_WITH_LAST = _with_last_message(CONVERSATION_FOR_MEMBER)
LIST_CONVERSATIONS = _with_last_message(
    f"""
SELECT {_CONVERSATION_COLUMNS}, m.last_read_seq
FROM chat.members m JOIN chat.conversations c ON c.id = m.conversation_id
WHERE m.user_id = $1 AND (c.last_activity_at, c.id) < ($2::timestamptz, $3::bigint)
ORDER BY c.last_activity_at DESC, c.id DESC
LIMIT $4
""",
    "ORDER BY p.last_activity_at DESC, p.id DESC",
)
# Every member with their receipt (last_read_seq).
MEMBERS_OF = f"""
SELECT m.conversation_id, m.last_read_seq, {PUBLIC_USER_COLUMNS}
FROM chat.members m JOIN accounts.users u ON u.id = m.user_id
WHERE m.conversation_id = ANY($1::bigint[])
ORDER BY m.conversation_id, m.joined_at, m.user_id
"""
STATE = """
SELECT c.kind, c.last_seq, c.members_version,
       array_agg(m.user_id ORDER BY m.user_id) FILTER (WHERE m.user_id IS NOT NULL) AS members
FROM chat.conversations c LEFT JOIN chat.members m ON m.conversation_id = c.id
WHERE c.id = $1
GROUP BY c.id
"""
DIRECT_HIDDEN = f"""
SELECT {users_hidden("a.user_id", "b.user_id")}
FROM chat.members a
JOIN chat.members b ON b.conversation_id = a.conversation_id AND b.user_id > a.user_id
WHERE a.conversation_id = $1
"""
_MESSAGE_COLUMNS = "id, conversation_id, seq, sender_id, client_id, text, created_at"
# The message.stored payload of an inserted message `i`, built in SQL (msgspec reads the
# RFC 3339 timestamp as the payload's datetime).
_STORED_FIELDS = {
    "conversation_id": "i.conversation_id",
    "message_id": "i.id",
    "seq": "i.seq",
    "sender_id": "i.sender_id",
    "text": "i.text",
    "created_at": """to_char(i.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""",
}
# One statement for the waiting batches of many conversations: one round trip and one implicit
# transaction. Per conversation it finds resent client ids, moves last_seq from what its owner
# believes past the fresh messages, but only while the members are the ones the owner checked the
# senders against (members_version): otherwise no row moves (stale) and the owner reloads. Then
# it inserts the messages with their seqs and moves the senders' receipts, and writes a
# message.stored event per message inserted (none for resends) in seq order; the conversation's
# row, moved by `advanced`, stays locked until commit, so its events are in commit order.
COMMIT = f"""
WITH batch AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::int[])
        AS b(conv, sender, client_id, text, ord)
), expected AS (
    SELECT * FROM unnest($6::bigint[], $7::bigint[], $8::bigint[]) AS x(conv, last_seq, members)
), earlier AS (
    SELECT m.{_MESSAGE_COLUMNS.replace(", ", ", m.")}
    FROM chat.messages m
    JOIN batch b
      ON m.conversation_id = b.conv AND m.sender_id = b.sender AND m.client_id = b.client_id
), fresh AS (
    SELECT b.*, row_number() OVER (PARTITION BY b.conv ORDER BY b.ord) AS n FROM batch b
    WHERE NOT EXISTS (SELECT 1 FROM earlier e WHERE e.conversation_id = b.conv
                      AND e.sender_id = b.sender AND e.client_id = b.client_id)
), advanced AS (
    UPDATE chat.conversations c SET last_seq = x.last_seq + k.n, last_activity_at = now()
    FROM expected x JOIN (SELECT conv, count(*) AS n FROM fresh GROUP BY conv) k ON k.conv = x.conv
    WHERE c.id = x.conv AND c.last_seq = x.last_seq AND c.members_version = x.members
    RETURNING c.id
), inserted AS (
    INSERT INTO chat.messages (conversation_id, seq, sender_id, client_id, text)
    SELECT f.conv, x.last_seq + f.n, f.sender, f.client_id, f.text
    FROM fresh f JOIN expected x ON x.conv = f.conv
    WHERE f.conv IN (SELECT id FROM advanced)
    RETURNING {_MESSAGE_COLUMNS}
), receipts AS (
    UPDATE chat.members m SET last_read_seq = r.seq
    FROM (SELECT conversation_id, sender_id, max(seq) AS seq FROM inserted
          GROUP BY conversation_id, sender_id) r
    WHERE m.conversation_id = r.conversation_id AND m.user_id = r.sender_id
      AND m.last_read_seq < r.seq
), stored AS (
    {
    events_from(
        MessageStored,
        _STORED_FIELDS,
        aggregate_id="i.conversation_id",
        actor_id="i.sender_id",
        source="inserted i ORDER BY i.conversation_id, i.seq",
    )
}
)
SELECT true AS fresh, i.* FROM inserted i
UNION ALL
SELECT false AS fresh, e.* FROM earlier e
"""
MARK_READ = """
UPDATE chat.members m SET last_read_seq = least($3::bigint, c.last_seq)
FROM chat.conversations c
WHERE m.conversation_id = $1 AND m.user_id = $2 AND c.id = m.conversation_id
  AND m.last_read_seq < least($3::bigint, c.last_seq)
RETURNING m.last_read_seq
"""
_READ_COLUMNS = _read_columns("m")
MESSAGES_AFTER = f"""
SELECT {_READ_COLUMNS} FROM chat.messages m
WHERE m.conversation_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3
"""
MESSAGES_BEFORE = f"""
SELECT {_READ_COLUMNS} FROM chat.messages m
WHERE m.conversation_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3
"""
# A moderator's removal: the text goes (the audit entry keeps a copy), the row and seq stay.
REMOVE_MESSAGE = """
UPDATE chat.messages SET text = '', removed_at = now()
WHERE id = $1 AND removed_at IS NULL
RETURNING conversation_id, seq, sender_id
"""


class StaleOwner(Exception):
    """``last_seq`` or the members moved under this owner (another node committed, or a member
    was added or removed): reload and retry."""


class TooManyMembers(Exception):
    pass


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: int
    conversation_id: int
    seq: int
    sender_id: int
    client_id: str
    text: str
    created_at: datetime
    removed: bool = False  # a tombstone (see MESSAGES_AFTER)

    @classmethod
    def of(cls, row: Record, skip: int = 0) -> MessageRow:
        return cls(*list(row.values())[skip:])


@dataclass(slots=True)
class Committed:
    new: list[MessageRow]
    earlier: dict[tuple[int, str], MessageRow]


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: int
    kind: Literal["direct", "group"]
    title: str | None
    created_by: int
    last_seq: int
    created_at: datetime
    last_activity_at: datetime
    last_read_seq: int
    # The newest message, from the statements that read it (_with_last_message): None there
    # while the conversation has no message.
    last_message: MessageRow | None = None

    @classmethod
    def of(cls, row: Record) -> ConversationRow:
        last = MessageRow.of(row, 8) if len(row) > 8 and row["lm_id"] is not None else None
        return cls(
            row["id"],
            row["kind"],
            row["title"],
            row["created_by"],
            row["last_seq"],
            row["created_at"],
            row["last_activity_at"],
            row["last_read_seq"],
            last,
        )


@dataclass(slots=True)
class Roster:
    """A conversation's members (in the order they joined) and their receipts by user id."""

    members: list[PublicUser]
    read_seqs: dict[int, int]


@dataclass(frozen=True, slots=True)
class ConversationState:
    """What a conversation's actor keeps in memory."""

    kind: str
    last_seq: int
    members: frozenset[int]
    members_version: int = 0


@dataclass(frozen=True, slots=True)
class Outgoing:
    sender_id: int
    client_id: str
    text: str


def direct_key(a: int, b: int) -> str:
    return f"{min(a, b)}:{max(a, b)}"


class ChatStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- conversations -----------------------------------------------------------------------

    async def create(
        self, kind: str, title: str | None, creator: int, members: list[int]
    ) -> tuple[int, bool]:
        """Create a conversation with its members; for a direct one that exists, return it."""
        key = direct_key(creator, members[0]) if kind == "direct" else None
        async with self.db.transaction("create_conversation") as tx:
            conv_id = await tx.fetchval(
                "insert_conversation", INSERT_CONVERSATION, kind, title, creator, key
            )
            if conv_id is None:
                existing: int = await tx.fetchval("direct_by_key", DIRECT_BY_KEY, key)
                return existing, False
            member_ids = [creator, *members]
            await tx.execute("insert_members", INSERT_MEMBERS, conv_id, member_ids)
            await append(
                tx,
                ConversationCreated(
                    conversation_id=conv_id,
                    kind=kind,
                    title=title,
                    created_by=creator,
                    member_ids=member_ids,
                ),
                creator,
            )
        return conv_id, True

    async def for_member(
        self, user_id: int, conversation_id: int, last_message: bool = False
    ) -> ConversationRow | None:
        """The conversation if ``user_id`` is a member; ``last_message``: with its newest
        message too (what GET /conversations/{id} shows)."""
        if last_message:
            name, sql = "conversation_with_last", CONVERSATION_WITH_LAST
        else:
            name, sql = "conversation_for_member", CONVERSATION_FOR_MEMBER
        row = await self.db.fetchrow(name, sql, user_id, conversation_id)
        return ConversationRow.of(row) if row else None

    async def list_for(
        self, user_id: int, before: tuple[datetime, int], limit: int
    ) -> list[ConversationRow]:
        rows = await self.db.fetch(
            "list_conversations", LIST_CONVERSATIONS, user_id, before[0], before[1], limit
        )
        return [ConversationRow.of(r) for r in rows]

    async def rosters(self, conversation_ids: list[int]) -> dict[int, Roster]:
        """Members and receipts of several conversations, in one statement."""
        out = {cid: Roster([], {}) for cid in conversation_ids}
        for row in await self.db.fetch("conversation_members", MEMBERS_OF, conversation_ids):
            roster = out[row["conversation_id"]]
            roster.members.append(PublicUser.of(row))
            roster.read_seqs[row["u_id"]] = row["last_read_seq"]
        return out

    async def members_of(self, conversation_ids: list[int]) -> dict[int, list[PublicUser]]:
        return {cid: r.members for cid, r in (await self.rosters(conversation_ids)).items()}

    async def add_members(
        self, conversation_id: int, user_ids: list[int], limit: int, actor_id: int | None = None
    ) -> None:
        """Add members (those already in are skipped; a conversation.member_added event for
        each one added, by ``actor_id``); raises :class:`TooManyMembers` when the conversation
        would pass ``limit``, counted under the conversation's row lock."""
        async with self.db.transaction("add_members") as tx:
            await tx.execute("lock_members", LOCK_MEMBERS, conversation_id)
            counts = await tx.fetchrow("count_members", COUNT_MEMBERS, conversation_id, user_ids)
            assert counts is not None
            count, new = counts["members"], counts["new"]
            if count + new > limit:
                raise TooManyMembers(limit)
            if new:
                added = await tx.fetch("insert_members", INSERT_MEMBERS, conversation_id, user_ids)
                await tx.execute("bump_members_version", BUMP_MEMBERS_VERSION, conversation_id)
                for row in added:
                    await append(
                        tx,
                        MemberAdded(conversation_id=conversation_id, user_id=row["user_id"]),
                        actor_id,
                    )

    async def remove_member(
        self, conversation_id: int, user_id: int, actor_id: int | None = None
    ) -> bool:
        """Remove a member (conversation.member_removed, by ``actor_id``); False when not one."""
        async with self.db.transaction("remove_member") as tx:
            await tx.execute("lock_members", LOCK_MEMBERS, conversation_id)
            if await tx.execute("remove_member", DELETE_MEMBER, conversation_id, user_id) == (
                "DELETE 0"
            ):
                return False
            await tx.execute("bump_members_version", BUMP_MEMBERS_VERSION, conversation_id)
            await append(
                tx, MemberRemoved(conversation_id=conversation_id, user_id=user_id), actor_id
            )
        return True

    # -- the owner actor's view -------------------------------------------------------------

    async def state(self, conversation_id: int) -> ConversationState | None:
        row = await self.db.fetchrow("conversation_state", STATE, conversation_id)
        if row is None:
            return None
        return ConversationState(
            row["kind"], row["last_seq"], frozenset(row["members"] or ()), row["members_version"]
        )

    async def direct_hidden(self, conversation_id: int) -> bool:
        """For a direct conversation: has one of the two blocked the other (or been suspended)?"""
        return bool(await self.db.fetchval("direct_hidden", DIRECT_HIDDEN, conversation_id))

    async def commit(
        self, conversation_id: int, last_seq: int, batch: list[Outgoing], members_version: int = 0
    ) -> Committed:
        """Store one conversation's batch (see :meth:`commit_many`); raises :class:`StaleOwner`."""
        result = (await self.commit_many([(conversation_id, last_seq, members_version, batch)]))[
            conversation_id
        ]
        if isinstance(result, StaleOwner):
            raise result
        return result

    async def commit_many(
        self, batches: list[tuple[int, int, int, list[Outgoing]]]
    ) -> dict[int, Committed | StaleOwner]:
        """Store several conversations' batches in one statement.

        Each entry is ``(conversation_id, last_seq and members_version its owner believes,
        batch)`` with every (sender, client_id) once and each conversation once; the owner has
        checked every sender against the member set of that version. Per conversation the answer
        is the new messages (seqs ``last_seq + 1 ...`` in batch order, resends left out) with the
        earlier messages of resent client ids, or :class:`StaleOwner` when ``last_seq`` or
        ``members_version`` was not the stored one. A conflict between two owners fails the whole
        statement: every conversation in it then gets StaleOwner and its actor reloads and
        retries.
        """
        convs, senders, client_ids, texts, ords = [], [], [], [], []
        for conv, _, _, batch in batches:
            for i, out in enumerate(batch):
                convs.append(conv)
                senders.append(out.sender_id)
                client_ids.append(out.client_id)
                texts.append(out.text)
                ords.append(i)
        try:
            rows = await self.db.fetch(
                "commit_messages",
                COMMIT,
                convs,
                senders,
                client_ids,
                texts,
                ords,
                [conv for conv, _, _, _ in batches],
                [last for _, last, _, _ in batches],
                [version for _, _, version, _ in batches],
            )
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            return {conv: StaleOwner(conv) for conv, _, _, _ in batches}
        if any(row["fresh"] for row in rows):
            self.db.events_committed()  # its message.stored events (one statement, committed)
        results: dict[int, Committed | StaleOwner] = {}
        grouped: dict[int, Committed] = {conv: Committed([], {}) for conv, _, _, _ in batches}
        for row in rows:
            message = MessageRow.of(row, 1)
            found = grouped[message.conversation_id]
            if row["fresh"]:
                found.new.append(message)
            else:
                found.earlier[(message.sender_id, message.client_id)] = message
        for conv, _, _, batch in batches:
            found = grouped[conv]
            if len(found.new) + len(found.earlier) < len(batch):
                results[conv] = StaleOwner(conv)
            else:
                found.new.sort(key=lambda m: m.seq)
                results[conv] = found
        return results

    # -- reading -----------------------------------------------------------------------------

    async def mark_read(self, conversation_id: int, user_id: int, seq: int) -> int | None:
        """Move the member's receipt forward (never back, never past the end); the new value,
        or None when nothing changed."""
        value: int | None = await self.db.fetchval(
            "mark_read", MARK_READ, conversation_id, user_id, seq
        )
        return value

    async def messages_after(
        self, conversation_id: int, after_seq: int, limit: int
    ) -> list[MessageRow]:
        rows = await self.db.fetch(
            "messages_after", MESSAGES_AFTER, conversation_id, after_seq, limit
        )
        return [MessageRow.of(r) for r in rows]

    async def messages_before(
        self, conversation_id: int, before_seq: int, limit: int
    ) -> list[MessageRow]:
        rows = await self.db.fetch(
            "messages_before", MESSAGES_BEFORE, conversation_id, before_seq, limit
        )
        return [MessageRow.of(r) for r in rows]

    async def remove_message(self, message_id: int, actor_id: int) -> bool:
        """Empty a message's text and mark it removed (message.removed); False when it was
        gone or already removed."""
        async with self.db.transaction("remove_message") as tx:
            row = await tx.fetchrow("remove_message", REMOVE_MESSAGE, message_id)
            if row is None:
                return False
            await append(
                tx,
                MessageRemoved(
                    conversation_id=row["conversation_id"],
                    message_id=message_id,
                    seq=row["seq"],
                    sender_id=row["sender_id"],
                ),
                actor_id,
            )
        return True
