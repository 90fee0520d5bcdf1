"""Open-loop group-chat load over WebSockets, the same for Agora (``chat``) and ``baseline-ws``.

Every member of every room holds one WebSocket. ``send`` frames go out on a fixed schedule,
``rate`` per second in all, each from a random member of a random room (with ``senders``, from
one of the room's first ``senders`` members; the others only listen, as in a large room): send
``i`` is due at ``start + i / rate`` whatever happened to earlier ones, and its latencies are
measured from that scheduled time, so a stalled server cannot slow the load down and hide its
own stall (coordinated omission). Measured per send:

- ack latency: scheduled time -> the sender's ``ack`` with that ``client_id``;
- delivery latency: scheduled time -> each *other* member's ``message`` frame whose
  ``message.client_id`` matches (the sender's own session may get one too; it is not required
  by the contract, so it is counted as an echo, not as a delivery).

Sends due during the warm-up are checked for acks and deliveries but not measured. After the
last send, the bench waits up to ``grace`` seconds for what is still owed.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import aiohttp
import msgspec

from bench.procs import BenchError, log, own_cpu_seconds
from bench.rawws import RawWebSocket, connect_all
from bench.stats import Recorder, per_second
from bench.wsclient import (
    Frame,
    Member,
    MessageRef,
    SendFrame,
    client_session,
    decode_frame,
    encode,
)

TEXT = "hello from the bench, a message of ordinary length"


@dataclass
class _Sent:
    """One scheduled send."""

    due: float
    sender: int  # index of the sending socket
    measured: bool
    acked: bool = False
    deliveries: int = 0


@dataclass
class ChatResult:
    """What one chat run measured."""

    rooms: int
    members: int
    senders: int  # sends come from the first `senders` members of each room
    rate: float
    duration_s: float
    warmup_s: float
    sends: int = 0  # measured sends (due inside the window)
    deliveries_in_window: int = 0
    ack: Recorder = field(default_factory=Recorder)
    delivery: Recorder = field(default_factory=Recorder)
    send_lag: Recorder = field(default_factory=Recorder)
    error_frames: int = 0
    closes: int = 0
    missing_acks: int = 0
    missing_deliveries: int = 0
    duplicates: int = 0
    echoes: int = 0
    client_cpu_s: float = 0.0

    @property
    def errors(self) -> int:
        """Error frames, unexpected closes, and acks or deliveries still missing after grace."""
        return self.error_frames + self.closes + self.missing_acks + self.missing_deliveries

    def figures(self) -> dict[str, Any]:
        """The JSON-ready figures (latencies in ms)."""
        return {
            "conversations": self.rooms,
            "members": self.members,
            "senders": self.senders,
            "connections": self.rooms * self.members,
            "rate": self.rate,
            "sends": self.sends,
            "sends_per_s": per_second(self.sends, self.duration_s),
            "deliveries_per_s": per_second(self.deliveries_in_window, self.duration_s),
            "ack_ms": self.ack.summary_ms(),
            "delivery_ms": self.delivery.summary_ms(),
            "send_lag_ms": self.send_lag.summary_ms(),
            "errors": self.errors,
            "error_frames": self.error_frames,
            "closes": self.closes,
            "missing_acks": self.missing_acks,
            "missing_deliveries": self.missing_deliveries,
            "duplicates": self.duplicates,
            "echoes": self.echoes,
            "client_cpu_pct": round(100 * self.client_cpu_s / self.duration_s, 1)
            if self.duration_s
            else 0,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
        }


class _Driver:
    def __init__(self, rooms: list[tuple[str, list[RawWebSocket]]], result: ChatResult) -> None:
        self.rooms = rooms
        self.result = result
        self.expected = result.members - 1  # deliveries owed per send
        self.sent: dict[str, _Sent] = {}
        self.owed_acks = 0
        self.owed_deliveries = 0
        self.window = (float("inf"), float("inf"))
        self.sending = True
        sockets = [ws for _, room in rooms for ws in room]
        self.index = {id(ws): n for n, ws in enumerate(sockets)}  # socket -> receiver number

    def on_frame(self, receiver: int, frame: Frame, now: float) -> None:
        kind = frame.type
        if kind == "message":
            ref = frame.message
            entry = self.sent.get(ref.client_id or "") if isinstance(ref, MessageRef) else None
            if entry is None:
                return
            if receiver == entry.sender:
                self.result.echoes += 1
            elif entry.deliveries >= self.expected:
                self.result.duplicates += 1
            else:
                entry.deliveries += 1
                self.owed_deliveries -= 1
                if entry.measured:
                    self.result.delivery.record(now - entry.due)
                if self.window[0] <= now <= self.window[1]:
                    self.result.deliveries_in_window += 1
        elif kind == "ack":
            entry = self.sent.get(frame.client_id or "")
            if entry is not None and not entry.acked:
                entry.acked = True
                self.owed_acks -= 1
                if entry.measured:
                    self.result.ack.record(now - entry.due)
        elif kind == "error":
            if self.result.error_frames < 5:
                log(f"error frame: {frame.code}: {frame.message}")
            self.result.error_frames += 1

    def attach(self, receiver: int, ws: RawWebSocket) -> None:
        """Frames are handled as they are parsed, inside the socket's ``data_received``."""

        def on_text(data: bytes) -> None:
            try:
                frame = decode_frame(data)
            except msgspec.DecodeError as exc:  # counted with the error frames
                if self.result.error_frames < 5:
                    log(f"undecodable frame ({exc}): {data[:200]!r}")
                self.result.error_frames += 1
                return
            self.on_frame(receiver, frame, perf_counter())

        def on_close() -> None:
            if self.sending:
                if self.result.closes < 5:
                    log(f"WebSocket closed by the server: code {ws.close_code}")
                self.result.closes += 1

        ws.on_close = on_close
        ws.set_on_text(on_text)

    async def send_all(self, rate: float, warmup: float, duration: float, senders: int) -> None:
        rng = random.Random()
        run = secrets.token_hex(4)
        start = perf_counter()
        self.window = (start + warmup, start + warmup + duration)
        total = int((warmup + duration) * rate)
        i = 0
        while i < total:
            due_now = min(total, int((perf_counter() - start) * rate) + 1)
            while i < due_now:
                due = start + i / rate
                conversation_id, room = self.rooms[rng.randrange(len(self.rooms))]
                ws = room[rng.randrange(senders)]
                client_id = f"{run}-{i}"
                measured = self.window[0] <= due < self.window[1]
                self.sent[client_id] = _Sent(due, self.index[id(ws)], measured)
                self.owed_acks += 1
                self.owed_deliveries += self.expected
                if measured:
                    self.result.sends += 1
                    self.result.send_lag.record(perf_counter() - due)
                ws.send_text(encode(SendFrame(conversation_id, client_id, TEXT)))
                i += 1
            await asyncio.sleep(max(0.0, start + i / rate - perf_counter()))


async def drive_chat(
    rooms: list[tuple[str, list[RawWebSocket]]],
    *,
    rate: float,
    duration: float,
    warmup: float,
    senders: int | None = None,
    grace: float = 5.0,
) -> ChatResult:
    """Run the open-loop schedule over ready sockets: ``rooms`` is ``[(conversation_id,
    [one socket per member])]``, every room with the same number of members. Sends come from
    the first ``senders`` members of each room (default: any member)."""
    sizes = {len(sockets) for _, sockets in rooms}
    if len(sizes) != 1 or min(sizes) < 2:
        raise ValueError("every room needs the same number (>= 2) of members")
    members = sizes.pop()
    senders = members if senders is None else senders
    if not 1 <= senders <= members:
        raise ValueError(f"senders must be between 1 and the members of a room ({members})")
    result = ChatResult(
        rooms=len(rooms),
        members=members,
        senders=senders,
        rate=rate,
        duration_s=duration,
        warmup_s=warmup,
    )
    driver = _Driver(rooms, result)
    for _, sockets in rooms:
        for ws in sockets:
            driver.attach(driver.index[id(ws)], ws)
    try:
        cpu_task = asyncio.create_task(_cpu_over(warmup, duration))
        await driver.send_all(rate, warmup, duration, senders)
        result.client_cpu_s = await cpu_task
        deadline = perf_counter() + grace
        while (driver.owed_acks or driver.owed_deliveries) and perf_counter() < deadline:
            await asyncio.sleep(0.05)
        result.missing_acks = driver.owed_acks
        result.missing_deliveries = driver.owed_deliveries
    finally:
        driver.sending = False
    return result


async def _cpu_over(wait: float, duration: float) -> float:
    """This process's CPU seconds over ``duration`` seconds, starting ``wait`` seconds from now."""
    await asyncio.sleep(wait)
    before = own_cpu_seconds()
    await asyncio.sleep(duration)
    return own_cpu_seconds() - before


async def create_conversations(
    http: aiohttp.ClientSession, rooms: list[list[Member]], concurrency: int = 8
) -> list[str]:
    """``POST /api/v1/conversations {"member_ids": [...]}`` as each room's first member, on that
    member's node; return the conversation ids in room order."""
    gate = asyncio.Semaphore(concurrency)

    async def create(room: list[Member]) -> str:
        owner = room[0]
        async with (
            gate,
            http.post(
                f"{owner.url}/api/v1/conversations",
                json={"member_ids": [m.user_id for m in room[1:]]},
                headers={"Authorization": f"Bearer {owner.token}"},
            ) as resp,
        ):
            body = await resp.read()
            if resp.status not in (200, 201):
                raise BenchError(
                    f"POST /api/v1/conversations answered {resp.status}: {body[:300]!r}"
                )
            return str(msgspec.json.decode(body)["id"])

    return list(await asyncio.gather(*(create(room) for room in rooms)))


async def run_chat(
    rooms: list[list[Member]],
    *,
    rate: float,
    duration: float,
    warmup: float,
    senders: int | None = None,
) -> ChatResult:
    """Create the conversations, open every member's WebSocket, drive the schedule, close."""
    async with client_session() as http:
        ids = await create_conversations(http, rooms)
        log(f"{len(ids)} conversations created; opening {sum(map(len, rooms))} WebSockets")
        sockets = await connect_all([m for room in rooms for m in room])
        try:
            grouped, at = [], 0
            for conversation_id, room in zip(ids, rooms, strict=False):
                grouped.append((conversation_id, sockets[at : at + len(room)]))
                at += len(room)
            log(f"sending {rate:g}/s for {warmup:g}s warm-up + {duration:g}s")
            return await drive_chat(
                grouped, rate=rate, duration=duration, warmup=warmup, senders=senders
            )
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
