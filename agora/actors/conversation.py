"""Conversation actors: one per active conversation, one owner in the whole cluster.

The owner assigns ``seq`` (1, 2, 3, ... no gap, no repeat), commits every send waiting in its
mailbox in one transaction (group commit), answers each sender only after that commit, then fans
the messages out in ``seq`` order. ``ChatStore.commit`` fences it twice: on ``last_seq`` (another
node committed meanwhile: ownership moved under it) and on ``members_version`` (a member was added
or removed since the actor loaded its member set, and the notice to reload was lost or is still
on its way). Either way the commit stores nothing, the actor reloads and retries, so a removed
member can neither store a message nor receive one committed after the removal; resent
``client_id``s are found instead of stored twice, and fanned out again unless this actor fanned
them out itself (the first commit's answer may have been lost).

Typing and read receipts are coalesced per member while they wait: a member's flood of them
takes one place in the mailbox, never the others' room. The actor stops itself after
``idle_timeout`` seconds without mail; the next command starts it again from PostgreSQL.

:class:`ConversationDirectory` is the admission point: a command for a conversation with no live
actor starts one only when the conversation exists and the caller is a member (one PostgreSQL
read, shared by the commands that arrive meanwhile), at most ``max_actors`` live at once (the
least recently used idle one makes room; with none idle the caller hears "retry").
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from agora.actors.base import Actor, ActorStopped, MailboxFull, Reply
from agora.actors.committer import CommitRequest, Committer, through_blips
from agora.clock import Clock
from agora.errors import AppError, ErrorCode, forbidden, not_found
from agora.protocol.chat import MessageOut
from agora.protocol.frames import MessageFrame, ReadFrame, TypingFrame, encode
from agora.storage.chat import ChatStore, ConversationState, MessageRow, Outgoing, StaleOwner

log = logging.getLogger(__name__)

TYPING_REPEAT = 1.0  # re-announce a typist at most once a second
TYPING_EXPIRES = 5.0  # a typing indicator ends this long after its last frame (API.md: ~5 s)
COMMIT_ATTEMPTS = 5
REMEMBERED_SENDS = 2048  # (sender, client_id) -> seq of messages this actor fanned out
REFUSALS_KEPT = 10_000  # (conversation, user) refused admission, remembered briefly
REFUSAL_TTL = 5.0
MAX_ADMITTING = 64  # conversations being loaded for admission at once, per node
MAX_WAITING = 256  # commands waiting for one conversation's admission


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
        removed=row.removed,
    )


class Deliverer(Protocol):
    async def deliver(
        self, users: list[int], frames: list[bytes], conversation_id: int | None = None
    ) -> None: ...


def _retry(message: str) -> AppError:
    return AppError(ErrorCode.UNAVAILABLE, message, status=503, headers={"Retry-After": "1"})


def _caller(op: ConversationOp) -> int | None:
    if isinstance(op, SendOp):
        return op.sender_id
    if isinstance(op, TypingOp | ReadOp):
        return op.user_id
    return None


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
        state: ConversationState | None = None,
    ) -> None:
        super().__init__(f"conversation-{conversation_id}", mailbox_size, clock)
        self.id = conversation_id
        self.store = store
        self.committer = committer
        self.out = out
        self.idle_timeout = idle_timeout
        self.state = state  # loaded by the directory's admission, or in on_start
        self._sent: OrderedDict[tuple[int, str], int] = OrderedDict()
        self._typing: dict[int, float] = {}  # user -> when last announced (monotonic)
        self._waiting_reads: dict[int, ReadOp] = {}  # user -> the one queued read receipt
        self._waiting_typing: set[int] = set()  # users with a typing op queued

    async def on_start(self) -> None:
        if self.state is None:
            self.state = await self.store.state(self.id)

    async def on_failure(self, exc: BaseException) -> bool:
        self.state = await self.store.state(self.id)
        return True

    @property
    def members(self) -> frozenset[int]:
        return self.state.members if self.state else frozenset()

    def tell(self, message: ConversationOp, reply: Reply | None = None) -> None:
        """Typing and receipts wait at most once per member: a newer one merges into the queued
        one (the highest seq wins) and is answered at once."""
        if isinstance(message, ReadOp):
            queued = self._waiting_reads.get(message.user_id)
            if queued is not None:
                queued.seq = max(queued.seq, message.seq)
                if reply:
                    reply(None)
                return
            super().tell(message, reply)
            self._waiting_reads[message.user_id] = message
        elif isinstance(message, TypingOp):
            if message.user_id in self._waiting_typing:
                if reply:
                    reply(None)
                return
            super().tell(message, reply)
            self._waiting_typing.add(message.user_id)
        else:
            super().tell(message, reply)

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
            self._waiting_typing.discard(op.user_id)
            return await self._typing_op(op)
        if isinstance(op, ReadOp):
            self._waiting_reads.pop(op.user_id, None)
            return await self._read_op(op)
        raise AppError(ErrorCode.INTERNAL_ERROR, f"unexpected {type(op).__name__}")

    # -- sends -----------------------------------------------------------------------------------

    async def _send_batch(self, sends: list[tuple[SendOp, Reply | None]]) -> None:
        for _ in range(COMMIT_ATTEMPTS):
            if self.state is None:
                for _, reply in sends:
                    if reply:
                        reply(not_found("conversation"))
                return
            accepted: list[tuple[SendOp, Reply | None]] = []
            for op, reply in sends:
                if op.sender_id in self.state.members:
                    accepted.append((op, reply))
                elif reply:
                    reply(not_found("conversation"))
            if not accepted:
                return
            sends = accepted
            if self.state.kind == "direct" and await through_blips(
                lambda: self.store.direct_hidden(self.id), self.clock
            ):
                for _, reply in sends:
                    if reply:
                        reply(forbidden("you cannot message this user"))
                return
            batch: list[Outgoing] = []
            once: set[tuple[int, str]] = set()
            for op, _ in sends:  # a client_id sent twice in one batch is stored once
                if (op.sender_id, op.client_id) not in once:
                    once.add((op.sender_id, op.client_id))
                    batch.append(Outgoing(op.sender_id, op.client_id, op.text))
            request = CommitRequest(self.id, self.state.last_seq, self.state.members_version, batch)
            try:
                committed = await self.committer.ask(request)
                break
            except StaleOwner:
                # Another node committed under us (ownership moved), or the members changed:
                # catch up, check the senders against the new member set, and go again.
                log.info("conversation %d: last_seq or members moved; reloading", self.id)
                self.state = await through_blips(lambda: self.store.state(self.id), self.clock)
        else:
            for _, reply in sends:
                if reply:
                    reply(_retry("could not store the message; retry"))
            return

        new, earlier_rows = committed.new, committed.earlier
        if new:
            self.state = ConversationState(
                self.state.kind, new[-1].seq, self.state.members, self.state.members_version
            )
            for row in new:  # a sent message ends its typing: the next `typing` is news at once
                self._typing.pop(row.sender_id, None)
        outs = {(r.sender_id, r.client_id): (message_out(r), True) for r in new}
        for key, row in earlier_rows.items():
            outs.setdefault(key, (message_out(row), False))
        for op, reply in sends:
            key = (op.sender_id, op.client_id)
            message, created = outs[key]
            outs[key] = (message, False)  # a repeat within the batch is a resend
            if reply:
                reply(Sent(message, created))
        # Found stored but not fanned out by this actor: the first commit's answer may have been
        # lost before its fan-out (a crash, a lost connection), so it goes out again; clients
        # drop duplicates by message id.
        again = sorted(
            (r for key, r in earlier_rows.items() if key not in self._sent), key=lambda r: r.seq
        )
        for row in [*again, *new]:
            self._remember((row.sender_id, row.client_id), row.seq)
        if again or new:
            frames = [encode(MessageFrame(message=message_out(r))) for r in [*again, *new]]
            await self.out.deliver(sorted(self.state.members), frames, self.id)

    def _remember(self, key: tuple[int, str], seq: int) -> None:
        self._sent[key] = seq
        if len(self._sent) > REMEMBERED_SENDS:
            self._sent.popitem(last=False)

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

Factory = Callable[[int, ConversationState], ConversationActor]
Resubmit = Callable[[int, ConversationOp, Reply | None], None]


class ConversationDirectory:
    """Admits commands to the local actors of the conversations this node owns (see the module
    docstring): only members start an actor, live actors are capped, idle ones make room."""

    def __init__(
        self,
        factory: Factory,
        store: ChatStore,
        clock: Clock,
        max_actors: int = 10_000,
        metrics_gauge: Any | None = None,
        on_crash: Callable[[str], None] | None = None,
    ) -> None:
        self._factory = factory
        self._store = store
        self._clock = clock
        self.max_actors = max_actors
        self._actors: OrderedDict[int, ConversationActor] = OrderedDict()  # least recent first
        self._admitting: dict[int, list[tuple[ConversationOp, Reply | None]]] = {}
        self._refused: OrderedDict[tuple[int, int], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._gauge = metrics_gauge
        self._on_crash = on_crash
        self.closing = False
        # Where leftovers of a stopped actor go: the router (the conversation may have moved).
        self.resubmit: Resubmit = self.submit
        self.refused = 0  # commands refused admission (tests, metrics)

    def __len__(self) -> int:
        return len(self._actors)

    def submit(self, conversation_id: int, op: ConversationOp, reply: Reply | None) -> None:
        if isinstance(op, MembersChangedOp):  # a refusal remembered may be wrong now
            for key in [k for k in self._refused if k[0] == conversation_id]:
                del self._refused[key]
        actor = self._actors.get(conversation_id)
        if actor is not None and actor.alive:
            self._actors.move_to_end(conversation_id)
            try:
                actor.tell(op, reply)
                return
            except ActorStopped:
                pass  # it went idle just now: admit to a fresh one
            except MailboxFull as err:
                if reply:
                    reply(err)
                return
        if isinstance(op, MembersChangedOp):  # nothing live holds the old member set
            if reply:
                reply(None)
            return
        self._admit(conversation_id, op, reply)

    # -- admission ---------------------------------------------------------------------------

    def _admit(self, conversation_id: int, op: ConversationOp, reply: Reply | None) -> None:
        if self.closing:
            if reply:
                reply(_retry("this node is shutting down; retry"))
            return
        caller = _caller(op)
        until = self._refused.get((conversation_id, caller or 0))
        if until is not None:
            if until > self._clock.monotonic():
                self.refused += 1
                if reply:
                    reply(not_found("conversation"))
                return
            del self._refused[(conversation_id, caller or 0)]
        waiting = self._admitting.get(conversation_id)
        if waiting is not None:
            if len(waiting) >= MAX_WAITING:
                if reply:
                    reply(_retry("the conversation is busy; retry shortly"))
                return
            waiting.append((op, reply))
            return
        if len(self._admitting) >= MAX_ADMITTING:
            if reply:
                reply(_retry("this node is busy; retry shortly"))
            return
        self._admitting[conversation_id] = [(op, reply)]
        task = asyncio.get_running_loop().create_task(self._load(conversation_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, conversation_id: int) -> None:
        try:
            state = await self._store.state(conversation_id)
        except (Exception, asyncio.CancelledError) as exc:
            for _, reply in self._admitting.pop(conversation_id, []):
                if reply:
                    reply(_retry("could not load the conversation; retry"))
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.warning("could not load conversation %d", conversation_id, exc_info=True)
            return
        waiting = self._admitting.pop(conversation_id, [])
        if self.closing:
            for _, reply in waiting:
                if reply:
                    reply(_retry("this node is shutting down; retry"))
            return
        admitted = []
        for op, reply in waiting:
            caller = _caller(op)
            if state is not None and caller in state.members:
                admitted.append((op, reply))
                continue
            self.refused += 1
            self._remember_refusal(conversation_id, caller or 0)
            if reply:
                reply(not_found("conversation"))
        if not admitted or state is None:
            return
        actor = self._actors.get(conversation_id)
        if actor is None or not actor.alive:
            if not self._make_room():
                for _, reply in admitted:
                    if reply:
                        reply(_retry("this node has too many active conversations; retry"))
                return
            actor = self._start(conversation_id, state)
        for op, reply in admitted:
            try:
                actor.tell(op, reply)
            except (MailboxFull, ActorStopped) as err:
                if reply:
                    reply(err)

    def _remember_refusal(self, conversation_id: int, user_id: int) -> None:
        self._refused[(conversation_id, user_id)] = self._clock.monotonic() + REFUSAL_TTL
        self._refused.move_to_end((conversation_id, user_id))
        while len(self._refused) > REFUSALS_KEPT:
            self._refused.popitem(last=False)

    def _make_room(self) -> bool:
        """True when one more actor may start: under the cap, or after stopping the least
        recently used idle actor among the oldest 64 (none idle: False, the caller retries)."""
        if len(self._actors) < self.max_actors:
            return True
        victim = None
        for scanned, (cid, actor) in enumerate(self._actors.items()):
            if not actor.alive or (not actor.busy and not actor.queued):
                victim = cid, actor
                break
            if scanned >= 64:
                break
        if victim is None:
            return False
        del self._actors[victim[0]]
        if victim[1].alive:
            self._spawn(victim[1].stop())
        self._count()
        return len(self._actors) < self.max_actors

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, conversation_id: int, state: ConversationState) -> ConversationActor:
        actor = self._factory(conversation_id, state)
        actor.on_exit = self._forget
        actor.on_crash = self._on_crash
        actor.handoff = lambda items: self._hand_back(conversation_id, items)
        self._actors[conversation_id] = actor
        actor.start()
        self._count()
        return actor

    def _hand_back(self, conversation_id: int, items: list[tuple[Any, Reply | None]]) -> None:
        for op, reply in items:
            self.resubmit(conversation_id, op, reply)

    def _forget(self, actor: Actor[Any]) -> None:
        assert isinstance(actor, ConversationActor)
        if self._actors.get(actor.id) is actor:
            del self._actors[actor.id]
        self._count()

    def _count(self) -> None:
        if self._gauge is not None:
            self._gauge.set(len(self._actors))

    async def stop_where(self, predicate: Callable[[int], bool]) -> None:
        """Stop the actors of conversations for which ``predicate(id)`` holds; what they still
        had queued goes to ``resubmit`` (the new owner)."""
        doomed = [a for cid, a in list(self._actors.items()) if predicate(cid)]
        # Together: each finishes its batch in hand (a commit, a fan-out); one after another,
        # a large rebalance could hold up the heartbeat that triggered it past the timeout.
        await asyncio.gather(*(actor.stop() for actor in doomed))

    async def stop_all(self) -> None:
        """Shutdown: admit nothing more, let every actor finish what it holds."""
        self.closing = True
        await self.stop_where(lambda _cid: True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
