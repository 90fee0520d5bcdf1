"""``baseline-ws``: the ceiling for group chat.

A bare aiohttp WebSocket server on uvloop with rooms in a dict: no actors, no storage, no
Redis, no auth (the token *is* the user id). It speaks the slice of API.md the chat bench uses,
with Agora's own frame types (agora/protocol/frames.py), so the very same client code drives it
and Agora:

- ``POST /api/v1/conversations {"member_ids"}`` (bearer = caller) -> 201 ``{"id", ...}``;
- ``GET /ws?token=<user id>`` -> ``{"type": "ready", "session_id", "user_id"}``;
- ``send`` -> ``ack`` to the sender at once, then the ``message`` frame to every session of
  every member (the sender's included, as Agora does); ``ping`` -> ``pong``.

Run as a child process: ``python -m bench.baseline_ws --port P``.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from agora.protocol.chat import MessageOut
from agora.protocol.frames import (
    Ack,
    ErrorFrame,
    MessageFrame,
    Ping,
    Pong,
    Ready,
    Send,
    client_decoder,
)
from bench.chatload import run_chat
from bench.procs import log, serve_app, spawn_module
from bench.wsclient import Member


class _CreateIn(msgspec.Struct):
    member_ids: list[str]
    title: str | None = None


class _Conversation(msgspec.Struct):
    id: str
    kind: str
    title: str | None
    members: list[str]
    last_seq: int
    created_at: datetime


@dataclass
class _Room:
    id: str
    members: list[str]
    seq: int = 0


@dataclass
class _State:
    rooms: dict[str, _Room] = field(default_factory=dict)
    sessions: dict[str, set[web.WebSocketResponse]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def make_app() -> web.Application:
    """The baseline chat app."""
    state = _State()
    encode = msgspec.json.Encoder().encode

    async def create(request: web.Request) -> web.Response:
        caller = request.headers.get("Authorization", "").removeprefix("Bearer ")
        body = msgspec.json.decode(await request.read(), type=_CreateIn)
        room = _Room(str(next(state.ids)), [caller, *body.member_ids])
        state.rooms[room.id] = room
        out = _Conversation(
            room.id,
            "group" if len(room.members) > 2 else "direct",
            body.title,
            room.members,
            0,
            datetime.now(UTC),
        )
        return web.Response(body=encode(out), status=201, content_type="application/json")

    async def send(ws: web.WebSocketResponse, user: str, frame: Send) -> None:
        room = state.rooms.get(frame.conversation_id)
        if room is None or user not in room.members:
            error = ErrorFrame(code="not_found", message="no such conversation")
            await ws.send_frame(encode(error), WSMsgType.TEXT)
            return
        room.seq += 1
        message = MessageOut(
            id=str(next(state.ids)),
            conversation_id=room.id,
            seq=room.seq,
            sender_id=user,
            text=frame.text,
            client_id=frame.client_id,
            created_at=datetime.now(UTC),
        )
        ack = Ack(
            client_id=frame.client_id, message_id=message.id, seq=room.seq, conversation_id=room.id
        )
        await ws.send_frame(encode(ack), WSMsgType.TEXT)
        payload = encode(MessageFrame(message=message))
        for member in room.members:
            for session in list(state.sessions.get(member, ())):
                if not session.closed:
                    await session.send_frame(payload, WSMsgType.TEXT)

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        user = request.query.get("token", "")
        if not user:
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse(max_msg_size=64 * 1024)
        await ws.prepare(request)
        state.sessions.setdefault(user, set()).add(ws)
        try:
            ready = Ready(
                session_id=str(next(state.ids)), user_id=user, node_id="baseline", heartbeat=0.0
            )
            await ws.send_frame(encode(ready), WSMsgType.TEXT)
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = client_decoder.decode(msg.data)  # Agora's own frame types
                if isinstance(frame, Send):
                    await send(ws, user, frame)
                elif isinstance(frame, Ping):
                    await ws.send_frame(encode(Pong()), WSMsgType.TEXT)
        except ConnectionResetError:
            pass
        finally:
            state.sessions[user].discard(ws)
        return ws

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/api/v1/conversations", create)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    return app


async def baseline_ws(
    conversations: int,
    members: int,
    rate: float,
    duration: float,
    warmup: float,
    senders: int | None = None,
) -> dict[str, Any]:
    """Spawn the baseline chat server, run the chat load on it, stop it; return the report."""
    server = spawn_module("bench.baseline_ws")
    try:
        await server.wait_ready("/healthz", timeout=30)
        rooms = [
            [
                Member(str(c * members + k + 1), str(c * members + k + 1), server.url)
                for k in range(members)
            ]
            for c in range(conversations)
        ]
        cpu_before = server.cpu_seconds()
        result = await run_chat(rooms, rate=rate, duration=duration, warmup=warmup, senders=senders)
        server_cpu = server.cpu_seconds() - cpu_before
        return {
            "target": "baseline-ws",
            "nodes": 1,
            **result.figures(),
            "server_rss_mib": [server.rss_mib()],
            "server_cpu_pct": [round(100 * server_cpu / (warmup + duration), 1)],
        }
    finally:
        server.stop()
        log("baseline-ws server stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description="baseline WebSocket server (child of the bench)")
    parser.add_argument("--port", type=int, required=True)
    serve_app(make_app(), parser.parse_args().port)


if __name__ == "__main__":
    main()
