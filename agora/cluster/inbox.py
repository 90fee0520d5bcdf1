"""Node inboxes: one Redis stream per node, read by that node alone.

Everything that crosses nodes is an :data:`Envelope` for the target node's stream: one per
target node, not per user. A node reads its own stream with ``XREAD BLOCK`` from the position it
had when it started. Posting never blocks the caller: envelopes queue in memory (bounded) and one
flusher task writes them, everything queued for one node in one stream entry (under load dozens
of envelopes share an entry: one XADD and one XREAD item instead of dozens), so per target node
the order of posting is the order of reading.

Nothing is lost without somebody hearing of it:
- An envelope that cannot be queued (the queue is full: Redis has been unreachable for long) is
  dropped, but a ``Deliver`` of message frames leaves a debt: the target node is owed a
  ``Resync`` of those users and conversations, sent once the queue drains (past ``MAX_OWED``
  pairs the debt becomes "everyone there resyncs everything"). A dropped ``Command`` is answered
  "retry" by the router's timer; an ``Evict`` only ages out of a 10-second cache.
- Each entry carries its sender's life and a number counting that sender's entries to this
  reader, fixed when the entry is built: a write retried after its reply was lost writes the
  same entry, and the reader drops a number it has seen (at most once per entry, so presence
  transitions are not told twice). A number that skips (the stream was trimmed, or entries
  were lost in Redis) makes the reader tell every local session to resync: it cannot know whom
  the lost entries were for.

Versions: an entry says its format (``v``); envelopes are tagged arrays whose new fields are
added at the end with defaults, so a node decodes the previous release's envelopes (missing
fields take their defaults) and the next release's (extra trailing fields are ignored), and an
envelope of a kind it does not know is skipped alone, not with its whole entry: a rolling
upgrade can run a mixed cluster.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

import msgspec
import redis.asyncio as aioredis

from agora.storage.redis import Keys, read_stream, stream_tail

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000
MAX_PENDING = 50_000
MAX_OWED = 100_000  # (conversation, user) pairs of lost deliveries remembered per node
FORMAT = b"2"  # entry format: v, f (sender life), n (entry number to this reader), e


class Deliver(msgspec.Struct, tag="deliver", array_like=True):
    """Push encoded frames, in order, to these users' sessions on the receiving node;
    ``conversation_id`` when they are messages of that conversation."""

    users: list[int]
    frames: list[bytes]
    conversation_id: int | None = None


class Resync(msgspec.Struct, tag="resync", array_like=True):
    """Frames to these users (none listed: to everyone on the node) of these conversations
    (none listed: of any) were lost on the way: their sessions must ``sync``."""

    users: list[int] = []
    conversation_ids: list[int] = []


class Command(msgspec.Struct, tag="command", array_like=True):
    """A conversation command for the owner node; the answer goes to ``reply_to``."""

    rid: int
    reply_to: str
    conversation_id: int
    op: bytes  # msgpack of a ConversationOp (see agora.actors.conversation)
    hops: int = 0


class Answer(msgspec.Struct, tag="answer", array_like=True):
    rid: int
    ok: bool
    body: bytes = b""  # msgpack of the result when ok
    code: str = ""
    message: str = ""


class Membership(msgspec.Struct, tag="membership", array_like=True):
    """A node joined or is leaving: look at the registry now rather than at the next beat."""

    node_id: str
    joined: bool


class Evict(msgspec.Struct, tag="evict", array_like=True):
    """Drop in-process cache entries (see agora.services.invalidation)."""

    kind: str
    ids: list[int]


Envelope = Deliver | Command | Answer | Membership | Evict | Resync
_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
Handler = Callable[[Envelope], None]
_Field = bytes | bytearray | memoryview | str | int | float
Entry = dict[_Field, _Field]  # a stream entry's fields, as redis-py types them


def decode_entry(data: bytes) -> list[Envelope]:
    """The envelopes of one entry; one this node cannot read is skipped (and logged) alone."""
    out = []
    for raw in _entry_decoder.decode(data):
        try:
            out.append(_envelope_decoder.decode(raw))
        except msgspec.DecodeError as exc:  # ValidationError included: an unknown kind
            log.warning("skipped an inbox envelope this node cannot read: %s", exc)
    return out


class Inbox:
    def __init__(self, redis: aioredis.Redis, keys: Keys, node_id: str, handler: Handler) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.handler = handler
        self._pending: list[tuple[str, Envelope]] = []
        self._unsent: list[tuple[str, Entry]] = []  # numbered, not yet written
        self._owed: dict[str, dict[int, set[int]]] = {}  # node -> conversation -> users
        self._owed_all: set[str] = set()  # nodes whose every session must resync everything
        self._owed_pairs = 0
        self._numbers: dict[str, int] = {}  # target node -> entries written to it
        self._seen: dict[bytes, int] = {}  # sender life -> highest entry number read from it
        self.on_gap: Callable[[], None] | None = None  # entries were lost: resync everyone
        self.max_pending = MAX_PENDING
        self.dropped = 0  # envelopes refused because the queue was full
        self.gaps = 0
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()  # readers of a previous life, cancelled
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fix the read position first: whatever is posted to us after this is read."""
        stream = self.keys.inbox(self.node_id)
        position = await stream_tail(self.redis, stream)
        self._reader = asyncio.create_task(self._read(stream, position), name="inbox-reader")
        self._flusher = asyncio.create_task(self._flush_loop(), name="inbox-flusher")

    async def stop(self, timeout: float = 3.0) -> None:
        """Stop reading, write what is queued (at most ``timeout`` seconds each: a Redis that
        does not answer must not hold up the node's shutdown)."""
        tasks = {t for t in (self._reader, self._flusher) if t}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self._pending or self._unsent:
            last = asyncio.ensure_future(self._flush())
            done, _ = await asyncio.wait({last}, timeout=timeout)
            if not done or last.exception() is not None:
                last.cancel()
                log.warning("dropped %d inbox envelopes at shutdown", len(self._pending))

    def post(self, node_id: str, envelope: Envelope) -> bool:
        """Queue an envelope for ``node_id``; False when the queue is full (Redis is down), in
        which case lost message frames are owed to the node as a ``Resync``."""
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if isinstance(envelope, Deliver) and envelope.conversation_id:
                self._owe(node_id, envelope.conversation_id, envelope.users)
            return False
        self._pending.append((node_id, envelope))
        self._wake.set()
        return True

    def _owe(self, node_id: str, conversation_id: int, users: list[int]) -> None:
        if node_id in self._owed_all:
            return
        owed = self._owed.setdefault(node_id, {})
        before = len(owed.get(conversation_id, ()))
        owed.setdefault(conversation_id, set()).update(users)
        self._owed_pairs += len(owed[conversation_id]) - before
        if self._owed_pairs > MAX_OWED:  # too much to list: everyone there resyncs everything
            for node in list(self._owed):
                self._owed_all.add(node)
            self._owed.clear()
            self._owed_pairs = 0

    def _settle_debts(self) -> None:
        """Queue the owed resyncs (behind what was queued before them)."""
        for node in self._owed_all:
            self._pending.append((node, Resync()))
        for node, owed in self._owed.items():
            by_users: dict[tuple[int, ...], list[int]] = {}
            for conversation_id, users in owed.items():
                by_users.setdefault(tuple(sorted(users)), []).append(conversation_id)
            for users_key, conversations in by_users.items():
                self._pending.append((node, Resync(list(users_key), sorted(conversations))))
        self._owed_all.clear()
        self._owed.clear()
        self._owed_pairs = 0

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("inbox flush failed; retrying", exc_info=True)
                await asyncio.sleep(0.2)
                self._wake.set()

    async def _flush(self) -> None:
        while True:
            if not self._unsent:
                if (self._owed or self._owed_all) and len(self._pending) <= self.max_pending // 2:
                    self._settle_debts()
                if not self._pending:
                    return
                self._unsent = self._entries()
            async with self.redis.pipeline(transaction=False) as pipe:
                for node_id, fields in self._unsent:
                    pipe.xadd(
                        self.keys.inbox(node_id), fields, maxlen=STREAM_MAXLEN, approximate=True
                    )
                await pipe.execute()
            # Until here a failure leaves the same entries, numbers included, to be written
            # again: one that got through is then read twice, and its reader drops the repeat.
            self._unsent = []

    def _entries(self) -> list[tuple[str, Entry]]:
        """The next batch of queued envelopes as stream entries: one per target node, numbered
        (per target) once and for all, so a retry writes exactly the same entries."""
        batch, self._pending = self._pending[:5000], self._pending[5000:]
        by_node: dict[str, list[Envelope]] = {}
        for node_id, envelope in batch:
            by_node.setdefault(node_id, []).append(envelope)
        me = self.node_id.encode()
        entries: list[tuple[str, Entry]] = []
        for node_id, envelopes in by_node.items():
            number = self._numbers.get(node_id, 0) + 1
            self._numbers[node_id] = number
            fields: Entry = {
                b"v": FORMAT,
                b"f": me,
                b"n": b"%d" % number,
                b"e": _encoder.encode(envelopes),
            }
            entries.append((node_id, fields))
        return entries

    def _fresh(self, fields: dict[bytes, bytes]) -> bool:
        """Entries from each sender life are numbered 1, 2, 3...: a number seen before is a
        repeat (a retried write that had got through) and is dropped; one that skips means
        entries were lost, and every local session is told to resync."""
        sender, raw = fields.get(b"f"), fields.get(b"n")
        if sender is None or raw is None or not raw.isdigit():
            return True  # an older node's entry: not numbered
        number = int(raw)
        last = self._seen.get(sender, 0)
        if number <= last:
            return False
        if number > last + 1:
            log.warning(
                "inbox entries %d..%d from %s were lost; every local session resyncs",
                last + 1,
                number - 1,
                sender.decode(errors="replace"),
            )
            self.gaps += 1
            if self.on_gap is not None:
                self.on_gap()
        self._seen[sender] = number
        return True

    async def _read(self, stream: str, position: bytes) -> None:
        while True:
            try:
                entries = await read_stream(self.redis, stream, position, 1000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("inbox read failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for entry_id, fields in entries:
                position = entry_id
                try:
                    if not self._fresh(fields):
                        continue
                    envelopes = decode_entry(fields[b"e"])
                except (msgspec.DecodeError, KeyError):
                    log.warning("undecodable inbox entry %r", entry_id)
                    continue
                for envelope in envelopes:
                    try:
                        self.handler(envelope)
                    except Exception:
                        log.exception("inbox handler failed")

    async def drop(self, node_id: str) -> None:
        """Delete a dead node life's inbox."""
        await self.redis.delete(self.keys.inbox(node_id))

    def switch(self, node_id: str) -> None:
        """Read the stream of this node's new life (it was declared dead and came back), from
        its start: the stream is new, so whatever anyone posted to the new life is read. The
        old life's stream went with it (the janitor deletes it)."""
        self.node_id = node_id
        self._numbers.clear()  # entries from the new life are numbered from 1 again
        self._seen.clear()  # and so are the entries others write to the new life's stream
        old = self._reader
        if old is not None:
            old.cancel()  # stop() gathers only the current reader: keep the old one referenced
            self._retired.add(old)
            old.add_done_callback(self._retired.discard)
        stream = self.keys.inbox(node_id)
        self._reader = asyncio.create_task(self._read(stream, b"0-0"), name="inbox-reader")


def unnumbered_entry(envelopes: list[Envelope]) -> Entry:
    """An entry from a process that is not a node (``agora worker``): it has no life that
    readers number entries by, so its entries are unnumbered (read as they come, never taken
    for a gap)."""
    return {b"v": FORMAT, b"e": _encoder.encode(envelopes)}


def group_by_node(placements: dict[int, set[str]]) -> dict[str, list[int]]:
    """user -> nodes  ==>  node -> users."""
    by_node: dict[str, list[int]] = defaultdict(list)
    for user, nodes in placements.items():
        for node in nodes:
            by_node[node].append(user)
    return by_node
