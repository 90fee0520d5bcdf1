"""Session actors: one per WebSocket. The mailbox is the bounded queue of frames to write.

The aiohttp handler is the socket's one reader (agora/handlers/ws.py); this actor's task is its
one writer. Everyone else only ``push``es encoded frames. A client that does not read fast
enough fills the mailbox and is disconnected with :attr:`CloseCode.SLOW_CONSUMER` (reconnect and
``sync``): the node's memory never grows with a slow reader, and nobody waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from aiohttp import ClientConnectionResetError, WSMsgType, web

from agora.actors.base import Actor, ActorStopped, MailboxFull, Reply
from agora.protocol.frames import CloseCode

log = logging.getLogger(__name__)

CLOSE_GRACE = 1.0  # seconds a close frame may take before the connection is dropped
WRITE_CHUNK = 64 * 1024  # bytes per transport write; flow control is checked after each

# Server-to-client text frames (RFC 6455 5.2): FIN + opcode 1, never masked; these sockets are
# opened with compress=False, so RSV1 stays clear. The length takes 7, 7+16 or 7+64 bits.
_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]
_TEXT_HEADER_16 = struct.Struct("!BBH").pack
_TEXT_HEADER_64 = struct.Struct("!BBQ").pack


def text_frame_header(length: int) -> bytes:
    """The header of an unmasked, uncompressed, final text frame of ``length`` payload bytes."""
    if length < 126:
        return _TEXT_HEADERS[length]
    if length < 65536:
        return _TEXT_HEADER_16(0x81, 126, length)
    return _TEXT_HEADER_64(0x81, 127, length)


class SessionActor(Actor[bytes]):
    kind = "session"

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        user_id: int,
        login_id: int,
        number: int,
        outbound_limit: int,
        on_sent: Callable[[int], object] | None = None,
    ) -> None:
        super().__init__(f"session-{number}", outbound_limit)
        self.on_sent = on_sent  # told how many frames each write burst sent (metrics)
        self.ws = ws
        self.transport = transport
        self.user_id = user_id
        self.login_id = login_id  # the login session (`sid` of the access token)
        self.closing = False
        self.close_reason = ""
        self._closer: asyncio.Task[None] | None = None

    def push(self, frame: bytes) -> bool:
        """Queue a frame for the client; never waits. False when the session is going away."""
        if self.closing:
            return False
        try:
            self.tell(frame)
            return True
        except MailboxFull:
            self.close_soon(CloseCode.SLOW_CONSUMER, "slow_consumer")
        except ActorStopped:
            pass
        return False

    async def room_for(self, frames: int, timeout: float) -> bool:
        """Wait until ``frames`` more fit in the mailbox (producers that can wait, like sync, use
        this instead of tripping the slow-consumer limit); False if the session is closing or
        the client read nothing for ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._mailbox.maxsize - self._mailbox.qsize() < frames:
            if self.closing or loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return not self.closing

    async def receive_many(self, items: list[tuple[bytes, Reply | None]]) -> None:
        """Write everything that was queued in as few transport writes as possible: one per
        :data:`WRITE_CHUNK` bytes instead of one (a ``send()`` system call) per frame. Flow
        control as aiohttp's own writer does it: after a write, if the transport is above its
        high-water mark, wait until it drains; meanwhile the mailbox fills and a client that does
        not read is closed as a slow consumer (:meth:`push`)."""
        writer = self.ws._writer
        if writer is None or writer.compress or writer.use_mask:
            await self._send_one_by_one(items)  # not the sockets handlers/ws.py opens
            return
        transport, protocol = writer.transport, writer.protocol
        sent, at, count = 0, 0, len(items)
        try:
            while at < count:
                if self.ws.closed:
                    return
                if writer._closing or transport.is_closing():
                    # As aiohttp's send_frame: the socket broke under the writer (on_failure).
                    raise ClientConnectionResetError("Cannot write to closing transport")
                parts: list[bytes] = []
                size, first = 0, at
                while at < count and size < WRITE_CHUNK:
                    frame = items[at][0]
                    parts.append(text_frame_header(len(frame)))
                    parts.append(frame)
                    size += len(frame)
                    at += 1
                transport.write(b"".join(parts))
                sent += at - first
                if protocol.writing_paused:
                    await protocol._drain_helper()
        finally:
            if sent and self.on_sent is not None:
                self.on_sent(sent)

    async def _send_one_by_one(self, items: list[tuple[bytes, Reply | None]]) -> None:
        sent = 0
        try:
            for frame, _ in items:
                if self.ws.closed:
                    return
                await self.ws.send_frame(frame, WSMsgType.TEXT)
                sent += 1
        finally:
            if sent and self.on_sent is not None:
                self.on_sent(sent)

    async def on_failure(self, exc: BaseException) -> bool:
        # The socket broke under the writer: the reader sees it too and cleans up.
        return False

    def close_soon(self, code: int, reason: str) -> None:
        """Close from any context (no await): the reader loop ends and cleans up."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        # Kept referenced until done: the event loop holds tasks only weakly.
        self._closer = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()), CLOSE_GRACE)
        except (TimeoutError, Exception):
            pass
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport):
            return
        # A client that stopped reading never takes the close frame: its bytes sit in our
        # buffer and the connection would stay open for ever. Drop it; the reader loop ends.
        while transport.get_write_buffer_size() > 0 and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if transport.get_write_buffer_size() > 0:
            transport.abort()


class SessionRegistry:
    """The sessions open on this node, by user and by login (for revocation)."""

    def __init__(self) -> None:
        self.by_user: dict[int, set[SessionActor]] = {}
        self.by_login: dict[int, set[SessionActor]] = {}
        self._number = 0
        self._cleanups: set[asyncio.Task[None]] = set()
        self._opening: dict[int, int] = {}  # user -> upgrades admitted, not yet added

    async def shielded(self, cleanup: Coroutine[Any, Any, None]) -> None:
        """Run a session's cleanup to the end even if the awaiting handler is cancelled."""
        task = asyncio.ensure_future(cleanup)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    async def wait_cleanups(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` seconds; they go on after it) for session cleanups."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=timeout)

    def __len__(self) -> int:
        return sum(len(s) for s in self.by_user.values())

    def admit(self, user_id: int, limit: int) -> bool:
        """Hold a place for one more session of this user, if it has fewer than ``limit`` open
        or opening (upgrades in flight count, so a burst of them cannot slip past the limit).
        Every True must be followed by :meth:`admitted` once the session is added or failed."""
        if len(self.by_user.get(user_id, ())) + self._opening.get(user_id, 0) >= limit:
            return False
        self._opening[user_id] = self._opening.get(user_id, 0) + 1
        return True

    def admitted(self, user_id: int) -> None:
        left = self._opening.pop(user_id, 1) - 1
        if left:
            self._opening[user_id] = left

    def count_of(self, user_id: int) -> int:
        return len(self.by_user.get(user_id, ()))

    def next_number(self) -> int:
        self._number += 1
        return self._number

    def add(self, session: SessionActor) -> None:
        self.by_user.setdefault(session.user_id, set()).add(session)
        self.by_login.setdefault(session.login_id, set()).add(session)

    def remove(self, session: SessionActor) -> None:
        for index, key in ((self.by_user, session.user_id), (self.by_login, session.login_id)):
            group = index.get(key)
            if group is not None:
                group.discard(session)
                if not group:
                    del index[key]

    def deliver(self, users: Iterable[int], frames: list[bytes]) -> int:
        """Push frames to every local session of these users; the number of sessions reached."""
        reached = 0
        for uid in users:
            for session in tuple(self.by_user.get(uid, ())):
                for frame in frames:
                    if not session.push(frame):
                        break
                else:
                    reached += 1
        return reached

    def close_login(self, login_id: int, code: int, reason: str) -> None:
        for session in tuple(self.by_login.get(login_id, ())):
            session.close_soon(code, reason)

    def all(self) -> list[SessionActor]:
        return [s for group in self.by_user.values() for s in group]
