"""Conversation actors: one per active conversation, one owner in the whole cluster.

The owner assigns ``seq`` (1, 2, 3, ... no gap, no repeat), commits every send waiting in its
mailbox in one transaction (group commit), answers each sender only after that commit, then fans
the messages out in ``seq`` order. ``ChatStore.commit`` fences it: if another node committed
meanwhile (ownership moved under it), the commit fails, the actor reloads ``last_seq`` and
retries, and resent ``client_id``s are found instead of stored twice. It keeps who is typing,
and stops itself after ``idle_timeout`` seconds without mail; the next command starts it again
from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from agora.actors.base import Actor, ActorStopped, MailboxFull, Reply
from agora.actors.committer import CommitRequest, Committer
from agora.clock import Clock
from agora.errors import AppError, ErrorCode, forbidden, not_found
from agora.protocol.chat import MessageOut
from agora.protocol.frames import MessageFrame, ReadFrame, TypingFrame, encode
from agora.storage.chat import ChatStore, ConversationState, MessageRow, Outgoing, StaleOwner

log = logging.getLogger(__name__)

TYPING_REPEAT = 1.0  # re-announce a typist at most once a second
TYPING_EXPIRES = 5.0  # a typing indicator ends this long after its last frame (API.md: ~5 s)
COMMIT_ATTEMPTS = 5
REMEMBERED_ACKS = 2048


# -- the commands (the same structs travel between nodes as msgpack) ----------------------


class SendOp(msgspec.Struct, tag="send", array_like=True):
    sender_id: int
    client_id: str
    text: str


class TypingOp(msgspec.Struct, tag="typing", array_like=True):
    user_id: int


class ReadOp(msgspec.Struct, tag="read", array_like=True):
    user_id: int
    seq: int


class MembersChangedOp(msgspec.Struct, tag="members", array_like=True):
    """Membership changed in PostgreSQL: reload it before the next command."""


ConversationOp = SendOp | TypingOp | ReadOp | MembersChangedOp


class Sent(msgspec.Struct, array_like=True):
    """The answer to a send: the stored message, and whether this send stored it."""

    message: MessageOut
    created: bool


op_encoder = msgspec.msgpack.Encoder()
op_decoder = msgspec.msgpack.Decoder(ConversationOp)
sent_decoder = msgspec.msgpack.Decoder(Sent)


def message_out(row: MessageRow) -> MessageOut:
    return MessageOut(
        id=str(row.id),
        conversation_id=str(row.conversation_id),
        seq=row.seq,
        sender_id=str(row.sender_id),
        text=row.text,
        client_id=row.client_id,
        created_at=row.created_at,
    )


class Deliverer(Protocol):
    async def deliver(self, users: list[int], frames: list[bytes]) -> None: ...


# -- the actor ---------------------------------------------------------------------------------


class ConversationActor(Actor[ConversationOp]):
    kind = "conversation"

    def __init__(
        self,
        conversation_id: int,
        store: ChatStore,
        committer: Committer,
        out: Deliverer,
        clock: Clock,
        idle_timeout: float = 60.0,
        mailbox_size: int = 2000,
    ) -> None:
        super().__init__(f"conversation-{conversation_id}", mailbox_size)
        self.id = conversation_id
        self.store = store
        self.committer = committer
        self.out = out
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.state: ConversationState | None = None
        self._acks: OrderedDict[tuple[int, str], MessageOut] = OrderedDict()
        self._typing: dict[int, float] = {}  # user -> when last announced (monotonic)

    async def on_start(self) -> None:
        self.state = await self.store.state(self.id)

    @property
    def members(self) -> frozenset[int]:
        return self.state.members if self.state else frozenset()

    def _check_member(self, user_id: int) -> None:
        if self.state is None or user_id not in self.state.members:
            raise not_found("conversation")

    async def receive_many(self, items: list[tuple[ConversationOp, Reply | None]]) -> None:
        if any(isinstance(op, MembersChangedOp) for op, _ in items):
            self.state = await self.store.state(self.id)
        sends: list[tuple[SendOp, Reply | None]] = []
        for op, reply in items:
            if isinstance(op, SendOp):
                sends.append((op, reply))
            elif isinstance(op, MembersChangedOp):
                if reply:
                    reply(None)
            else:
                await self._deliver(op, reply)
        if sends:
            await self._send_batch(sends)

    async def receive(self, op: ConversationOp) -> Any:
        if isinstance(op, TypingOp):
            return await self._typing_op(op)
        if isinstance(op, ReadOp):
            return await self._read_op(op)
        raise AppError(ErrorCode.INTERNAL_ERROR, f"unexpected {type(op).__name__}")

    # -- sends -----------------------------------------------------------------------------------

    async def _send_batch(self, sends: list[tuple[SendOp, Reply | None]]) -> None:
        accepted: list[tuple[SendOp, Reply | None]] = []
        for op, reply in sends:
            try:
                self._check_member(op.sender_id)
            except AppError as err:
                if reply:
                    reply(err)
                continue
            earlier = self._acks.get((op.sender_id, op.client_id))
            if earlier is not None:
                if reply:
                    reply(Sent(earlier, False))
                continue
            accepted.append((op, reply))
        if not accepted:
            return
        assert self.state is not None
        if self.state.kind == "direct" and await self.store.direct_hidden(self.id):
            for _, reply in accepted:
                if reply:
                    reply(forbidden("you cannot message this user"))
            return

        batch: list[Outgoing] = []
        once: set[tuple[int, str]] = set()
        for op, _ in accepted:  # a client_id sent twice in one batch is stored once
            if (op.sender_id, op.client_id) not in once:
                once.add((op.sender_id, op.client_id))
                batch.append(Outgoing(op.sender_id, op.client_id, op.text))
        for _ in range(COMMIT_ATTEMPTS):
            try:
                committed = await self.committer.ask(
                    CommitRequest(self.id, self.state.last_seq, batch)
                )
                new, earlier_rows = committed.new, committed.earlier
                break
            except StaleOwner:
                # Another node committed under us (ownership moved): catch up and retry.
                log.warning("conversation %d: last_seq moved under this owner; reloading", self.id)
                self.state = await self.store.state(self.id)
                if self.state is None:
                    for _, reply in accepted:
                        if reply:
                            reply(not_found("conversation"))
                    return
        else:
            for _, reply in accepted:
                if reply:
                    reply(AppError(ErrorCode.UNAVAILABLE, "could not store the message; retry"))
            return

        if new:
            self.state = ConversationState(self.state.kind, new[-1].seq, self.state.members)
            for row in new:  # a sent message ends its typing: the next `typing` is news at once
                self._typing.pop(row.sender_id, None)
        outs = {(r.sender_id, r.client_id): (message_out(r), True) for r in new}
        for key, row in earlier_rows.items():
            outs.setdefault(key, (message_out(row), False))
        for op, reply in accepted:
            key = (op.sender_id, op.client_id)
            message, created = outs[key]
            outs[key] = (message, False)  # a repeat within the batch is a resend
            self._remember(key, message)
            if reply:
                reply(Sent(message, created))
        if new:
            frames = [
                encode(MessageFrame(message=outs[(r.sender_id, r.client_id)][0])) for r in new
            ]
            await self.out.deliver(sorted(self.state.members), frames)

    def _remember(self, key: tuple[int, str], message: MessageOut) -> None:
        self._acks[key] = message
        if len(self._acks) > REMEMBERED_ACKS:
            self._acks.popitem(last=False)

    # -- typing and receipts -------------------------------------------------------------------

    async def _typing_op(self, op: TypingOp) -> None:
        self._check_member(op.user_id)
        now = self.clock.monotonic()
        if now - self._typing.get(op.user_id, -TYPING_REPEAT) < TYPING_REPEAT:
            return
        self._typing[op.user_id] = now
        frame = encode(
            TypingFrame(
                conversation_id=str(self.id), user_id=str(op.user_id), expires_in=TYPING_EXPIRES
            )
        )
        await self.out.deliver([m for m in self.members if m != op.user_id], [frame])

    async def _read_op(self, op: ReadOp) -> None:
        self._check_member(op.user_id)
        seq = await self.store.mark_read(self.id, op.user_id, op.seq)
        if seq is None:
            return
        frame = encode(ReadFrame(conversation_id=str(self.id), user_id=str(op.user_id), seq=seq))
        await self.out.deliver([m for m in self.members if m != op.user_id], [frame])


# -- the local directory ---------------------------------------------------------------------------


class ConversationDirectory:
    """Finds (and starts) the local actor of a conversation this node owns."""

    def __init__(
        self,
        factory: Callable[[int], ConversationActor],
        metrics_gauge: Any | None = None,
        on_crash: Callable[[str], None] | None = None,
    ) -> None:
        self._factory = factory
        self._actors: dict[int, ConversationActor] = {}
        self._gauge = metrics_gauge
        self._on_crash = on_crash

    def __len__(self) -> int:
        return len(self._actors)

    def submit(self, conversation_id: int, op: ConversationOp, reply: Reply | None) -> None:
        for _ in range(2):
            actor = self._actors.get(conversation_id)
            if actor is None or not actor.alive:
                actor = self._start(conversation_id)
            try:
                actor.tell(op, reply)
                return
            except ActorStopped:
                continue  # it went idle just now: start a fresh one
            except MailboxFull as err:
                if reply:
                    reply(err)
                return
        if reply:
            reply(ActorStopped(f"conversation {conversation_id}"))

    def _start(self, conversation_id: int) -> ConversationActor:
        actor = self._factory(conversation_id)
        actor.on_exit = self._forget
        actor.on_crash = self._on_crash
        self._actors[conversation_id] = actor
        actor.start()
        if self._gauge is not None:
            self._gauge.set(len(self._actors))
        return actor

    def _forget(self, actor: Actor[Any]) -> None:
        assert isinstance(actor, ConversationActor)
        if self._actors.get(actor.id) is actor:
            del self._actors[actor.id]
        if self._gauge is not None:
            self._gauge.set(len(self._actors))

    async def stop_where(self, predicate: Callable[[int], bool]) -> None:
        """Stop the actors of conversations for which ``predicate(id)`` holds."""
        doomed = [a for cid, a in list(self._actors.items()) if predicate(cid)]
        # Together: each finishes its batch in hand (a commit, a fan-out); one after another,
        # a large rebalance could hold up the heartbeat that triggered it past the timeout.
        await asyncio.gather(*(actor.stop() for actor in doomed))

    async def stop_all(self) -> None:
        await self.stop_where(lambda _cid: True)
