"""A lean WebSocket client for the chat load: one ``asyncio.Protocol`` per socket, frames parsed
in ``data_received`` and handed to a callback there, no task or future per frame.

aiohttp's client (``bench.wsclient``) costs the bench about a quarter of its time in the
``async for msg in ws`` machinery alone (a task switch and a queue per frame). In a room of 50
every send comes back as 49 frames, so that overhead is what limits how fast the bench recovers
from a burst; this client does the same work with a plain loop over the bytes, the way
``bench.httpclient`` does for HTTP.

It speaks exactly what the chat bench needs of RFC 6455: the opening handshake (the accept key
is not checked: the peer is ours), unmasked server frames of any length (7, 16 or 64-bit),
fragmented messages, ``ping`` answered with ``pong``, the closing handshake; client frames are
masked with a zero key (the mask is mandatory, its value is not checked by servers), so the
payload goes out as it is.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable
from typing import cast
from urllib.parse import quote, urlsplit

from bench.procs import BenchError
from bench.wsclient import READY_TIMEOUT, Member, decode_frame

_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
_ZERO_MASK = b"\x00\x00\x00\x00"
MAX_FRAME = 1 << 20

OnText = Callable[[bytes], None]


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked (zero key) client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = _HEAD_16(0x80 | opcode, 0x80 | 126, n)
    else:
        head = _HEAD_64(0x80 | opcode, 0x80 | 127, n)
    return head + _ZERO_MASK + payload


class RawWebSocket(asyncio.Protocol):
    """One client WebSocket. ``on_text`` gets every text message once the socket is ready
    (messages that arrive between ``ready`` and the first ``on_text`` are kept and replayed);
    ``on_close`` is called once when the server closes or the connection is lost."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._need = 0  # bytes the buffered frame needs before it can be parsed
        self._upgraded = False
        self._fragments: list[bytes] | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._on_text: OnText | None = None
        self._early: list[bytes] = []
        self.on_close: Callable[[], None] | None = None
        self.closed = False
        self.close_code: int | None = None

    # -- the driver's side ----------------------------------------------------------------------

    def set_on_text(self, on_text: OnText) -> None:
        self._on_text = on_text
        early, self._early = self._early, []
        for payload in early:
            on_text(payload)

    def send_text(self, payload: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(client_frame(0x1, payload))

    async def close(self, timeout: float = 2.0) -> None:
        """Send a close frame and wait (at most ``timeout``) for the server to end the
        connection."""
        if self.transport is None:
            return
        if not self.closed:
            self.closed = True
            self.transport.write(client_frame(0x8, struct.pack("!H", 1000)))
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), timeout)
        except TimeoutError:
            self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ready.done():
            self._ready.set_exception(BenchError(f"/ws connection lost before ready: {exc!r}"))
        if not self._lost.done():
            self._lost.set_result(None)
        self._closed_by_server()

    def data_received(self, data: bytes) -> None:
        if not self._upgraded:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = bytes(self._buf[:end]), bytes(self._buf[end + 4 :])
            self._buf.clear()
            line = head.split(b"\r\n", 1)[0]
            status = line.split(b" ", 2)
            if len(status) < 2 or status[1] != b"101":
                self._fail(BenchError(f"/ws refused: {line!r}"))
                return
            self._upgraded = True
            if not rest:
                return
            data = rest
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            buf.clear()
        self._need = 0
        pos, size = 0, len(data)
        while size - pos >= 2:
            b0, n = data[pos], data[pos + 1]
            if n & 0x80:
                self._fail(BenchError("/ws: the server sent a masked frame"))
                return
            hl = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                hl = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hl = 10
            if n > MAX_FRAME:
                self._fail(BenchError(f"/ws: a frame of {n} bytes"))
                return
            end = pos + hl + n
            if end > size:
                self._need = end - pos
                break
            self._frame(b0, data[pos + hl : end])
            pos = end
            if self.transport is None or self.transport.is_closing():
                return
        if pos < size:
            buf += memoryview(data)[pos:]

    # -- internals --------------------------------------------------------------------------

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode in (0x0, 0x1):  # continuation, text
            if not b0 & 0x80:  # more to come
                self._fragments = [*(self._fragments or ()), payload]
                return
            if self._fragments is not None:
                payload = b"".join([*self._fragments, payload])
                self._fragments = None
            self._text(payload)
        elif opcode == 0x9 and self.transport is not None:  # ping
            self.transport.write(client_frame(0xA, payload))
        elif opcode == 0x8:  # close: answer it and end the connection
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if self.transport is not None:
                if not self.closed:
                    self.transport.write(client_frame(0x8, payload[:2]))
                self.transport.close()
            self._closed_by_server()

    def _text(self, payload: bytes) -> None:
        on_text = self._on_text
        if on_text is not None:
            on_text(payload)
        elif self._ready.done():
            self._early.append(payload)
        elif decode_frame(payload).type == "ready":  # frames before ready are dropped
            self._ready.set_result(None)

    def _closed_by_server(self) -> None:
        was_closed = self.closed
        self.closed = True
        if not was_closed and self.on_close is not None:
            self.on_close()

    def _fail(self, exc: BaseException) -> None:
        if not self._ready.done():
            self._ready.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


def _request(member: Member) -> tuple[str, int, bytes]:
    url = urlsplit(member.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?token={quote(member.token)} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    )
    return host, port, request.encode()


async def connect(member: Member) -> RawWebSocket:
    """Open ``/ws`` and wait for ``{"type": "ready"}``."""
    host, port, request = _request(member)
    loop = asyncio.get_running_loop()
    _, ws = await loop.create_connection(lambda: RawWebSocket(request), host, port)
    try:
        await asyncio.wait_for(asyncio.shield(ws._ready), READY_TIMEOUT)
    except BaseException as exc:
        if ws.transport is not None:
            ws.transport.abort()
        if isinstance(exc, TimeoutError):
            raise BenchError(f"/ws of user {member.user_id}: no ready in {READY_TIMEOUT}s") from exc
        raise
    return ws


async def connect_all(members: list[Member], *, batch: int = 200) -> list[RawWebSocket]:
    """One ready socket per member, ``batch`` handshakes at a time; the first failure closes
    what was opened and raises."""
    sockets: list[RawWebSocket] = []
    try:
        for start in range(0, len(members), batch):
            results = await asyncio.gather(
                *(connect(m) for m in members[start : start + batch]), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            sockets.extend(r for r in results if isinstance(r, RawWebSocket))
            if errors:
                raise BenchError(
                    f"{len(errors)} of {len(results)} WebSockets failed to open; "
                    f"first: {errors[0]!r}"
                )
    except BaseException:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        raise
    return sockets
