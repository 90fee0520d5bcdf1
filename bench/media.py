"""``media``: ``POST /api/v1/media`` uploads of a ~1 MB photo-like JPEG, closed loop, and
meanwhile how responsive the node's event loop stays, seen from outside through WebSocket pings.

One node is spawned on the configured services with the per-account upload limit off
(``AGORA_MEDIA_UPLOAD_LIMIT=0``), the WebSocket frame limit off (``AGORA_WS_RATE_LIMIT=0``: the
pings are many) and a fresh temporary ``AGORA_MEDIA_DIR`` (removed at the end). ``--library``
hands the imaging library to it as ``AGORA_MEDIA_LIBRARY``, refused when this build's
configuration does not read that variable. The run's users are made in SQL with minted tokens
(bench/fixtures.py) and deleted at the end with their uploads and the stored objects only those
used.

The image: 3000x2000, three gradients plus Gaussian noise, baseline JPEG q85 4:2:0 with a restart
marker after every MCU row (16 pixel rows), made once per run with Pillow (~0.95 MB). Every upload
sends different bytes for the price of re-encoding one 3000x16 strip (about 0.2 ms): the middle
MCU row is redrawn with upload n's number as 4x4 white squares and its entropy-coded segment
spliced in (restart intervals are coded independently, and the strip is encoded with the same
quantisation and Huffman tables), so the node never sees the same file twice and content
addressing stores each upload's renditions anew.

Sequence: a first upload is decoded (201 and its fields, or a clear error: no media endpoint);
``--sockets`` WebSocket sessions (``GET /ws?token=``) each send ``{"type": "ping"}`` every
``--ping-interval`` seconds (staggered, one in flight per socket) and time the ``pong``; for
``--idle`` seconds nothing else happens (the baseline), then ``--concurrency`` uploaders run
closed-loop for ``--warmup`` + ``--duration`` seconds. Ping round trips, the bench's own
event-loop lag and the CPU of the node, PostgreSQL, Redis and the machine are reported for the
idle window and for the measured upload window.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from time import perf_counter
from typing import Any

import aiohttp
import asyncpg
from PIL import Image, ImageChops, ImageDraw

from agora.config import load_config
from agora.media import imaging
from bench.events import _cpu_figures, _cpu_mark, _CpuMark, _db_time, _scrape
from bench.fixtures import Account, create_accounts, run_prefix
from bench.nodes import start_nodes
from bench.procs import (
    BenchError,
    ServerProcess,
    cpu_seconds,
    log,
    own_cpu_seconds,
    raise_nofile_limit,
    rss_mib,
)
from bench.rawws import RawWebSocket, connect_all
from bench.search import _LoopLag
from bench.services import Services
from bench.stats import Recorder, per_second
from bench.wsclient import Member, decode_frame

GOAL = {"concurrency": 8, "ping_rtt_p99_ms_max": 20}
IMAGE_SIZE = (3000, 2000)
JPEG_QUALITY = 85
NOISE_SIGMA = 5  # gives ~0.95 MB at q85
MCU_ROWS = 16  # pixel rows per MCU row with 4:2:0 subsampling
MARK_BITS = 40  # upload numbers drawn into the varied row: 2**40 distinct images
UPLOAD_TIMEOUT = 60.0  # seconds; a longer upload counts as a timeout
ERROR_PAUSE = 0.05  # an uploader waits this long after an error (a 503 answers at once)
GRACE = 30.0  # seconds given to uploads in flight when the window closes
SETTLE = 1.0  # seconds of pings before the idle window starts
PING = b'{"type":"ping"}'
PONG = b'{"type":"pong"}'
_RST = re.compile(rb"\xff[\xd0-\xd7]")


@dataclass(frozen=True)
class MediaOptions:
    concurrency: int
    duration: float
    warmup: float
    idle: float  # seconds of pings with no upload, before the load
    sockets: int
    ping_interval: float  # seconds between one socket's pings
    library: str | None  # None: the node's default (agora.media.imaging.DEFAULT)
    description: str = "bench upload"


# -- the image ------------------------------------------------------------------------------------


def photo(size: tuple[int, int] = IMAGE_SIZE, sigma: float = NOISE_SIGMA) -> Image.Image:
    """A photo-like RGB image: a horizontal, a vertical and a radial gradient, one per channel,
    plus Gaussian noise (what makes a JPEG of it weigh what a photo does)."""
    gradient = Image.linear_gradient("L")
    channels = (
        gradient.rotate(90).resize(size),
        gradient.resize(size),
        Image.radial_gradient("L").resize(size),
    )
    noise = Image.effect_noise(size, sigma)
    return Image.merge("RGB", [ImageChops.add(c, noise, 1.0, -128) for c in channels])


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG, 4:2:0, the standard Huffman tables (no ``optimize``: the tables must not
    depend on the pixels) and a restart marker after every MCU row."""
    buf = io.BytesIO()
    image.save(
        buf,
        "JPEG",
        quality=quality,
        subsampling=2,
        optimize=False,
        progressive=False,
        restart_marker_rows=1,
    )
    return buf.getvalue()


def split_scan(data: bytes) -> tuple[bytes, list[bytes]]:
    """A baseline JPEG -> (everything up to and including the SOS header, the entropy-coded
    segments between restart markers). Raises ValueError on anything else."""
    if not data.startswith(b"\xff\xd8") or not data.endswith(b"\xff\xd9"):
        raise ValueError("not a complete JPEG")
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise ValueError(f"no marker at byte {at}")
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        at += 2 + length
        if marker == 0xDA:  # start of scan: the entropy-coded data follows its header
            # Inside the scan an 0xFF byte of data is stuffed (0xFF00), so a restart marker
            # 0xFFD0..0xFFD7 cannot be mistaken for data.
            return data[:at], _RST.split(data[at:-2])
    raise ValueError("no start of scan")


def _rst(index: int) -> bytes:
    """The restart marker that ends interval ``index`` (RST0..RST7, cycling)."""
    return bytes((0xFF, 0xD0 + index % 8))


class PhotoJpeg:
    """The run's JPEG and its variants: ``variant(n)`` is the same image with upload ``n``'s
    number drawn into its middle MCU row, different bytes for each ``n``."""

    def __init__(
        self,
        size: tuple[int, int] = IMAGE_SIZE,
        quality: int = JPEG_QUALITY,
        sigma: float = NOISE_SIGMA,
    ) -> None:
        self.quality = quality
        self.width, self.height = size
        image = photo(size, sigma)
        self.base = encode_jpeg(image, quality)
        head, segments = split_scan(self.base)
        rows = math.ceil(self.height / MCU_ROWS)
        if len(segments) != rows:
            raise BenchError(
                f"Pillow's JPEG has {len(segments)} restart intervals, not one per MCU row "
                f"({rows}): cannot vary the image cheaply"
            )
        self.row = rows // 2
        top = self.row * MCU_ROWS
        self._strip = image.crop((0, top, self.width, min(self.height, top + MCU_ROWS)))
        before = [p for k, s in enumerate(segments[: self.row]) for p in (s, _rst(k))]
        after = [
            p
            for k, s in enumerate(segments[self.row + 1 :], start=self.row + 1)
            for p in (_rst(k - 1), s)
        ]
        self._prefix = head + b"".join(before)
        self._suffix = b"".join(after) + b"\xff\xd9"
        if self._splice(self._strip) != self.base:
            raise BenchError("re-encoding one MCU row of the bench JPEG did not give its bytes")

    def _splice(self, strip: Image.Image) -> bytes:
        _, segments = split_scan(encode_jpeg(strip, self.quality))
        if len(segments) != 1:
            raise BenchError("the bench JPEG's strip encodes to more than one interval")
        return self._prefix + segments[0] + self._suffix

    def variant(self, n: int) -> bytes:
        """The image with ``n + 1`` drawn as white 4x4 squares, one per set bit, in the middle
        MCU row."""
        strip = self._strip.copy()
        draw = ImageDraw.Draw(strip)
        mark = n + 1
        step = max(8, (self.width - 16) // MARK_BITS)
        for bit in range(MARK_BITS):
            if mark >> bit & 1:
                x = 8 + bit * step
                draw.rectangle((x, 6, x + 3, 9), fill=(255, 255, 255))
        return self._splice(strip)


def multipart(boundary: str, jpeg: bytes, description: str) -> bytes:
    """A ``multipart/form-data`` body: the part ``file`` and a ``description``."""
    b = boundary.encode()
    return b"".join(
        (
            b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"'
            b"\r\nContent-Type: image/jpeg\r\n\r\n",
            jpeg,
            b"\r\n--" + b + b'\r\nContent-Disposition: form-data; name="description"\r\n\r\n',
            description.encode(),
            b"\r\n--" + b + b"--\r\n",
        )
    )


# -- WebSocket pings ------------------------------------------------------------------------------


class Pinger:
    """Each socket sends a ping every ``interval`` seconds (socket j offset by j/n of it, so
    the pings sample the node evenly) and times the pong. One ping in flight per socket: a tick
    that finds its socket still waiting is ``skipped``. Round trips are filed under the phase
    that was current when the ping went out (``None``: not recorded)."""

    def __init__(self, sockets: list[RawWebSocket], interval: float) -> None:
        self.sockets = sockets
        self.interval = interval
        self.phase: str | None = None
        self.rtt: dict[str, Recorder] = {}
        self.skipped: dict[str, int] = {}
        self.other_frames = 0
        self.closes = 0
        n = len(sockets)
        self._sent_at = [0.0] * n
        self._sent_phase: list[str | None] = [None] * n
        self._waiting = [False] * n
        self._handles: list[asyncio.TimerHandle | None] = [None] * n
        self._stopped = False
        for j, ws in enumerate(sockets):
            ws.set_on_text(partial(self._on_text, j))
            ws.on_close = self._on_close

    def begin(self, phase: str) -> None:
        self.rtt.setdefault(phase, Recorder())
        self.skipped.setdefault(phase, 0)
        self.phase = phase

    def end(self) -> None:
        self.phase = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = len(self.sockets)
        for j in range(n):
            due = start + self.interval * j / n
            self._handles[j] = loop.call_at(due, self._tick, j, due)

    def stop(self) -> None:
        self._stopped = True
        for handle in self._handles:
            if handle is not None:
                handle.cancel()

    def _tick(self, j: int, due: float) -> None:
        if self._stopped:
            return
        phase = self.phase
        if self._waiting[j]:
            if phase is not None:
                self.skipped[phase] += 1
        elif not self.sockets[j].closed:
            self._waiting[j] = True
            self._sent_phase[j] = phase
            self._sent_at[j] = perf_counter()
            self.sockets[j].send_text(PING)
        loop = asyncio.get_running_loop()
        due = max(due + self.interval, loop.time())  # a late tick does not fire twice
        self._handles[j] = loop.call_at(due, self._tick, j, due)

    def _on_text(self, j: int, payload: bytes) -> None:
        if payload != PONG and decode_frame(payload).type != "pong":
            self.other_frames += 1  # presence and the like
            return
        if not self._waiting[j]:
            return
        rtt = perf_counter() - self._sent_at[j]
        self._waiting[j] = False
        phase = self._sent_phase[j]
        if phase is not None:
            self.rtt[phase].record(rtt)

    def _on_close(self) -> None:
        self.closes += 1

    def figures(self, phase: str) -> dict[str, Any]:
        s = self.rtt[phase].summary_ms()
        return {
            "pings": len(self.rtt[phase]),
            "skipped": self.skipped[phase],
            "rtt_ms": {k: s[k] for k in ("p50", "p90", "p99", "max", "mean")},
        }


# -- uploads -------------------------------------------------------------------------------------


@dataclass
class UploadStats:
    """What the uploaders measured inside the window (responses completed in it)."""

    latency: Recorder = field(default_factory=Recorder)
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: int = 0
    timeouts: int = 0
    bytes_sent: int = 0
    started: int = 0  # uploads sent, warm-up and window
    window_start: float = math.inf
    window_end: float = math.inf
    stopping: bool = False
    first_error: dict[int, str] = field(default_factory=dict)

    @property
    def uploads(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def errors(self) -> int:
        bad = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return bad + self.socket_errors + self.timeouts


async def _uploader(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    body: Callable[[int], bytes],
    numbers: itertools.count[int],
    stats: UploadStats,
    content_type: str,
) -> None:
    """Closed loop: the next upload as soon as the previous one is answered."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    while not stats.stopping:
        data = body(next(numbers))
        stats.started += 1
        status: int | None = None
        text = b""
        timed_out = False
        started = perf_counter()
        try:
            async with http.post(url, data=data, headers=headers) as resp:
                text = await resp.read()
                status = resp.status
        except TimeoutError:
            timed_out = True
        except aiohttp.ClientError as exc:
            if not stats.socket_errors:
                log(f"upload failed: {exc!r}")
        now = perf_counter()
        ok = status is not None and 200 <= status < 300
        if stats.window_start <= now <= stats.window_end:
            if status is not None:
                stats.statuses[status] = stats.statuses.get(status, 0) + 1
                if ok:
                    stats.latency.record(now - started)
                    stats.bytes_sent += len(data)
            elif timed_out:
                stats.timeouts += 1
            else:
                stats.socket_errors += 1
        if status is not None and not ok and status not in stats.first_error:
            stats.first_error[status] = text[:300].decode(errors="replace")
            log(f"upload answered HTTP {status}: {stats.first_error[status]}")
        if not ok:
            await asyncio.sleep(ERROR_PAUSE)


async def _probe(http: aiohttp.ClientSession, url: str, token: str, body: bytes, ct: str) -> Any:
    """One upload, decoded: the 201 answer, or a BenchError saying what came back."""
    started = perf_counter()
    try:
        async with http.post(
            url, data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": ct}
        ) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchError(f"the first upload to {url} failed: {exc!r}") from exc
    if status == 404:
        raise BenchError(f"POST {url} answered 404: this node has no media endpoint")
    if status != 201:
        raise BenchError(f"the first upload to {url} answered HTTP {status}: {text[:300]}")
    out = json.loads(text)
    media = out.get("data", out) if isinstance(out, dict) else out
    if not isinstance(media, dict) or not {"id", "url", "thumbnail_url"} <= media.keys():
        raise BenchError(f"the first upload's answer lacks id, url, thumbnail_url: {text[:300]}")
    media["latency_ms"] = round(1000 * (perf_counter() - started), 1)
    return media


# -- measuring a window ---------------------------------------------------------------------------


@dataclass
class _Window:
    """CPU marks and the bench's loop lag over one window."""

    pid: int
    started: float = 0.0
    node_cpu: float = 0.0
    own_cpu: float = 0.0
    mark: _CpuMark | None = None
    lag: _LoopLag = field(default_factory=_LoopLag)

    def open(self) -> None:
        self.node_cpu, self.own_cpu, self.mark = (
            cpu_seconds(self.pid),
            own_cpu_seconds(),
            _cpu_mark(),
        )
        self.started = perf_counter()
        self.lag.start()

    def close(self) -> dict[str, Any]:
        self.lag.stop()
        seconds = perf_counter() - self.started
        node = 100 * (cpu_seconds(self.pid) - self.node_cpu) / seconds
        own = 100 * (own_cpu_seconds() - self.own_cpu) / seconds
        assert self.mark is not None
        lag = self.lag.lag.summary_ms()
        return {
            "seconds": round(seconds, 2),
            "node_cpu_pct": round(node, 1),
            "client_cpu_pct": round(own, 1),
            "client_loop_lag_ms": {k: lag[k] for k in ("p50", "p99", "max")},
            "cpu_pct": _cpu_figures(self.mark, _cpu_mark(), node + own),
        }


# -- the command ----------------------------------------------------------------------------------


def check_library(services: Services, library: str) -> None:
    """Refuse ``--library`` when this build's configuration ignores ``AGORA_MEDIA_LIBRARY``
    (the node would silently use its default)."""
    env = services.node_env("bench-check", AGORA_MEDIA_LIBRARY=library)
    config = load_config(env).media
    if not any(getattr(config, f.name) == library for f in fields(config)):
        raise BenchError(
            f"--library {library}: this build's configuration does not read "
            f"AGORA_MEDIA_LIBRARY, so the node would use its default "
            f"({imaging.DEFAULT}); run without --library"
        )


async def _cleanup(services: Services, prefix: str) -> dict[str, int]:
    """Delete the run's users (their uploads cascade) and the stored-object rows that only
    those uploads used."""
    try:
        conn = await asyncpg.connect(services.database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        log(f"could not clean up the bench users {prefix}*: {exc}")
        return {}
    try:
        async with conn.transaction():
            keys = await conn.fetchval(
                """
                SELECT coalesce(array_agg(DISTINCT k), '{}') FROM media.uploads u
                JOIN accounts.users a ON a.id = u.owner_id,
                LATERAL (VALUES (u.original_key), (u.small_key)) AS t(k)
                WHERE starts_with(a.username, $1)""",
                prefix,
            )
            users = await conn.execute(
                "DELETE FROM accounts.users WHERE starts_with(username, $1)", prefix
            )
            objects = await conn.execute(
                """
                DELETE FROM media.objects o WHERE o.key = ANY($1::text[])
                AND NOT EXISTS (SELECT 1 FROM media.uploads u
                                WHERE u.original_key = o.key OR u.small_key = o.key)""",
                keys,
            )
        return {"users": int(users.split()[-1]), "objects": int(objects.split()[-1])}
    except (OSError, asyncpg.PostgresError) as exc:
        log(f"could not clean up the bench users {prefix}*: {exc}")
        return {}
    finally:
        await conn.close()


async def media(services: Services, options: MediaOptions) -> dict[str, Any]:
    """Run the media benchmark on a fresh node; return the report."""
    if options.library is not None:
        check_library(services, options.library)
    library = options.library or imaging.DEFAULT
    raise_nofile_limit()
    started = time.monotonic()
    image = PhotoJpeg()
    sizes = [len(image.variant(n)) for n in range(3)]
    log(
        f"image: {image.width}x{image.height} JPEG q{image.quality}, {len(image.base):,} bytes "
        f"({time.monotonic() - started:.1f}s); one MCU row varied per upload"
    )
    boundary = "agora-bench-" + secrets.token_hex(8)
    content_type = f"multipart/form-data; boundary={boundary}"

    def body(n: int) -> bytes:
        return multipart(boundary, image.variant(n), options.description)

    from agora.storage.migrations import migrate

    applied = await migrate(services.database_url)
    if applied:
        log(f"migrations applied: {', '.join(applied)}")
    prefix = run_prefix("bmedia")
    media_dir = tempfile.mkdtemp(prefix="agora-bench-media-")
    node: ServerProcess | None = None
    sockets: list[RawWebSocket] = []
    pinger: Pinger | None = None
    cleaned: dict[str, int] = {}
    env = {
        "AGORA_MEDIA_UPLOAD_LIMIT": "0",
        "AGORA_WS_RATE_LIMIT": "0",
        "AGORA_MEDIA_DIR": media_dir,
    }
    if options.library is not None:
        env["AGORA_MEDIA_LIBRARY"] = options.library
    try:
        accounts = await create_accounts(
            services, prefix, max(options.concurrency, options.sockets)
        )
        node = (await start_nodes(services, 1, **env))[0]
        url = f"{node.url}/api/v1/media"
        timeout = aiohttp.ClientTimeout(total=UPLOAD_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=options.concurrency + 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            probe = await _probe(http, url, accounts[0].token, body(0), content_type)
            log(f"first upload: 201 in {probe['latency_ms']} ms, {probe.get('url')}")
            members = [_member(a, node.url) for a in accounts[: options.sockets]]
            sockets = await connect_all(members)
            pinger = Pinger(sockets, options.ping_interval)
            pinger.start()
            await asyncio.sleep(SETTLE)

            log(f"idle: {options.sockets} sockets pinging for {options.idle:g}s")
            window = _Window(node.pid)
            pinger.begin("idle")
            window.open()
            await asyncio.sleep(options.idle)
            pinger.end()
            idle = {**window.close(), **pinger.figures("idle")}
            log(
                f"idle: ping p50 {idle['rtt_ms']['p50']} p99 {idle['rtt_ms']['p99']} "
                f"max {idle['rtt_ms']['max']} ms"
            )

            log(
                f"uploads: {options.concurrency} uploaders, {options.warmup:g}s warm-up + "
                f"{options.duration:g}s"
            )
            stats = UploadStats()
            numbers = itertools.count(1)
            tasks = [
                asyncio.create_task(
                    _uploader(
                        http,
                        url,
                        accounts[k % len(accounts)].token,
                        body,
                        numbers,
                        stats,
                        content_type,
                    )
                )
                for k in range(options.concurrency)
            ]
            try:
                await asyncio.sleep(options.warmup)
                metrics_before = [await _scrape(http, node.url)]
                window = _Window(node.pid)
                pinger.begin("upload")
                window.open()
                stats.window_start = perf_counter()
                stats.window_end = stats.window_start + options.duration
                await asyncio.sleep(options.duration)
                pinger.end()
                loaded = {**window.close(), **pinger.figures("upload")}
                stats.stopping = True
                metrics_after = [await _scrape(http, node.url)]
                _, pending = await asyncio.wait(tasks, timeout=GRACE)
                if pending:
                    log(f"{len(pending)} uploads still unanswered {GRACE:g}s after the window")
            finally:
                stats.stopping = True
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            node_rss = rss_mib(node.pid)
    finally:
        if pinger is not None:
            pinger.stop()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        if node is not None:
            node.stop()
        cleaned = await _cleanup(services, prefix)
        shutil.rmtree(media_dir, ignore_errors=True)

    latency = stats.latency.summary_ms()
    ping = loaded["rtt_ms"]
    met = (
        None
        if options.concurrency != GOAL["concurrency"]
        else stats.errors == 0
        and stats.uploads > 0
        and ping["p99"] is not None
        and ping["p99"] < GOAL["ping_rtt_p99_ms_max"]
        and pinger.closes == 0
    )
    upload = {
        "uploads": stats.uploads,
        "uploads_per_s": per_second(stats.uploads, options.duration),
        "latency_ms": {k: latency[k] for k in ("p50", "p90", "p99", "max", "mean")},
        "errors": stats.errors,
        "status": {str(k): v for k, v in sorted(stats.statuses.items())},
        "socket_errors": stats.socket_errors,
        "timeouts": stats.timeouts,
        "first_error": {str(k): v for k, v in stats.first_error.items()},
        "mib_per_s_sent": round(stats.bytes_sent / options.duration / 2**20, 2),
        "ping": {k: loaded[k] for k in ("pings", "skipped", "rtt_ms")},
        **{k: v for k, v in loaded.items() if k not in ("pings", "skipped", "rtt_ms")},
        "node_db_time": _db_time(metrics_before, metrics_after, loaded["seconds"]),
    }
    log(
        f"uploads: {upload['uploads_per_s']}/s, p50 {latency['p50']} p99 {latency['p99']} ms, "
        f"{stats.errors} errors; ping p50 {ping['p50']} p99 {ping['p99']} max {ping['max']} ms"
    )
    return {
        "target": "agora-media",
        "url": url,
        "database": services.describe(),
        "storage": "s3" if services.config.media.s3_bucket else "local",
        "library": library,
        "library_from": "--library" if options.library else "the node's default",
        "workers": services.config.media.workers,
        "parameters": {
            "concurrency": options.concurrency,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "idle_s": options.idle,
            "sockets": options.sockets,
            "ping_interval_s": options.ping_interval,
        },
        "image": {
            "width": image.width,
            "height": image.height,
            "format": f"JPEG q{image.quality} 4:2:0, restart marker every MCU row",
            "bytes": len(image.base),
            "upload_bytes": sizes,
        },
        "first_upload": probe,
        "idle": {
            "ping": {k: idle[k] for k in ("pings", "skipped", "rtt_ms")},
            **{k: v for k, v in idle.items() if k not in ("pings", "skipped", "rtt_ms")},
        },
        "upload": upload,
        "socket_closes": pinger.closes,
        "other_frames": pinger.other_frames,
        "node_rss_mib": node_rss,
        "cleanup": cleaned,
        "goal": GOAL,
        "met": met,
    }


def _member(account: Account, url: str) -> Member:
    return Member(str(account.user_id), account.token, url)
