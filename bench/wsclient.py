"""WebSocket clients of the ``/ws`` contract (API.md): connect, wait for ``ready``, decode frames.

aiohttp's client is used here: its frame reader is compiled, and per-frame work is dominated by
the JSON decode, done with msgspec into a struct that keeps only the fields the bench reads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import msgspec

from bench.procs import BenchError, log

READY_TIMEOUT = 15.0
MAX_FRAME = 1 << 20


class MessageRef(msgspec.Struct):
    """The part of a ``message`` frame's message the bench needs."""

    client_id: str | None = None


class Frame(msgspec.Struct):
    """Any server frame; unknown fields and frame types are ignored. ``message`` is an object in
    ``message`` frames and a sentence in ``error`` frames."""

    type: str
    client_id: str | None = None
    message: MessageRef | str | None = None
    code: str | None = None


decode_frame = msgspec.json.Decoder(Frame).decode


class SendFrame(msgspec.Struct, tag="send", tag_field="type"):
    conversation_id: str
    client_id: str
    text: str


encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Member:
    """A user's one session: its id, access token and the node it connects to."""

    user_id: str
    token: str
    url: str  # http://host:port of the node


def ws_url(member: Member) -> str:
    return member.url.replace("http://", "ws://", 1) + "/ws?token=" + quote(member.token)


async def connect(
    session: aiohttp.ClientSession, member: Member
) -> aiohttp.ClientWebSocketResponse:
    """Open ``/ws`` and wait for ``{"type": "ready"}`` (frames before it are dropped)."""
    try:
        ws = await session.ws_connect(
            ws_url(member), autoping=True, heartbeat=None, max_msg_size=MAX_FRAME
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise BenchError(
            f"/ws refused user {member.user_id} at {member.url}: HTTP {exc.status}"
        ) from exc
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise BenchError(
                        f"/ws closed before ready for user {member.user_id}: "
                        f"{msg.type.name} {msg.data!r} {msg.extra!r}"
                    )
                if decode_frame(msg.data).type == "ready":
                    return ws
    except BaseException:
        await ws.close()
        raise


async def connect_all(
    session: aiohttp.ClientSession, members: list[Member], *, batch: int = 200, strict: bool = True
) -> list[aiohttp.ClientWebSocketResponse]:
    """Open one ready WebSocket per member, ``batch`` handshakes at a time (no SYN storm).

    ``strict``: the first failure closes what was opened and raises; otherwise failures are
    counted on stderr and the sockets that did open are returned."""
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    failed = 0
    try:
        for start in range(0, len(members), batch):
            chunk = members[start : start + batch]
            results = await asyncio.gather(
                *(connect(session, m) for m in chunk), return_exceptions=True
            )
            errors: list[BaseException] = []
            for result in results:
                if isinstance(result, BaseException):
                    errors.append(result)
                else:
                    sockets.append(result)
            if errors and strict:
                raise BenchError(
                    f"{len(errors)} of {len(chunk)} WebSockets failed to open; first: {errors[0]!r}"
                )
            if errors and not failed:
                log(f"WebSocket failed to open: {errors[0]!r}")
            failed += len(errors)
            if len(members) > batch:
                log(f"{len(sockets)}/{len(members)} WebSockets ready ({failed} failed)")
    except BaseException:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        raise
    return sockets


def client_session() -> aiohttp.ClientSession:
    """A client session without a connection limit, for many WebSockets at once."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, connect=30),
    )
