"""Node inboxes: one Redis stream per node, read by that node alone.

Everything that crosses nodes is an :data:`Envelope` for the target node's stream: one per
target node, not per user. A node reads its own stream with ``XREAD BLOCK`` from the position it
had when it started. Posting never blocks the caller: envelopes queue in memory (bounded) and one
flusher task writes them, everything queued for one node in one stream entry (under load dozens
of envelopes share an entry: one XADD and one XREAD item instead of dozens), so per target node
the order of posting is the order of reading.
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


class Deliver(msgspec.Struct, tag="deliver", array_like=True):
    """Push encoded frames, in order, to these users' sessions on the receiving node."""

    users: list[int]
    frames: list[bytes]


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


Envelope = Deliver | Command | Answer | Membership | Evict
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Envelope])
Handler = Callable[[Envelope], None]


class Inbox:
    def __init__(self, redis: aioredis.Redis, keys: Keys, node_id: str, handler: Handler) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.handler = handler
        self._pending: list[tuple[str, Envelope]] = []
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fix the read position first: whatever is posted to us after this is read."""
        position = await stream_tail(self.redis, self.keys.inbox(self.node_id))
        self._reader = asyncio.create_task(self._read(position), name="inbox-reader")
        self._flusher = asyncio.create_task(self._flush_loop(), name="inbox-flusher")

    async def stop(self) -> None:
        for task in (self._reader, self._flusher):
            if task:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._reader, self._flusher) if t), return_exceptions=True
        )
        if self._pending:
            try:
                await self._flush()
            except Exception:
                log.warning("dropped %d inbox envelopes at shutdown", len(self._pending))

    def post(self, node_id: str, envelope: Envelope) -> bool:
        """Queue an envelope for ``node_id``; False when the queue is full (Redis is down)."""
        if len(self._pending) >= MAX_PENDING:
            return False
        self._pending.append((node_id, envelope))
        self._wake.set()
        return True

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
        while self._pending:
            batch, self._pending = self._pending[:5000], self._pending[5000:]
            by_node: dict[str, list[Envelope]] = {}
            for node_id, envelope in batch:
                by_node.setdefault(node_id, []).append(envelope)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for node_id, envelopes in by_node.items():
                        pipe.xadd(
                            self.keys.inbox(node_id),
                            {b"e": _encoder.encode(envelopes)},
                            maxlen=STREAM_MAXLEN,
                            approximate=True,
                        )
                    await pipe.execute()
            except BaseException:
                self._pending[:0] = batch  # keep the order for the retry
                raise

    async def _read(self, position: bytes) -> None:
        stream = self.keys.inbox(self.node_id)
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
                    envelopes = _decoder.decode(fields[b"e"])
                except (msgspec.DecodeError, KeyError):
                    log.warning("undecodable inbox entry %r", entry_id)
                    continue
                for envelope in envelopes:
                    try:
                        self.handler(envelope)
                    except Exception:
                        log.exception("inbox handler failed")

    async def drop(self, node_id: str) -> None:
        """Delete a dead node's inbox."""
        await self.redis.delete(self.keys.inbox(node_id))


def group_by_node(placements: dict[int, set[str]]) -> dict[str, list[int]]:
    """user -> nodes  ==>  node -> users."""
    by_node: dict[str, list[int]] = defaultdict(list)
    for user, nodes in placements.items():
        for node in nodes:
            by_node[node].append(user)
    return by_node
