"""The router: the one path by which anything reaches a user's sessions or a conversation's
owner, on whichever node they are.

- ``deliver(users, frames, conversation_id)``: push locally, look up (one Redis round trip) which
  live nodes hold sessions of these users, and post one ``Deliver`` per other node to its inbox.
  When the lookup fails, the ``Deliver`` goes to every live node instead (each pushes to the
  sessions of these users it holds). What cannot be queued for a node is owed to it as a
  ``Resync`` (see :mod:`agora.cluster.inbox`), so a lost delivery becomes a ``resync`` frame
  telling the affected sessions to ``sync`` those conversations, never a silent gap.
- ``submit(conversation_id, op, reply)``: run a command on the conversation's owner: the local
  actor when this node owns it (rendezvous over live nodes), else a ``Command`` in the owner's
  inbox whose ``Answer`` comes back through ours. An owner that does not answer in time (it
  died) answers "unavailable, retry": the client resends with the same ``client_id``, which the
  next owner finds instead of storing twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from agora.actors.base import Reply, future_reply
from agora.actors.conversation import (
    ConversationDirectory,
    ConversationOp,
    Sent,
    op_decoder,
    op_encoder,
    sent_decoder,
)
from agora.actors.session import SessionRegistry
from agora.clock import Clock, Timer
from agora.cluster.inbox import (
    Answer,
    Command,
    Deliver,
    Envelope,
    Evict,
    Inbox,
    Membership,
    Resync,
    group_by_node,
)
from agora.cluster.nodes import NodeRegistry, rendezvous
from agora.cluster.presence import Presence
from agora.errors import AppError, ErrorCode
from agora.protocol.frames import ResyncFrame, encode

log = logging.getLogger(__name__)

_encoder = msgspec.msgpack.Encoder()


def conversation_key(conversation_id: int) -> str:
    return f"conversation:{conversation_id}"


def _answer_result(answer: Answer) -> Any:
    """What an ``Answer`` tells the asker; never raises (a node of another version may send a
    code or body this one does not know: the asker still hears back)."""
    try:
        if answer.ok:
            return sent_decoder.decode(answer.body) if answer.body else None
        return AppError(ErrorCode(answer.code), answer.message)
    except (ValueError, msgspec.DecodeError):
        log.warning("unreadable answer %d (%r)", answer.rid, answer.code)
        return AppError(ErrorCode.INTERNAL_ERROR, "the conversation's node answered oddly")


class RemoteReply:
    """The reply to a command another node sent: an ``Answer`` into the asker's inbox."""

    __slots__ = ("command", "inbox")

    def __init__(self, inbox: Inbox, command: Command) -> None:
        self.inbox = inbox
        self.command = command

    def __call__(self, result: Any) -> None:
        rid, to = self.command.rid, self.command.reply_to
        if isinstance(result, AppError):
            answer = Answer(rid, False, code=result.code.value, message=result.message)
        elif isinstance(result, BaseException):
            answer = Answer(rid, False, code="internal_error", message="internal error")
        else:
            body = _encoder.encode(result) if isinstance(result, Sent) else b""
            answer = Answer(rid, True, body=body)
        self.inbox.post(to, answer)


class Router:
    def __init__(
        self,
        registry: NodeRegistry,
        presence: Presence,
        sessions: SessionRegistry,
        conversations: ConversationDirectory,
        answer_timeout: float = 5.0,
        on_evict: Callable[[str, list[int]], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.registry = registry
        self.clock = clock or Clock()
        self.leaving = False  # shutting down: commands go to the other nodes' owners
        self.presence = presence
        self.sessions = sessions
        self.conversations = conversations
        self.answer_timeout = answer_timeout
        self.on_evict = on_evict
        self.inbox: Inbox | None = None  # set by the app once the inbox exists
        self._rids = itertools.count(1)
        self._waiting: dict[int, tuple[Reply, Timer]] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def node_id(self) -> str:
        """This node's current life in the cluster (it changes if the node is reborn)."""
        return self.registry.node_id

    def broadcast_eviction(self, kind: str, ids: list[int]) -> None:
        """Every other node drops its cache entries for these ids."""
        if self.inbox is None:
            return
        for node in self.registry.live - {self.node_id}:
            self.inbox.post(node, Evict(kind, ids))

    def announce(self, joined: bool) -> None:
        """Tell the other live nodes to look at the registry now: ownership moves at once when a
        node joins or leaves, instead of at their next heartbeat."""
        if self.inbox is None:
            return
        for node in self.registry.live - {self.node_id}:
            self.inbox.post(node, Membership(self.node_id, joined))

    # -- to users ------------------------------------------------------------------------------

    async def deliver(
        self, users: Iterable[int], frames: list[bytes], conversation_id: int | None = None
    ) -> None:
        """Local sessions first (no I/O), then one ``Deliver`` per other node holding sessions.
        ``conversation_id`` names the conversation of message frames: if they cannot reach a
        node, its sessions of these users are told to resync it."""
        users = list(users)
        self.sessions.deliver(users, frames)
        if self.inbox is None:
            return
        try:
            by_node = group_by_node(await self.presence.nodes_of(users))
        except Exception:
            # Redis did not answer the lookup: every live node gets the frames (the inbox
            # queues them until Redis is back) and pushes them to whichever of these users'
            # sessions it holds.
            log.warning("could not look up where %d user(s) are; sending to every node", len(users))
            by_node = {node: users for node in self.registry.live}
        for node, node_users in by_node.items():
            if node != self.node_id:
                self.inbox.post(node, Deliver(node_users, frames, conversation_id))

    def resync_local(self, users: list[int] | None, conversation_ids: list[int]) -> None:
        """Tell local sessions (of ``users``, or all) that frames of these conversations (or of
        any, when empty) may not have reached them: they ``sync`` from their last seq."""
        frame = encode(ResyncFrame(conversation_ids=[str(c) for c in conversation_ids] or None))
        if users is None:
            for session in self.sessions.all():
                session.push(frame)
        else:
            self.sessions.deliver(users, [frame])

    # -- to conversation owners -------------------------------------------------------------

    def owner_of(self, conversation_id: int) -> str:
        if self.leaving:  # shutting down: the node that will own it once we are gone
            others = self.registry.live - {self.node_id}
            if others:
                return rendezvous(others, conversation_key(conversation_id))
        return self.registry.owner(conversation_key(conversation_id))

    def submit(
        self, conversation_id: int, op: ConversationOp, reply: Reply | None, hops: int = 0
    ) -> None:
        owner = self.owner_of(conversation_id)
        if isinstance(reply, RemoteReply):
            hops = max(hops, reply.command.hops)
        if owner == self.node_id or self.inbox is None or hops > 1:
            self.conversations.submit(conversation_id, op, reply)
            return
        if isinstance(reply, RemoteReply):
            # Another node's command: pass it on as it is, so the answer goes straight back to
            # the asker (not through this node, which may be shutting down).
            command = reply.command
            passed = Command(
                command.rid, command.reply_to, conversation_id, op_encoder.encode(op), hops + 1
            )
            if not self.inbox.post(owner, passed):
                reply(AppError(ErrorCode.UNAVAILABLE, "the conversation's node is busy; retry"))
            return
        rid = next(self._rids)
        timer = self.clock.call_later(self.answer_timeout, self._expire, rid)
        self._waiting[rid] = (reply or (lambda _result: None), timer)
        command = Command(rid, self.node_id, conversation_id, op_encoder.encode(op), hops + 1)
        if not self.inbox.post(owner, command):
            self._expire(rid)

    async def ask(self, conversation_id: int, op: ConversationOp) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.submit(conversation_id, op, future_reply(future))
        return await future

    def _expire(self, rid: int) -> None:
        waiting = self._waiting.pop(rid, None)
        if waiting is not None:
            waiting[1].cancel()
            waiting[0](
                AppError(
                    ErrorCode.UNAVAILABLE,
                    "the conversation's node did not answer; retry with the same client_id",
                )
            )

    # -- from our inbox ------------------------------------------------------------------------

    def handle(self, envelope: Envelope) -> None:
        if isinstance(envelope, Deliver):
            self.sessions.deliver(envelope.users, envelope.frames)
        elif isinstance(envelope, Resync):
            self.resync_local(envelope.users or None, envelope.conversation_ids)
        elif isinstance(envelope, Command):
            self._run_remote(envelope)
        elif isinstance(envelope, Evict):
            if self.on_evict is not None:
                self.on_evict(envelope.kind, envelope.ids)
        elif isinstance(envelope, Membership):
            task = asyncio.get_running_loop().create_task(self.registry.refresh())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif isinstance(envelope, Answer):
            waiting = self._waiting.pop(envelope.rid, None)
            if waiting is None:
                return  # answered after we gave up: the client already got "retry"
            reply, timer = waiting
            timer.cancel()
            reply(_answer_result(envelope))

    def _run_remote(self, command: Command) -> None:
        assert self.inbox is not None
        answer = RemoteReply(self.inbox, command)
        try:
            op = op_decoder.decode(command.op)
        except msgspec.DecodeError:
            answer(AppError(ErrorCode.INTERNAL_ERROR, "undecodable command"))
            return
        # Ownership may have moved since the sender looked: pass it on (at most once more).
        self.submit(command.conversation_id, op, answer, hops=command.hops)

    def fail_pending(self) -> None:
        for rid in list(self._waiting):
            self._expire(rid)
