"""A WebSocket test client that keeps every frame and lets a test wait for the ones it wants."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

Frame = dict[str, Any]


class WsClient:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self._cursor = 0
        self._arrived = asyncio.Event()
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls, target: TestClient | str, token: str, *, session: aiohttp.ClientSession | None = None
    ) -> WsClient:
        if isinstance(target, TestClient):
            ws = await target.ws_connect(f"/ws?token={token}")
        else:
            assert session is not None
            ws = await session.ws_connect(f"{target}/ws?token={token}")
        client = cls(ws)
        await client.expect("ready")
        return client

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))
                self._arrived.set()
        self.close_code = self.ws.close_code
        self._arrived.set()

    async def send(self, frame: Frame) -> None:
        await self.ws.send_str(json.dumps(frame))

    async def expect(
        self, kind: str, timeout: float = 5.0, where: Callable[[Frame], bool] = lambda f: True
    ) -> Frame:
        """The next frame of this kind (and matching ``where``) not returned before."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i in range(self._cursor, len(self.frames)):
                frame = self.frames[i]
                if frame.get("type") == kind and where(frame) and not frame.get("_seen"):
                    frame["_seen"] = True
                    return frame
            if self.ws.closed and self._reader.done():
                raise AssertionError(
                    f"closed ({self.close_code}) before a {kind!r} frame; got {self._summary()}"
                )
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no {kind!r} frame within {timeout}s; got {self._summary()}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    def _summary(self) -> str:
        return repr([str(f)[:160] for f in self.frames[-5:]])

    def of(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if f.get("type") == kind]

    async def quiet(self, kind: str, seconds: float) -> None:
        """Assert no (new) frame of this kind arrives for a while."""
        before = len(self.of(kind))
        await asyncio.sleep(seconds)
        assert len(self.of(kind)) == before, self.of(kind)[before:]

    async def closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
