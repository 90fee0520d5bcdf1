"""``events``: domain events under sustained REST writes, and the relay's and consumer's ceiling.

Two phases, each optional:

1. **Sustained.** ``nodes`` nodes are spawned (relay and consumers on). ``users`` seeded users
   (``bench_<n>``, drawn at random) get a login session each, made in SQL, and an access token
   minted with the nodes' secret. Writes go out **open-loop** at ``rate`` per second (write i is
   due at ``start + i / rate``, whatever happened to earlier ones; latency is measured from that
   scheduled time): reactions (``PUT /posts/{id}/reactions``, always a type other than the
   user's current one on that post, so each writes one ``reaction.set``), comments (``POST
   /posts/{id}/comments``) on recent posts of the user's friends, and posts (``POST /posts``).
   Measured: HTTP latency and errors per kind; relay lag (``--amqp`` only: the bench's own
   exclusive queue bound with ``#`` to the exchange, receive time - ``occurred_at``); the outbox's
   own ``sent_at - occurred_at``; consumer lag from the nodes' ``agora_event_lag_seconds``
   histogram (bucket deltas, interpolated) and events consumed per second; the backlog at the
   end; CPU of the nodes, the bench, PostgreSQL, RabbitMQ and the whole machine.
2. **Throughput.** With no node running, ``backlog`` ``reaction.set`` events (real seeded posts,
   their authors and friends of the authors) are inserted into ``events.outbox`` in one statement;
   then one node drains them: the relay alone (consumers off), the consumer alone (relay off, on
   what the first run queued) and both together (on a second batch). Rates come from the rows'
   own timestamps (``sent_at``, ``processed_at``).

Without ``--amqp`` the nodes use the in-process queues in PostgreSQL. With it they use RabbitMQ on
an exchange of their own (``agora.bench.<hex>``, deleted at the end with the consumers' queues)
unless ``AGORA_EVENTS_EXCHANGE`` is set.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from time import perf_counter
from typing import Any, cast

import aiohttp
import aiormq
import aiormq.abc
import asyncpg
import msgspec
from aiormq.exceptions import ChannelNotFoundEntity
from prometheus_client.parser import text_string_to_metric_families

from agora.clock import Clock
from agora.services.tokens import TokenIssuer
from bench.corpus import COMMENT_CHARS, POST_CHARS, filler
from bench.httpclient import ProtocolError, ResponseParser, split_url
from bench.nodes import start_nodes
from bench.procs import BenchError, ServerProcess, cpu_by_process, log, own_cpu_seconds
from bench.seed import BENCH_USERS, REACTION_MIX
from bench.services import Services
from bench.stats import Recorder, per_second

CONSUMER = "notifications"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
GOAL = {"rate": 1000, "consumer_lag_p99_ms_max": 200, "events_per_s_min": 5000}
KINDS = ("reaction", "comment", "post")
REACTIONS = ("like", "love", "haha", "wow", "sad", "angry")
TARGETS_PER_USER = 40  # recent posts of the user's friends it may react to and comment on
SESSION_AGENT = "agora-bench-events"
GRACE = 10.0  # seconds to wait for answers after the last write
DRAIN = 30.0  # then at most this long for the events to be relayed and handled
STALL = 15.0  # throughput: give up when nothing moved for this long
POLL = 0.25
DB_TOP = 12  # statements and transactions reported by time taken


@dataclass(frozen=True)
class EventsOptions:
    rate: float
    duration: float
    warmup: float
    nodes: int
    users: int
    mix: tuple[int, int, int]  # reactions / comments / posts, relative weights
    connections: int  # per node, opened up front (more are opened when all are busy)
    max_connections: int
    amqp: bool
    sustained: bool
    backlog: int  # 0: no throughput phase


def parse_mix(text: str) -> tuple[int, int, int]:
    """``"60/25/15"`` -> (60, 25, 15): reactions / comments / posts."""
    try:
        parts = tuple(int(p) for p in text.split("/"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0 or sum(parts) == 0:
        raise BenchError("--mix must be three non-negative weights REACTIONS/COMMENTS/POSTS")
    return cast(tuple[int, int, int], parts)


async def events(services: Services, options: EventsOptions) -> dict[str, Any]:
    """Run the phases asked for; return the report."""
    if not options.sustained and options.backlog <= 0:
        raise BenchError("nothing to do: --no-sustained and --backlog 0")
    amqp_url = (services.config.amqp_url or DEFAULT_AMQP_URL) if options.amqp else None
    own_exchange = not (os.environ.get("AGORA_EVENTS_EXCHANGE") or "").strip()
    exchange = (
        f"agora.bench.{secrets.token_hex(4)}" if own_exchange else services.config.events.exchange
    )
    if amqp_url is not None:
        await _check_broker(amqp_url)
    env = {"AGORA_AMQP_URL": amqp_url or "", "AGORA_EVENTS_EXCHANGE": exchange}
    report: dict[str, Any] = {
        "target": "agora-events",
        "transport": "rabbitmq" if amqp_url else "in-process",
        "exchange": exchange if amqp_url else None,
        "consumer": CONSUMER,
        "database": services.describe(),
        "parameters": {
            "rate": options.rate,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "nodes": options.nodes,
            "users": options.users,
            "mix": dict(zip(KINDS, options.mix, strict=True)),
            "connections_per_node": options.connections,
            "max_connections_per_node": options.max_connections,
            "amqp": options.amqp,
            "sustained": options.sustained,
            "backlog": options.backlog,
            "prefetch": os.environ.get("AGORA_EVENTS_PREFETCH") or "node default",
        },
        "goal": GOAL,
    }
    try:
        if options.sustained:
            report["sustained"] = await _sustained(services, options, env, amqp_url, exchange)
        if options.backlog > 0:
            report["throughput"] = await _throughput(services, options, env, amqp_url, exchange)
    finally:
        if amqp_url is not None and own_exchange:
            await _delete_exchange(services, amqp_url, exchange)
    return report


# -- phase 1: sustained writes -----------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    user_id: int
    session_id: int
    auth: str  # "Authorization: Bearer ...\r\n"
    targets: list[int]  # post ids


async def _users(conn: asyncpg.Connection, services: Services, count: int) -> list[_User]:
    """``count`` random seeded users, a login session each (SQL) and a minted access token, with
    the recent posts of their friends they may react to and comment on."""
    ids = [
        r["id"]
        for r in await conn.fetch(
            f"SELECT id FROM accounts.users WHERE {BENCH_USERS} ORDER BY random() LIMIT $1", count
        )
    ]
    if not ids:
        raise BenchError("no bench users in the configured database: run `python -m bench seed`")
    sessions = await conn.fetch(
        """
        INSERT INTO accounts.login_sessions (user_id, user_agent)
        SELECT u, $2 FROM unnest($1::bigint[]) AS u
        RETURNING id, user_id""",
        ids,
        SESSION_AGENT,
    )
    issuer = TokenIssuer(services.jwt_secret, services.config.auth.access_ttl, Clock())
    targets: dict[int, list[int]] = {u: [] for u in ids}
    for r in await conn.fetch(
        """
        SELECT t.u AS user_id, p.id AS post_id
        FROM unnest($1::bigint[]) AS t(u)
        CROSS JOIN LATERAL (
            SELECT p.id FROM social.friendships f
            JOIN content.posts p ON p.author_id = f.user_id
            WHERE f.friend_id = t.u AND p.visibility IN ('public', 'friends')
            ORDER BY p.id DESC LIMIT $2) p""",
        ids,
        TARGETS_PER_USER,
    ):
        targets[r["user_id"]].append(r["post_id"])
    return [
        _User(
            r["user_id"],
            r["id"],
            f"Authorization: Bearer {issuer.issue_access(r['user_id'], r['id'])}\r\n",
            targets[r["user_id"]],
        )
        for r in sessions
    ]


async def _current_reactions(
    conn: asyncpg.Connection, users: list[_User]
) -> dict[tuple[int, int], str]:
    rows = await conn.fetch(
        """
        SELECT r.user_id, r.post_id, r.type FROM content.reactions r
        JOIN unnest($1::bigint[], $2::bigint[]) AS t(u, p) ON r.user_id = t.u AND r.post_id = t.p
        """,
        [u.user_id for u in users for _ in u.targets],
        [p for u in users for p in u.targets],
    )
    return {(r["user_id"], r["post_id"]): r["type"] for r in rows}


class _Write:
    __slots__ = ("due", "kind", "measured")

    def __init__(self, due: float, kind: int, measured: bool) -> None:
        self.due = due
        self.kind = kind
        self.measured = measured


@dataclass
class _LoadResult:
    latency: list[Recorder] = field(default_factory=lambda: [Recorder() for _ in KINDS])
    all_latency: Recorder = field(default_factory=Recorder)
    send_lag: Recorder = field(default_factory=Recorder)
    scheduled: list[int] = field(default_factory=lambda: [0 for _ in KINDS])  # measured only
    statuses: dict[int, int] = field(default_factory=dict)  # measured writes
    statuses_by_kind: list[dict[int, int]] = field(default_factory=lambda: [{} for _ in KINDS])
    socket_errors: int = 0
    protocol_errors: int = 0
    timeouts: int = 0
    outstanding: int = 0
    max_pending: int = 0
    connections_opened: int = 0
    logged: int = 0

    def errors(self) -> int:
        bad = sum(n for status, n in self.statuses.items() if not 200 <= status < 300)
        return bad + self.socket_errors + self.protocol_errors + self.timeouts

    def completed(self, write: _Write, status: int, now: float) -> None:
        self.outstanding -= 1
        if not 200 <= status < 300 and self.logged < 5:
            self.logged += 1
            log(f"{KINDS[write.kind]} write answered HTTP {status}")
        if write.measured:
            latency = now - write.due
            self.latency[write.kind].record(latency)
            self.all_latency.record(latency)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            by_kind = self.statuses_by_kind[write.kind]
            by_kind[status] = by_kind.get(status, 0) + 1

    def failed(self, write: _Write, protocol: bool) -> None:
        self.outstanding -= 1
        if protocol:
            self.protocol_errors += 1
        else:
            self.socket_errors += 1


class _Conn(asyncio.Protocol):
    """One keep-alive connection, one write in flight."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = ResponseParser()
        self.transport: asyncio.Transport | None = None
        self.write: _Write | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pool.free(self)

    def send(self, write: _Write, data: bytes) -> None:
        assert self.transport is not None
        self.write = write
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            done = self.parser.feed(data)
        except ProtocolError as exc:
            if self.write is not None:
                log(f"protocol error: {exc}")
                self.pool.result.failed(self.write, protocol=True)
                self.write = None
            assert self.transport is not None
            self.transport.abort()
            return
        if done is None:
            return
        write, self.write = self.write, None
        if write is not None:
            self.pool.result.completed(write, done[0], perf_counter())
        self.pool.free(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.lost(self)


class _Pool:
    """Keep-alive connections to one node. A write goes to an idle connection, else waits in
    ``pending`` (its latency still counts from its scheduled time) while another connection
    opens, up to ``limit``."""

    def __init__(self, host: str, port: int, limit: int, result: _LoadResult) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.result = result
        self.idle: list[_Conn] = []
        self.live: set[_Conn] = set()
        self.opening = 0
        self.pending: deque[tuple[_Write, bytes]] = deque()
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def prime(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for conn in await asyncio.gather(
            *(
                loop.create_connection(lambda: _Conn(self), self.host, self.port)
                for _ in range(count)
            )
        ):
            self.live.add(cast(_Conn, conn[1]))
        self.result.connections_opened += count

    def _open(self) -> None:
        self.opening += 1
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: _Conn(self), self.host, self.port))
        self._tasks.add(task)
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self.opening -= 1
        if task.cancelled() or task.exception() is not None:
            self.result.socket_errors += 1
            return
        self.live.add(task.result()[1])
        self.result.connections_opened += 1

    def submit(self, write: _Write, data: bytes) -> None:
        self.result.outstanding += 1
        if self.idle:
            self.idle.pop().send(write, data)
            return
        self.pending.append((write, data))
        self.result.max_pending = max(self.result.max_pending, len(self.pending))
        if len(self.live) + self.opening < self.limit:
            self._open()

    def free(self, conn: _Conn) -> None:
        if self.stopping:
            if conn.transport is not None:
                conn.transport.close()
        elif self.pending:
            conn.send(*self.pending.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        self.live.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.write is not None and not self.stopping:  # when stopping: counted as timeouts
            self.result.failed(conn.write, protocol=False)
            conn.write = None
        if self.pending and not self.stopping and len(self.live) + self.opening < self.limit:
            self._open()

    def close(self) -> None:
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for conn in list(self.live):
            if conn.transport is not None:
                conn.transport.abort()


class _Generator:
    """Builds the writes: who, what, on which post."""

    def __init__(self, users: list[_User], current: dict[tuple[int, int], str], seed: int) -> None:
        self.rng = random.Random(seed)
        self.users = users
        self.readers = [u for u in users if u.targets]
        if not self.readers:
            raise BenchError("no bench user has a friend with posts: seed with --friends > 0")
        self.current = current
        self.post_texts = [
            msgspec.json.encode(
                {
                    "text": filler(self.rng.randint(*POST_CHARS), seed=i),
                    "visibility": "public" if i % 5 < 2 else "friends",
                }
            )
            for i in range(200)
        ]
        self.comment_texts = [
            msgspec.json.encode({"text": filler(self.rng.randint(*COMMENT_CHARS), seed=1000 + i)})
            for i in range(200)
        ]
        self.reaction_bodies = {r: msgspec.json.encode({"type": r}) for r in REACTIONS}

    def request(self, kind: int, host: str) -> bytes:
        rng = self.rng
        if kind == 2:
            user = self.users[rng.randrange(len(self.users))]
            return _request("POST", "/api/v1/posts", host, user.auth, rng.choice(self.post_texts))
        user = self.readers[rng.randrange(len(self.readers))]
        post_id = user.targets[rng.randrange(len(user.targets))]
        if kind == 1:
            path = f"/api/v1/posts/{post_id}/comments"
            return _request("POST", path, host, user.auth, rng.choice(self.comment_texts))
        key = (user.user_id, post_id)
        before = self.current.get(key)
        reaction = rng.choice([r for r in REACTIONS if r != before])
        self.current[key] = reaction
        path = f"/api/v1/posts/{post_id}/reactions"
        return _request("PUT", path, host, user.auth, self.reaction_bodies[reaction])


def _request(method: str, path: str, host: str, auth: str, body: bytes) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Tap:
    """The bench's own exclusive, auto-delete queue bound with ``#`` to the exchange: receive
    time - ``occurred_at`` of every event the relay publishes (relay lag)."""

    class _Event(msgspec.Struct):
        type: str
        occurred_at: datetime

    def __init__(self) -> None:
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.window = (math.inf, math.inf)  # wall clock
        self.lag = Recorder()
        self.received = 0
        self.received_in_window = 0
        self.by_type: dict[str, int] = {}
        self.undecodable = 0
        self._decoder = msgspec.json.Decoder(self._Event)

    async def open(self, url: str, exchange: str) -> None:
        self.connection = await aiormq.connect(url)
        channel = await self.connection.channel()
        await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
        assert ok is not None and ok.queue
        await channel.queue_bind(ok.queue, exchange, routing_key="#")
        await channel.basic_consume(ok.queue, self._on_message, no_ack=True)

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        now = time.time()
        try:
            event = self._decoder.decode(message.body)
        except msgspec.DecodeError:
            self.undecodable += 1
            return
        self.received += 1
        occurred = event.occurred_at.timestamp()
        start, end = self.window
        if start <= occurred < end:
            self.lag.record(now - occurred)
            self.by_type[event.type] = self.by_type.get(event.type, 0) + 1
        if start <= now < end:
            self.received_in_window += 1

    async def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            try:
                await asyncio.wait_for(self.connection.close(), 5)
            except Exception:
                pass  # best effort


@dataclass
class _Snapshot:
    at: float  # perf_counter
    metrics: list[Samples]
    node_cpu: list[float]
    own_cpu: float
    system: _CpuMark


async def _snapshot(http: aiohttp.ClientSession, procs: list[ServerProcess]) -> _Snapshot:
    at = perf_counter()
    cpu = [p.cpu_seconds() for p in procs]
    own, system = own_cpu_seconds(), _cpu_mark()
    metrics = list(await asyncio.gather(*(_scrape(http, p.url) for p in procs)))
    return _Snapshot(at, metrics, cpu, own, system)


async def _sustained(
    services: Services,
    o: EventsOptions,
    env: dict[str, str],
    amqp_url: str | None,
    exchange: str,
) -> dict[str, Any]:
    conn = await asyncpg.connect(services.database_url)
    users: list[_User] = []
    try:
        users = await _users(conn, services, o.users)
        generator = _Generator(users, await _current_reactions(conn, users), seed=7)
        log(
            f"{len(users)} seeded users with sessions and tokens; "
            f"{sum(len(u.targets) for u in users)} (user, post) targets"
        )
        procs = await start_nodes(
            services, o.nodes, **env, AGORA_EVENTS_RELAY="on", AGORA_EVENTS_CONSUMERS="on"
        )
        tap = _Tap() if amqp_url else None
        try:
            if tap is not None:
                assert amqp_url is not None
                await tap.open(amqp_url, exchange)
            return await _drive(conn, procs, generator, o, tap)
        finally:
            if tap is not None:
                await tap.close()
            for p in procs:
                p.stop()
    finally:
        if users:
            await conn.execute(
                "DELETE FROM accounts.login_sessions WHERE id = ANY($1::bigint[])",
                [u.session_id for u in users],
            )
        await conn.close()


async def _drive(
    conn: asyncpg.Connection,
    procs: list[ServerProcess],
    generator: _Generator,
    o: EventsOptions,
    tap: _Tap | None,
) -> dict[str, Any]:
    result = _LoadResult()
    pools = []
    hosts = []
    for p in procs:
        host, port, _ = split_url(p.url)
        pools.append(_Pool(host, port, o.max_connections, result))
        hosts.append(f"{host}:{port}")
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            await asyncio.gather(*(pool.prime(o.connections) for pool in pools))
            weights = list(o.mix)
            start = perf_counter()
            wall0 = time.time() - start  # wall clock = wall0 + perf_counter()
            w_start, w_end = start + o.warmup, start + o.warmup + o.duration
            if tap is not None:
                tap.window = (wall0 + w_start, wall0 + w_end)
            log(
                f"writing {o.rate:g}/s (mix {'/'.join(map(str, o.mix))} reactions/comments/posts) "
                f"to {len(procs)} node(s): {o.warmup:g}s warm-up + {o.duration:g}s"
            )
            sender = asyncio.create_task(
                _schedule(pools, hosts, generator, weights, o.rate, start, w_start, w_end, result)
            )
            await asyncio.sleep(max(0.0, w_start - perf_counter()))
            before = await _snapshot(http, procs)
            await asyncio.sleep(max(0.0, w_end - perf_counter()))
            after = await _snapshot(http, procs)
            backlog_end = await conn.fetchval(
                "SELECT count(*) FROM events.outbox WHERE sent_at IS NULL"
            )
            await sender
            deadline = perf_counter() + GRACE
            while result.outstanding > 0 and perf_counter() < deadline:
                await asyncio.sleep(0.05)
            result.timeouts = max(0, result.outstanding)
        finally:
            for pool in pools:
                pool.close()
        drained, drain_s = await _drain_sustained(conn, http, procs)
        settled = await _snapshot(http, procs)
        rss = [p.rss_mib() for p in procs]
    report = _sustained_report(o, result, before, after, settled, tap, backlog_end, rss)
    return {
        **report,
        **await _outbox_figures(conn, (wall0 + w_start, wall0 + w_end), o.duration),
        "drained": drained,
        "drain_s": drain_s,
    }


async def _schedule(
    pools: list[_Pool],
    hosts: list[str],
    generator: _Generator,
    weights: list[int],
    rate: float,
    start: float,
    w_start: float,
    w_end: float,
    result: _LoadResult,
) -> None:
    """Write i is due at ``start + i / rate``; the bench issues what is due, then sleeps."""
    total = int((w_end - start) * rate)
    rng = random.Random(11)
    kinds = rng.choices(range(len(KINDS)), weights=weights, k=total)
    nodes = len(pools)
    i = 0
    while i < total:
        due_now = min(total, int((perf_counter() - start) * rate) + 1)
        while i < due_now:
            due = start + i / rate
            kind = kinds[i]
            measured = w_start <= due < w_end
            node = i % nodes
            data = generator.request(kind, hosts[node])
            if measured:
                result.scheduled[kind] += 1
                result.send_lag.record(perf_counter() - due)
            pools[node].submit(_Write(due, kind, measured), data)
            i += 1
        await asyncio.sleep(max(0.0, start + i / rate - perf_counter()))


async def _drain_sustained(
    conn: asyncpg.Connection, http: aiohttp.ClientSession, procs: list[ServerProcess]
) -> tuple[bool, float]:
    """After the last write: wait (up to DRAIN) until the outbox is relayed and the consumer's
    lag histogram has stopped growing (nothing more being handled) for a second."""
    started = perf_counter()
    deadline = started + DRAIN
    last, stable_since = -1.0, perf_counter()
    while perf_counter() < deadline:
        unsent = await conn.fetchval("SELECT count(*) FROM events.outbox WHERE sent_at IS NULL")
        handled = sum(
            m.get(("agora_event_lag_seconds_count", (("consumer", CONSUMER),)), 0.0)
            for m in await asyncio.gather(*(_scrape(http, p.url) for p in procs))
        )
        now = perf_counter()
        if handled != last:
            last, stable_since = handled, now
        if unsent == 0 and now - stable_since >= 1.0:
            return True, round(now - started, 2)
        await asyncio.sleep(POLL)
    return False, round(perf_counter() - started, 2)


def _sustained_report(
    o: EventsOptions,
    r: _LoadResult,
    before: _Snapshot,
    after: _Snapshot,
    settled: _Snapshot,
    tap: _Tap | None,
    backlog_end: int,
    rss: list[float],
) -> dict[str, Any]:
    seconds = after.at - before.at
    consumed = _delta(before.metrics, after.metrics, "agora_events_consumed_total", CONSUMER)
    published = _delta(before.metrics, after.metrics, "agora_events_published_total", None)
    buckets = _lag_buckets(before.metrics, settled.metrics)
    lag = _histogram_summary(buckets)
    writes = sum(r.scheduled)
    p99 = lag["p99"] if lag else None
    met = (
        None
        if p99 is None or o.rate < GOAL["rate"]
        else p99 < GOAL["consumer_lag_p99_ms_max"]
        and r.errors() == 0
        and len(r.all_latency) >= 0.99 * writes
    )
    node_cpu = [
        round(100 * (a - b) / seconds, 1)
        for a, b in zip(after.node_cpu, before.node_cpu, strict=True)
    ]
    client_cpu = round(100 * (after.own_cpu - before.own_cpu) / seconds, 1)
    return {
        "writes": writes,
        "writes_per_s": per_second(writes, o.duration),
        "completed": len(r.all_latency),
        "by_kind": {
            kind: {
                "writes": r.scheduled[k],
                "latency_ms": r.latency[k].summary_ms(),
                "status": {str(s): n for s, n in sorted(r.statuses_by_kind[k].items())},
            }
            for k, kind in enumerate(KINDS)
        },
        "latency_ms": r.all_latency.summary_ms(),
        "errors": r.errors(),
        "status": {str(s): n for s, n in sorted(r.statuses.items())},
        "socket_errors": r.socket_errors,
        "protocol_errors": r.protocol_errors,
        "timeouts": r.timeouts,
        "send_lag_ms": r.send_lag.summary_ms(),
        "max_pending": r.max_pending,
        "connections_opened": r.connections_opened,
        "relay_lag_ms": (
            {"events": len(tap.lag), **_summary(tap.lag)} if tap is not None else None
        ),
        "broker_events_per_s": (
            per_second(tap.received_in_window, o.duration) if tap is not None else None
        ),
        "broker_events_by_type": dict(sorted(tap.by_type.items())) if tap is not None else None,
        "events_published_per_s": per_second(round(sum(published.values())), seconds),
        "consumer_lag_ms": lag,
        "events_consumed_per_s": (
            per_second(round(sum(consumed.values())), seconds) if consumed else None
        ),
        "events_consumed_by_type": (
            {t: round(n) for t, n in sorted(consumed.items())} if consumed else None
        ),
        "outbox_backlog_at_end": backlog_end,
        "outbox_backlog_metric_at_end": [
            m.get(("agora_outbox_backlog", ()), None) for m in after.metrics
        ],
        "node_cpu_pct": node_cpu,
        "node_rss_mib": rss,
        "client_cpu_pct": client_cpu,
        "cpu_pct": _cpu_figures(before.system, after.system, sum(node_cpu) + client_cpu),
        "node_db_time": _db_time(before.metrics, after.metrics, seconds),
        "met": met,
    }


async def _outbox_figures(
    conn: asyncpg.Connection, window: tuple[float, float], duration: float
) -> dict[str, Any]:
    """From the outbox itself, over the events that occurred inside the window: how many of each
    type, and ``sent_at - occurred_at`` (the relay's side of the lag, either transport)."""
    start, end = (datetime.fromtimestamp(t).astimezone() for t in window)
    rows = await conn.fetch(
        """
        SELECT type, count(*) AS n FROM events.outbox
        WHERE occurred_at >= $1 AND occurred_at < $2 GROUP BY type ORDER BY type""",
        start,
        end,
    )
    lag = await conn.fetchrow(
        """
        SELECT count(sent_at) AS n,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY sent_at - occurred_at) AS p50,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY sent_at - occurred_at) AS p99,
               max(sent_at - occurred_at) AS top
        FROM events.outbox WHERE occurred_at >= $1 AND occurred_at < $2""",
        start,
        end,
    )
    total = sum(r["n"] for r in rows)

    def ms(value: Any) -> float | None:
        return None if value is None else round(value.total_seconds() * 1000, 3)

    return {
        "events_committed": total,
        "events_committed_per_s": per_second(total, duration),
        "events_committed_by_type": {r["type"]: r["n"] for r in rows},
        "outbox_sent_lag_ms": {
            "events": lag["n"],
            "p50": ms(lag["p50"]),
            "p99": ms(lag["p99"]),
            "max": ms(lag["top"]),
        },
    }


# -- phase 2: throughput ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    count: int
    positions: tuple[int, int]
    ids: tuple[int, int]
    distinct_pairs: int
    insert_s: float


INSERT_BACKLOG = """
WITH drawn AS (
    SELECT id, author_id FROM content.posts
    WHERE visibility <> 'private' AND author_id IN (SELECT id FROM accounts.users WHERE {users})
    ORDER BY random() LIMIT $2
), pairs AS (
    SELECT row_number() OVER () - 1 AS i, d.id AS post_id, d.author_id, f.friend_id AS user_id
    FROM drawn d JOIN social.friendships f ON f.user_id = d.author_id
), n AS (SELECT count(*) AS n FROM pairs),
ins AS (
    INSERT INTO events.outbox (type, aggregate, aggregate_id, actor_id, payload)
    SELECT 'reaction.set', 'reactions', p.post_id, p.user_id,
           jsonb_build_object('post_id', p.post_id, 'post_author_id', p.author_id,
                              'user_id', p.user_id,
                              'reaction', ({reactions})[1 + floor(random() * 10)::int],
                              'previous', NULL)
    FROM generate_series(0, $1 - 1) g JOIN pairs p ON p.i = g % (SELECT n FROM n)
    RETURNING position, id
)
SELECT count(*) AS count, min(position) AS lo, max(position) AS hi, min(id) AS lo_id,
       max(id) AS hi_id, (SELECT n FROM n) AS pairs
FROM ins
"""


async def _insert_backlog(conn: asyncpg.Connection, count: int) -> _Batch:
    """``count`` ``reaction.set`` events in one statement: posts drawn at random (not private)
    with their authors, each reacted to by a friend of the author, no ``previous``. Pairs repeat
    only when the seeded data has fewer than ``count`` (post, friend of the author) pairs."""
    users = await conn.fetchval(f"SELECT count(*) FROM accounts.users WHERE {BENCH_USERS}")
    friends = await conn.fetchval(
        "SELECT count(*) FROM social.friendships WHERE user_id IN "
        f"(SELECT id FROM accounts.users WHERE {BENCH_USERS})"
    )
    if not users or not friends:
        raise BenchError("no seeded users with friends: run `python -m bench seed`")
    posts = math.ceil(1.5 * count / max(1.0, friends / users)) + 10
    started = perf_counter()
    row = await conn.fetchrow(
        INSERT_BACKLOG.format(users=BENCH_USERS, reactions=REACTION_MIX), count, posts
    )
    assert row is not None
    if not row["count"]:
        raise BenchError("no (post, friend of the author) pair to make reaction.set events of")
    return _Batch(
        row["count"],
        (row["lo"], row["hi"]),
        (row["lo_id"], row["hi_id"]),
        row["pairs"],
        round(perf_counter() - started, 2),
    )


async def _throughput(
    services: Services,
    o: EventsOptions,
    env: dict[str, str],
    amqp_url: str | None,
    exchange: str,
) -> dict[str, Any]:
    conn = await asyncpg.connect(services.database_url)
    try:
        unsent_before = await conn.fetchval(
            "SELECT count(*) FROM events.outbox WHERE sent_at IS NULL"
        )
        if unsent_before:
            log(f"{unsent_before} events were already waiting in the outbox (relayed first)")
        first = await _insert_backlog(conn, o.backlog)
        log(
            f"{first.count} reaction.set events inserted in {first.insert_s}s "
            f"({first.distinct_pairs} distinct pairs); relay alone"
        )
        relay_alone = await _drain(services, conn, env, first, relay=True, consume=False)
        bound = await _consumer_bound(conn, amqp_url, exchange, first)
        consumer_alone = None
        if bound:
            log("the consumer alone, on what the relay queued")
            consumer_alone = await _drain(services, conn, env, first, relay=False, consume=True)
        else:
            log(f"no {CONSUMER} consumer is bound: consumer figures are null")
        cleaned = await _cleanup(conn, first)
        second = await _insert_backlog(conn, o.backlog)
        log(f"{second.count} more inserted in {second.insert_s}s; relay and consumer together")
        both = await _drain(services, conn, env, second, relay=True, consume=bound)
        cleaned += await _cleanup(conn, second)
    finally:
        await conn.close()
    rate = both["consumer"]["events_per_s"] if both.get("consumer") else None
    return {
        "events": o.backlog,
        "type": "reaction.set",
        "distinct_pairs": first.distinct_pairs,
        "insert_s": [first.insert_s, second.insert_s],
        "unsent_before": unsent_before,
        "consumer_bound": bound,
        "relay_alone": relay_alone,
        "consumer_alone": consumer_alone,
        "relay_and_consumer": both,
        "outbox_rows_removed": cleaned,
        "met": None if rate is None else rate >= GOAL["events_per_s_min"],
    }


async def _drain(
    services: Services,
    conn: asyncpg.Connection,
    env: dict[str, str],
    batch: _Batch,
    *,
    relay: bool,
    consume: bool,
) -> dict[str, Any]:
    """Start one node (relay and consumers on or off) and wait until the batch is relayed
    and/or handled by the consumer, or nothing moved for STALL seconds."""
    lo, hi = batch.positions
    lo_id, hi_id = batch.ids
    spawned = perf_counter()
    mark = _cpu_mark()
    proc = (
        await start_nodes(
            services,
            1,
            **env,
            AGORA_EVENTS_RELAY="on" if relay else "off",
            AGORA_EVENTS_CONSUMERS="on" if consume else "off",
        )
    )[0]
    try:
        ready_s = perf_counter() - spawned
        state: tuple[int, int] = (-1, -1)
        moved = perf_counter()
        complete = False
        while True:
            row = await conn.fetchrow(
                """
                SELECT (SELECT count(*) FROM events.outbox
                        WHERE sent_at IS NULL AND position BETWEEN $1 AND $2) AS unsent,
                       (SELECT count(*) FROM events.processed
                        WHERE consumer = $3 AND event_id BETWEEN $4 AND $5) AS handled""",
                lo,
                hi,
                CONSUMER,
                lo_id,
                hi_id,
            )
            assert row is not None
            now = perf_counter()
            if (row["unsent"], row["handled"]) != state:
                state, moved = (row["unsent"], row["handled"]), now
            if (not relay or row["unsent"] == 0) and (not consume or row["handled"] >= batch.count):
                complete = True
                break
            if now - moved > STALL:
                log(
                    f"nothing moved for {STALL:g}s: unsent {row['unsent']}, "
                    f"handled {row['handled']}"
                )
                break
            await asyncio.sleep(POLL)
        done = perf_counter()
        cpu = proc.cpu_seconds()
        system = _cpu_mark()
        rss = proc.rss_mib()
    finally:
        proc.stop()
    out: dict[str, Any] = {
        "complete": complete,
        "node_ready_s": round(ready_s, 2),
        "wall_s": round(done - spawned, 2),
        "node_cpu_pct": round(100 * cpu / (done - spawned), 1),
        "node_rss_mib": rss,
        "cpu_pct": _cpu_figures(mark, system, 100 * cpu / (done - spawned)),
    }
    if relay:
        out["relay"] = _rate(
            await conn.fetchrow(
                f"""
                SELECT count(sent_at) AS n, min(sent_at) AS first, max(sent_at) AS last,
                       {_DECILES.format(col="sent_at")}
                FROM events.outbox WHERE position BETWEEN $1 AND $2""",
                lo,
                hi,
            )
        )
    if consume:
        out["consumer"] = _rate(
            await conn.fetchrow(
                f"""
                SELECT count(*) AS n, min(processed_at) AS first, max(processed_at) AS last,
                       {_DECILES.format(col="processed_at")}
                FROM events.processed WHERE consumer = $1 AND event_id BETWEEN $2 AND $3""",
                CONSUMER,
                lo_id,
                hi_id,
            )
        )
    if relay and consume and out["relay"]["first"] is not None and out["consumer"]["last"]:
        span = (out["consumer"]["last"] - out["relay"]["first"]).total_seconds()
        out["end_to_end_s"] = round(span, 3)
        out["end_to_end_events_per_s"] = per_second(out["consumer"]["events"], span)
    for part in ("relay", "consumer"):
        if part in out:
            out[part].pop("first")
            out[part].pop("last")
    log(
        "done: "
        + ", ".join(
            f"{part} {out[part]['events']} events, {out[part]['events_per_s']}/s"
            for part in ("relay", "consumer")
            if part in out
        )
    )
    return out


_DECILES = (
    "percentile_disc(0.1) WITHIN GROUP (ORDER BY {col}) AS p10, "
    "percentile_disc(0.9) WITHIN GROUP (ORDER BY {col}) AS p90"
)


def _rate(row: asyncpg.Record | None) -> dict[str, Any]:
    """Events per second between the 10th and 90th percentile of the rows' timestamps (the
    steady rate: no node start-up, no first or last batch), and over the whole span."""
    assert row is not None
    n, first, last, p10, p90 = row["n"], row["first"], row["last"], row["p10"], row["p90"]
    steady = (p90 - p10).total_seconds() if p10 is not None else 0.0
    span = (last - first).total_seconds() if first is not None else 0.0
    return {
        "events": n,
        "events_per_s": round(0.8 * n / steady, 1) if steady > 0 else None,
        "span_s": round(span, 3),
        "events_per_s_span": per_second(n, span) if span > 0 else None,
        "first": first,
        "last": last,
    }


async def _consumer_bound(
    conn: asyncpg.Connection, amqp_url: str | None, exchange: str, batch: _Batch
) -> bool:
    """Whether the relay routed the batch to the consumer's queue (i.e. the node has it)."""
    if amqp_url is None:
        queued = await conn.fetchval(
            "SELECT count(*) FROM events.deliveries "
            "WHERE consumer = $1 AND event_id BETWEEN $2 AND $3",
            CONSUMER,
            *batch.ids,
        )
        return bool(queued)
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        ok = await channel.queue_declare(f"{exchange}.{CONSUMER}", passive=True)
        return ok is not None and (ok.message_count or 0) > 0
    except ChannelNotFoundEntity:
        return False
    finally:
        await connection.close()


async def _cleanup(conn: asyncpg.Connection, batch: _Batch) -> int:
    """Remove the synthetic events, what the consumer recorded as handled, what still waits in
    the in-process queues. (What the consumer made of them, notifications, stays: bench data.)"""
    lo, hi = batch.positions
    async with conn.transaction():
        await conn.execute(
            """
            DELETE FROM events.processed WHERE event_id IN (
                SELECT id FROM events.outbox WHERE position BETWEEN $1 AND $2)""",
            lo,
            hi,
        )
        await conn.execute(
            "DELETE FROM events.deliveries WHERE event_id BETWEEN $1 AND $2", *batch.ids
        )
        status = await conn.execute(
            "DELETE FROM events.outbox WHERE position BETWEEN $1 AND $2", lo, hi
        )
    return int(status.split()[-1])


# -- RabbitMQ -----------------------------------------------------------------------------------


async def _check_broker(url: str) -> None:
    try:
        connection = await asyncio.wait_for(aiormq.connect(url), 10)
    except Exception as exc:
        raise BenchError(f"--amqp: RabbitMQ at {_redact(url)} is not reachable: {exc}") from exc
    await connection.close()


async def _delete_exchange(services: Services, url: str, exchange: str) -> None:
    """The run's exchange and the queues named after it (every consumer this database has
    seen, and the notifications consumer's)."""
    names = {CONSUMER}
    try:
        conn = await asyncpg.connect(services.database_url)
        try:
            names |= {
                r["consumer"]
                for r in await conn.fetch("SELECT DISTINCT consumer FROM events.processed")
            }
        finally:
            await conn.close()
        connection = await aiormq.connect(url)
        try:
            channel = await connection.channel()
            for name in sorted(names):
                await channel.queue_delete(f"{exchange}.{name}")
                await channel.queue_delete(f"{exchange}.{name}.dead")
            await channel.exchange_delete(exchange)
        finally:
            await connection.close()
    except Exception as exc:
        log(f"could not delete the exchange {exchange} and its queues: {exc}")


def _redact(url: str) -> str:
    from agora.config import redact

    return redact(url)


# -- /metrics and /proc -------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
SERVICES = {"postgres": "postgres", "beam.smp": "rabbitmq", "redis-server": "redis"}  # by comm


async def _scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    """A node's /metrics as ``{(sample name, sorted labels): value}``; empty if unreachable."""
    try:
        async with http.get(f"{url}/metrics") as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        log(f"could not scrape {url}/metrics: {exc}")
        return {}
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(
    before: list[Samples], after: list[Samples], name: str, consumer: str | None
) -> dict[str, float]:
    """Increase of a counter per ``type`` label, summed over the nodes (only the given
    consumer's series when ``consumer``)."""
    out: dict[str, float] = {}
    for b, a in zip(before, after, strict=True):
        for (sample, labels), value in a.items():
            if sample != name:
                continue
            tags = dict(labels)
            if consumer is not None and tags.get("consumer") != consumer:
                continue
            kind = tags.get("type", "")
            out[kind] = out.get(kind, 0.0) + value - b.get((sample, labels), 0.0)
    return {k: v for k, v in out.items() if v > 0}


def _db_time(before: list[Samples], after: list[Samples], seconds: float) -> dict[str, Any]:
    """The nodes' ``agora_db_statement_duration_seconds`` over the window, the names that took
    the most time first: calls per second, mean ms, and ``busy`` (seconds per second: how many
    connections it kept busy on average). A ``tx:`` name is a whole transaction, from asking
    the pool for a connection to the commit."""
    sums: dict[str, list[float]] = {}
    for b, a in zip(before, after, strict=True):
        for (sample, labels), value in a.items():
            if sample.startswith("agora_db_statement_duration_seconds_"):
                kind = sample.rsplit("_", 1)[1]
                if kind in ("sum", "count"):
                    name = dict(labels).get("name", "")
                    slot = sums.setdefault(name, [0.0, 0.0])
                    slot[kind == "count"] += value - b.get((sample, labels), 0.0)
    top = sorted(sums.items(), key=lambda item: -item[1][0])[:DB_TOP]
    return {
        name: {
            "per_s": round(count / seconds, 1),
            "mean_ms": round(1000 * total / count, 2) if count else None,
            "busy": round(total / seconds, 2),
        }
        for name, (total, count) in top
        if count > 0
    }


def _lag_buckets(before: list[Samples], after: list[Samples]) -> list[tuple[float, float]]:
    """The consumer's lag histogram between two scrapes: [(upper bound s, cumulative count)],
    summed over the nodes; empty when no node has the series."""
    sums: dict[float, float] = {}
    for b, a in zip(before, after, strict=True):
        for (sample, labels), value in a.items():
            tags = dict(labels)
            if sample != "agora_event_lag_seconds_bucket" or tags.get("consumer") != CONSUMER:
                continue
            le = float(tags["le"])
            sums[le] = sums.get(le, 0.0) + value - b.get((sample, labels), 0.0)
    return sorted(sums.items())


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, as Prometheus' ``histogram_quantile``: the
    bucket holding rank ``q * count``, linearly interpolated inside it (the first bucket starts
    at 0); in the ``+Inf`` bucket, the highest finite bound. None when it is empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _histogram_summary(buckets: list[tuple[float, float]]) -> dict[str, Any] | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    finite = [c for le, c in buckets if not math.isinf(le)]
    out: dict[str, Any] = {"events": round(buckets[-1][1])}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        value = histogram_quantile(q, buckets)
        out[name] = None if value is None else round(value * 1000, 1)
    out["over_highest_bucket"] = round(buckets[-1][1] - (finite[-1] if finite else 0))
    out["interpolated"] = True
    return out


def _summary(recorder: Recorder) -> dict[str, float | None]:
    s = recorder.summary_ms()
    return {"p50": s["p50"], "p99": s["p99"], "max": s["max"]}


@dataclass(frozen=True)
class _CpuMark:
    at: float  # perf_counter
    busy: int  # jiffies of every core, from /proc/stat
    total: int
    services: dict[str, float]  # CPU seconds per service (by command name)


def _cpu_mark() -> _CpuMark:
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    idle = fields[3] + fields[4]
    return _CpuMark(perf_counter(), sum(fields) - idle, sum(fields), _cpu_by_comm(SERVICES))


def _cpu_figures(before: _CpuMark, after: _CpuMark, known_pct: float) -> dict[str, float | None]:
    """CPU between two marks in % of one core: PostgreSQL, RabbitMQ and Redis (every process of
    that name), the whole machine, and what is left of it once those, the nodes and the bench
    (``known_pct``) are taken out: other work on the box."""
    seconds = after.at - before.at
    out: dict[str, float | None] = {
        label: round(100 * (after.services[comm] - before.services[comm]) / seconds, 1)
        for comm, label in SERVICES.items()
    }
    services = sum(v or 0.0 for v in out.values())
    total = after.total - before.total
    cores = os.cpu_count() or 1
    machine = 100 * cores * (after.busy - before.busy) / total if total > 0 else None
    out["machine"] = None if machine is None else round(machine, 1)
    out["everything_else"] = (
        None if machine is None else round(max(0.0, machine - known_pct - services), 1)
    )
    out["cores"] = cores
    return out


def _cpu_by_comm(names: Iterable[str]) -> dict[str, float]:
    """CPU seconds used so far by the processes with these command names (a process that ends
    between two readings takes its time with it: PostgreSQL backends of closed connections)."""
    out = dict.fromkeys(set(names), 0.0)
    for (_, _, comm), seconds in cpu_by_process(out).items():
        out[comm] += seconds
    return out
