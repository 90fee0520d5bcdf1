"""``baseline-ws``: the ceiling for group chat.

A bare aiohttp WebSocket server on uvloop with rooms in a dict: no actors, no storage, no
Redis, no auth (the token *is* the user id). It speaks the slice of API.md the chat bench uses,
with the same frame shapes, so the very same client code drives it and Agora:

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

from bench.chatload import run_chat
from bench.procs import log, serve_app, spawn_module
from bench.wsclient import Member


class _In(msgspec.Struct):
    type: str
    conversation_id: str | None = None
    client_id: str | None = None
    text: str | None = None


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


class _Message(msgspec.Struct):
    id: str
    conversation_id: str
    seq: int
    sender_id: str
    text: str
    client_id: str
    created_at: datetime


class _MessageFrame(msgspec.Struct, tag="message", tag_field="type"):
    message: _Message


class _Ack(msgspec.Struct, tag="ack", tag_field="type"):
    client_id: str
    message_id: str
    seq: int


class _Ready(msgspec.Struct, tag="ready", tag_field="type"):
    session_id: str
    user_id: str


class _Error(msgspec.Struct, tag="error", tag_field="type"):
    code: str
    message: str


class _Pong(msgspec.Struct, tag="pong", tag_field="type"):
    pass


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
    decode = msgspec.json.Decoder(_In).decode

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

    async def send(ws: web.WebSocketResponse, user: str, frame: _In) -> None:
        room = state.rooms.get(frame.conversation_id or "")
        if room is None or user not in room.members or not frame.client_id:
            await ws.send_frame(encode(_Error("not_found", "no such conversation")), WSMsgType.TEXT)
            return
        room.seq += 1
        message = _Message(
            str(next(state.ids)),
            room.id,
            room.seq,
            user,
            frame.text or "",
            frame.client_id,
            datetime.now(UTC),
        )
        await ws.send_frame(encode(_Ack(frame.client_id, message.id, room.seq)), WSMsgType.TEXT)
        payload = encode(_MessageFrame(message))
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
            await ws.send_frame(encode(_Ready(str(next(state.ids)), user)), WSMsgType.TEXT)
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                frame = decode(msg.data)
                if frame.type == "send":
                    await send(ws, user, frame)
                elif frame.type == "ping":
                    await ws.send_frame(encode(_Pong()), WSMsgType.TEXT)
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
    conversations: int, members: int, rate: float, duration: float, warmup: float
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
        result = await run_chat(rooms, rate=rate, duration=duration, warmup=warmup)
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
