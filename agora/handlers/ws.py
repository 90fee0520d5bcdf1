"""``GET /ws``: the WebSocket endpoint. Here frames are decoded and dispatched.

The access token is checked before the upgrade (401 in the error envelope otherwise). Each
connection gets a :class:`SessionActor` (the writer); this handler is the reader: it enforces the
frame rate, decodes each text frame with the one client decoder, and hands commands to the
router. A bad frame gets an ``error`` frame and the connection stays open; a frame over 64 KiB
closes it with 1009 (aiohttp), a client over its rate with 1008.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from agora.actors.base import Reply
from agora.actors.conversation import ReadOp, SendOp, Sent, TypingOp
from agora.actors.session import SessionActor
from agora.clock import Clock
from agora.errors import AppError, ErrorCode, unauthorized
from agora.protocol.codec import NUL_MESSAGE, TOO_DEEP, humanize, nul_fields
from agora.protocol.frames import (
    Ack,
    CloseCode,
    ErrorFrame,
    MessageFrame,
    Ping,
    Pong,
    Read,
    Ready,
    Send,
    Sync,
    Synced,
    Typing,
    client_decoder,
    encode,
    frame_ref,
)
from agora.server import keys
from agora.server.logs import request_id_var
from agora.server.middleware import name_response
from agora.server.routing import rate_limit
from agora.services.chat import ChatService
from agora.services.ratelimit import Hit, Verdict

log = logging.getLogger(__name__)

SYNC_PAGE = 500
SYNC_WAIT = 30.0  # seconds a sync waits for a client that stopped reading
# `send` frames refused by the messages limit in a row (each answered with an error frame
# carrying retry_after) before the socket is closed with 1008: a client that ignores
# retry_after is abusive. A frame that gets through starts the count again.
SEND_REFUSALS_TOLERATED = 10


class TokenBucket:
    """``rate`` frames per second sustained, bursts up to ``burst``; rate 0 = unlimited."""

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.stamp = clock.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _error(
    code: ErrorCode | str,
    message: str,
    ref: str | None = None,
    retry: bool = False,
    retry_after: float | None = None,
) -> bytes:
    return encode(
        ErrorFrame(code=str(code), message=message, ref=ref, retry=retry, retry_after=retry_after)
    )


class Connection:
    """The reader side of one session: decoding, rate limit, dispatch."""

    def __init__(self, app: web.Application, session: SessionActor) -> None:
        self.app = app
        self.session = session
        config = app[keys.CONFIG].ws
        self.bucket = TokenBucket(config.rate_limit, config.rate_burst, app[keys.CLOCK])
        self.outbound_limit = config.outbound_queue
        self.router = app[keys.ROUTER]
        self.chat: ChatService = app[keys.CHAT]
        self.metrics = app[keys.METRICS]
        self._sync: asyncio.Task[None] | None = None
        self.limiter = app[keys.LIMITER]
        self._sends = [Hit(app[keys.CONFIG].limits["messages"], str(session.user_id))]
        self._refused = 0  # `send` frames refused in a row by the messages limit
        # `send` frames waiting for their verdict, in the order they came (bounded by the
        # frame rate times a round trip to Redis)
        self._verdicts: deque[tuple[asyncio.Future[Verdict], int, SendOp]] = deque()
        self._watched: asyncio.Future[Verdict] | None = None
        self._ws: web.WebSocketResponse | None = None
        self._closing: asyncio.Future[bool] | None = None

    async def run(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if not self.bucket.take():
                    self.metrics.ws_closed.labels("rate_limited").inc()
                    await ws.close(code=CloseCode.POLICY_VIOLATION, message=b"rate_limited")
                    break
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                self.handle(data)
            elif msg.type is WSMsgType.BINARY:
                self.session.push(
                    _error(ErrorCode.VALIDATION_ERROR, "send JSON in text frames, not binary")
                )
            elif msg.type is WSMsgType.ERROR:
                self.metrics.ws_closed.labels("protocol_error").inc()
                break
        if self._sync is not None:
            self._sync.cancel()

    def handle(self, raw: bytes) -> None:
        try:
            frame = client_decoder.decode(raw)
            bad = nul_fields(raw)
        except RecursionError:
            self.metrics.ws_frames_in.labels("invalid").inc()
            self.session.push(_error(ErrorCode.VALIDATION_ERROR, f"the frame is {TOO_DEEP}"))
            return
        except msgspec.ValidationError as exc:
            self.metrics.ws_frames_in.labels("invalid").inc()
            self.session.push(
                _error(ErrorCode.VALIDATION_ERROR, humanize(str(exc)) + _where(exc), frame_ref(raw))
            )
            return
        except msgspec.DecodeError:
            self.metrics.ws_frames_in.labels("invalid").inc()
            self.session.push(_error(ErrorCode.VALIDATION_ERROR, "the frame is not valid JSON"))
            return
        if bad:
            self.metrics.ws_frames_in.labels("invalid").inc()
            self.session.push(
                _error(ErrorCode.VALIDATION_ERROR, f"{bad[0]} {NUL_MESSAGE}", frame_ref(raw))
            )
            return
        user = self.session.user_id
        match frame:
            case Send(conversation_id=cid, client_id=client_id, text=text):
                self.metrics.ws_frames_in.labels("send").inc()
                # The messages limit (shared with REST sends) first. A verdict may come at
                # once (the node's lease) or after a round trip to Redis: sends wait for those
                # before them, so they reach the conversation in the order they came.
                self._verdicts.append(
                    (self.limiter.submit(self._sends), int(cid), SendOp(user, client_id, text))
                )
                self._next_sends()
            case Typing(conversation_id=cid):
                self.metrics.ws_frames_in.labels("typing").inc()
                self.router.submit(int(cid), TypingOp(user), self._on_done(cid))
            case Read(conversation_id=cid, seq=seq):
                self.metrics.ws_frames_in.labels("read").inc()
                self.router.submit(int(cid), ReadOp(user, seq), self._on_done(cid))
            case Sync(conversation_id=cid, after_seq=after):
                self.metrics.ws_frames_in.labels("sync").inc()
                if self._sync is not None and not self._sync.done():
                    self.session.push(
                        _error(
                            ErrorCode.RATE_LIMITED,
                            "a sync is already running; wait for `synced`",
                            cid,
                        )
                    )
                    return
                self._sync = asyncio.create_task(self._run_sync(int(cid), after))
            case Ping():
                self.metrics.ws_frames_in.labels("ping").inc()
                self.session.push(encode(Pong()))

    def _next_sends(self, _: object = None) -> None:
        waiting = self._verdicts
        while waiting and waiting[0][0].done():
            verdict, conversation_id, op = waiting.popleft()
            self._send(verdict.result(), conversation_id, op)
        if waiting and waiting[0][0] is not self._watched:  # one callback per head
            self._watched = waiting[0][0]
            self._watched.add_done_callback(self._next_sends)

    def _send(self, verdict: Verdict, conversation_id: int, op: SendOp) -> None:
        if verdict.allowed:
            self._refused = 0
            self.router.submit(conversation_id, op, self._on_sent(op.client_id))
            return
        self._refused += 1
        if self._refused > SEND_REFUSALS_TOLERATED and self._ws is not None:
            if self._closing is None:
                self.metrics.ws_closed.labels("rate_limited").inc()
                self._closing = asyncio.ensure_future(
                    self._ws.close(code=CloseCode.POLICY_VIOLATION, message=b"rate_limited")
                )
            return
        self.session.push(
            _error(
                ErrorCode.RATE_LIMITED,
                verdict.error().message,
                op.client_id,
                retry=True,
                retry_after=max(1.0, round(verdict.retry_after, 1)),
            )
        )

    def _on_sent(self, client_id: str) -> Reply:
        session = self.session

        def reply(result: Any) -> None:
            if isinstance(result, Sent):
                m = result.message
                session.push(
                    encode(
                        Ack(
                            client_id=client_id,
                            message_id=m.id,
                            seq=m.seq,
                            conversation_id=m.conversation_id,
                        )
                    )
                )
            else:
                session.push(_failure(result, client_id))

        return reply

    def _on_done(self, ref: str) -> Reply:
        session = self.session

        def reply(result: Any) -> None:
            if isinstance(result, BaseException):
                session.push(_failure(result, ref))

        return reply

    async def _run_sync(self, conversation_id: int, after_seq: int) -> None:
        try:
            page = max(1, min(SYNC_PAGE, self.outbound_limit // 2))
            last = await self.chat.sync(
                self.session.user_id, conversation_id, after_seq, page, self._push_messages
            )
            self.session.push(encode(Synced(conversation_id=str(conversation_id), last_seq=last)))
        except AppError as err:
            self.session.push(_failure(err, str(conversation_id)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sync failed")
            self.session.push(
                _error(
                    ErrorCode.INTERNAL_ERROR, "sync failed; retry", str(conversation_id), retry=True
                )
            )

    async def _push_messages(self, messages: list[Any]) -> bool:
        """A page of a sync: waits for room in the outbound queue instead of overflowing it."""
        if not await self.session.room_for(len(messages), SYNC_WAIT):
            return False
        return all(self.session.push(encode(MessageFrame(message=m))) for m in messages)


def _where(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    marker = " - at `$."
    return f" (field `{text.split(marker, 1)[1].rstrip('`')}`)" if marker in text else ""


def _failure(result: Any, ref: str | None) -> bytes:
    if isinstance(result, AppError):
        retry = result.code in (ErrorCode.UNAVAILABLE, ErrorCode.RATE_LIMITED)
        return _error(result.code, result.message, ref, retry=retry)
    return _error(ErrorCode.INTERNAL_ERROR, "internal error", ref, retry=True)


async def websocket(request: web.Request) -> web.StreamResponse:
    """Upgrade to a WebSocket session for the user of ``?token=`` (or a Bearer header)."""
    app = request.app
    token = request.query.get("token")
    if not token:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
    if not token:
        raise unauthorized("pass the access token as ?token=")
    viewer = app[keys.ACCOUNTS].authenticate(token)  # 401 before the upgrade
    await rate_limit(request, viewer)  # an upgrade is an API request of the account
    app[keys.ACTIVITY].seen(viewer.user_id)  # analytics: no I/O (services/activity.py)

    config = app[keys.CONFIG].ws
    sessions, presence, metrics = app[keys.SESSIONS], app[keys.PRESENCE], app[keys.METRICS]
    if not sessions.admit(viewer.user_id, config.max_sessions_per_user):
        # Each session holds memory; one token must not be able to take the node's.
        raise AppError(
            ErrorCode.RATE_LIMITED,
            f"this account already has {config.max_sessions_per_user} sessions open on this "
            "node; close one first",
            headers={"Retry-After": "5"},
        )
    try:
        ws = web.WebSocketResponse(
            compress=False,
            max_msg_size=config.max_frame_bytes,
            heartbeat=config.heartbeat,
            decode_text=False,
        )
        name_response(request, ws)
        await ws.prepare(request)
        session = SessionActor(
            ws,
            request.transport,
            viewer.user_id,
            viewer.session_id,
            sessions.next_number(),
            config.outbound_queue,
            on_sent=metrics.ws_frames_out.inc,
        )
        session.start()
        sessions.add(session)
    finally:
        sessions.admitted(viewer.user_id)
    metrics.ws_sessions.inc()
    request_id_var.set(f"ws-{session.name}")
    counted = False  # in presence: what disconnected() must undo, and only that
    try:
        if app[keys.ACCOUNTS].revocations.is_revoked(viewer.session_id):
            return ws  # revoked between the check and the upgrade
        counted = True
        try:  # registered before `ready`: whatever is committed after `ready` reaches us
            await presence.connected(viewer.user_id)
        except Exception:
            log.warning("presence update failed for user %d", viewer.user_id, exc_info=True)
        online_friends: list[bytes] = []
        try:  # read before `ready`, so that a friend who arrives after it is told once
            online_friends = await app[keys.REALTIME].friends_online(viewer.user_id)
        except Exception:
            log.warning("presence snapshot failed for user %d", viewer.user_id, exc_info=True)
        session.push(
            encode(
                Ready(
                    session_id=session.name,
                    user_id=str(viewer.user_id),
                    node_id=app[keys.CONFIG].node_id,
                    heartbeat=config.heartbeat,
                )
            )
        )
        for frame in online_friends:  # who was online when we were registered; changes follow
            session.push(frame)
        await Connection(app, session).run(ws)
    finally:
        sessions.remove(session)
        metrics.ws_sessions.dec()
        if session.close_reason:
            metrics.ws_closed.labels(session.close_reason).inc()
        # Shielded: the handler may be cancelled when the peer vanishes, the cleanup may not.
        await sessions.shielded(_finish(session, ws, presence if counted else None, viewer.user_id))
    return ws


async def _finish(
    session: SessionActor, ws: web.WebSocketResponse, presence: Any, user_id: int
) -> None:
    await session.stop()
    if not ws.closed:
        await ws.close()
    if presence is None:
        return
    try:
        await presence.disconnected(user_id)
    except Exception:
        log.warning("presence update failed for user %d", user_id, exc_info=True)


async def close_all(app: web.Application) -> None:
    """``on_shutdown``: tell every client to reconnect elsewhere (1001 going away)."""
    sessions = app.get(keys.SESSIONS)
    if sessions is None:
        return
    app[keys.PRESENCE].leave()
    for session in sessions.all():
        session.close_soon(CloseCode.GOING_AWAY, "node_shutdown")
    # Every session ends within CLOSE_GRACE (its close frame out, or the connection dropped);
    # wait for their handlers and cleanups here, so none is still running when aiohttp's own
    # shutdown gives up on handlers after a second.
    started = asyncio.get_running_loop().time()
    for _ in range(100):  # 5 s at most
        if not len(sessions):
            break
        await asyncio.sleep(0.05)
    await sessions.wait_cleanups(max(0.0, started + 5.0 - asyncio.get_running_loop().time()))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ws", websocket)
    app.on_shutdown.append(close_all)
