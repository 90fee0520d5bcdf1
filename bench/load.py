"""Closed-loop HTTP/1.1 load: N keep-alive connections, each sending its next request as soon as
the previous response is in, for a fixed duration after a warm-up.

Each connection is a bare ``asyncio.Protocol`` driven by callbacks: no task, future or stream
per request, so the client's CPU cost per request stays a few microseconds (it shares 2 cores
with the server it measures). Latency is from writing the request to having the whole response.
Only responses completing inside the measurement window count; requests still unanswered
``grace`` seconds after the window are counted as timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, cast

from bench.httpclient import ProtocolError, ResponseParser
from bench.procs import log, own_cpu_seconds
from bench.stats import Recorder, per_second

RECONNECT_DELAY = 0.05


@dataclass
class LoadResult:
    """What one load run measured."""

    concurrency: int
    duration_s: float
    warmup_s: float
    latency: Recorder = field(default_factory=Recorder)
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: int = 0
    protocol_errors: int = 0
    timeouts: int = 0
    bytes: int = 0
    client_cpu_s: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latency)

    @property
    def errors(self) -> int:
        """Non-2xx responses, socket and protocol errors, and requests never answered."""
        bad = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return bad + self.socket_errors + self.protocol_errors + self.timeouts

    def figures(self) -> dict[str, Any]:
        """The JSON-ready figures."""
        return {
            "requests": self.requests,
            "requests_per_s": per_second(self.requests, self.duration_s),
            "latency_ms": self.latency.summary_ms(),
            "errors": self.errors,
            "status": {str(k): v for k, v in sorted(self.statuses.items())},
            "socket_errors": self.socket_errors,
            "protocol_errors": self.protocol_errors,
            "timeouts": self.timeouts,
            "bytes": self.bytes,
            "mib_per_s": round(self.bytes / self.duration_s / 2**20, 2) if self.duration_s else 0,
            "client_cpu_pct": round(100 * self.client_cpu_s / self.duration_s, 1)
            if self.duration_s
            else 0,
            "concurrency": self.concurrency,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
        }


class _Run:
    """State shared by the connections of one load run."""

    def __init__(self, host: str, port: int, requests: Sequence[bytes], result: LoadResult) -> None:
        self.host = host
        self.port = port
        self.requests = requests
        self.result = result
        self.step = result.concurrency  # connection i sends requests i, i+step, i+2*step, ...
        self.window_start = float("inf")
        self.window_end = float("inf")
        self.stopping = False
        self.connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def completed(self, status: int, size: int, latency: float, now: float) -> None:
        if self.window_start <= now <= self.window_end:
            r = self.result
            r.latency.record(latency)
            r.statuses[status] = r.statuses.get(status, 0) + 1
            r.bytes += size

    async def connect(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: _Connection(self, index), self.host, self.port)

    def reconnect(self, index: int) -> None:
        """After a lost connection, open a new one in the same slot (unless stopping)."""
        if self.stopping:
            return
        loop = asyncio.get_running_loop()

        def again() -> None:
            task = loop.create_task(self._reconnect(index))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        loop.call_later(RECONNECT_DELAY, again)

    async def _reconnect(self, index: int) -> None:
        if self.stopping:
            return
        try:
            await self.connect(index)
        except OSError:
            self.result.socket_errors += 1
            self.reconnect(index)

    @property
    def busy(self) -> int:
        return sum(1 for c in self.connections if c.busy)


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request in flight."""

    def __init__(self, run: _Run, index: int) -> None:
        self.run = run
        self.index = index
        self.next = index  # request index; connections interleave over the request list
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.run.connections.add(self)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        run = self.run
        if run.stopping:
            self.transport.close()
            return
        requests = run.requests
        self.transport.write(requests[self.next % len(requests)])
        self.next += run.step
        self.busy = True
        self.sent_at = perf_counter()

    def data_received(self, data: bytes) -> None:
        try:
            done = self.parser.feed(data)
        except ProtocolError as exc:
            if not self.run.result.protocol_errors:
                log(f"protocol error: {exc}")
            self.run.result.protocol_errors += 1
            self.busy = False
            assert self.transport is not None
            self.transport.abort()
            return
        if done is None:
            return
        now = perf_counter()
        self.busy = False
        self.run.completed(done[0], done[1], now - self.sent_at, now)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.connections.discard(self)
        if self.busy and not self.run.stopping:
            self.run.result.socket_errors += 1
        self.busy = False
        self.run.reconnect(self.index)


async def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    duration: float,
    warmup: float = 2.0,
    grace: float = 5.0,
) -> LoadResult:
    """Drive ``requests`` (prebuilt, used round-robin) at ``host:port`` with ``concurrency``
    connections: ``warmup`` seconds unmeasured, then ``duration`` seconds measured."""
    if not requests:
        raise ValueError("no requests to send")
    result = LoadResult(concurrency=concurrency, duration_s=duration, warmup_s=warmup)
    run = _Run(host, port, requests, result)
    try:
        await asyncio.gather(*(run.connect(i) for i in range(concurrency)))
        run.window_start = perf_counter() + warmup
        run.window_end = run.window_start + duration
        await asyncio.sleep(warmup)
        cpu_before = own_cpu_seconds()
        await asyncio.sleep(max(0.0, run.window_end - perf_counter()))
        result.client_cpu_s = own_cpu_seconds() - cpu_before
        run.stopping = True
        deadline = perf_counter() + grace
        while run.busy and perf_counter() < deadline:
            await asyncio.sleep(0.01)
        result.timeouts = run.busy
    finally:
        run.stopping = True
        for conn in list(run.connections):
            if conn.transport is not None:
                conn.transport.abort()
    return result
