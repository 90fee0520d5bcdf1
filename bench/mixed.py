"""``mixed``: many connected users doing everything at once, open loop (issue 15).

Set-up (not measured): ``users`` accounts made in SQL with a login session and a minted token
each (``bench.fixtures``); friendships on a ring written straight into ``social.friendships``
(both directions, as the node stores them; nothing else holds the graph: the feed, fan-out and
presence read that table, and the Redis feed sets of these brand-new users do not exist yet, so
they are built from it); one group conversation per user with the next ``group_size - 1`` users
on the ring (``POST /api/v1/conversations`` with a title, so even a pair is a group); and
``posts_per_user`` posts each through ``POST /api/v1/posts`` (half public, half friends-only), so
the posts are made exactly as the node makes them (counters, fan-out, events, search columns).
Then every user opens one WebSocket to its node (user ``i`` on node ``i % nodes``, where its
HTTP requests go too), read for the whole run: frames are counted by type, ``ack`` and
``error`` frames settle chat sends.

The run: actions arrive as a Poisson process at ``rate`` per second in all (exponential gaps);
action ``i`` is due at its scheduled time whatever happened to earlier ones and runs as its own
task, and its latency is measured from that scheduled time (no coordinated omission). Each picks
a random user and a kind by the mix: the feed, a friend's profile, a post, a reaction or a
comment on a target post, the first page of notifications, or a chat ``send`` on the user's
socket to one of its groups (until the ``ack``). Targets are skewed to the newest: with
probability ``hot`` one of the 20 most recent public posts, else one of the recent posts of the
acting user's friends, so a few posts take many writes at once.

Measured over the window after the warm-up: per kind count, errors (by HTTP status or error-frame
code, a few bodies), p50/p99/max; node, PostgreSQL and bench CPU; how late the bench's own event
loop ran a 5 ms timer (a saturated client must not pass for a slow server); frames by type and
sockets lost. ``rounds`` repeats a rate on the same set-up; ``sweep`` runs one round per rate and
interpolates where the worst p99 crosses the threshold.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import aiohttp
import asyncpg
import msgspec

from agora.clock import Clock
from agora.services.tokens import TokenIssuer
from agora.storage.migrations import migrate
from bench.events import _cpu_figures, _cpu_mark
from bench.fixtures import Account, create_accounts, delete_accounts, run_prefix
from bench.nodes import start_nodes
from bench.procs import (
    BenchError,
    ServerProcess,
    cpu_by_process,
    log,
    own_cpu_seconds,
    raise_nofile_limit,
)
from bench.rawws import RawWebSocket, connect_all
from bench.services import Services
from bench.stats import Recorder, per_second
from bench.wsclient import Member, SendFrame, encode

KINDS = ("feed", "profile", "post", "react", "comment", "notifications", "chat")
DEFAULT_MIX = "feed=35,profile=10,post=5,react=15,comment=8,notifications=7,chat=20"
REACTIONS = ("like", "love", "haha", "wow", "sad", "angry")
HOT_POSTS = 20  # the most recent public posts the hot picks choose among
RECENT_PER_AUTHOR = 10  # an author's recent posts kept as targets for its friends
SAMPLES = 5  # error bodies kept per kind
SAMPLE_CHARS = 300
LAG_TICK = 0.005  # the loop-lag probe's sleep
LAG_WARN_MS = 20.0
SETUP_CONCURRENCY = 16  # REST requests at once while setting up
HTTP_CONNECTIONS = 1000  # the client's pool (keep-alive), over all nodes
TEXT = "a message from the mixed bench"


@dataclass(frozen=True)
class MixedOptions:
    nodes: int
    users: int
    friends: int
    group_size: int
    posts_per_user: int
    rate: float
    duration: float
    warmup: float
    mix: dict[str, float]
    hot: float
    timeout: float
    rounds: int
    sweep: list[float] | None
    threshold_ms: float
    seed: int | None


def parse_mix(text: str) -> dict[str, float]:
    """``"feed=35,chat=20"`` -> a weight per kind (kinds not named get 0)."""
    mix = dict.fromkeys(KINDS, 0.0)
    try:
        for part in text.split(","):
            name, _, value = part.partition("=")
            name = name.strip()
            if name not in mix:
                raise BenchError(f"--mix: unknown kind {name!r} (kinds: {', '.join(KINDS)})")
            mix[name] = float(value)
    except ValueError as exc:
        raise BenchError(f"--mix must be KIND=WEIGHT,... ({exc})") from exc
    if min(mix.values()) < 0 or not math.isfinite(sum(mix.values())) or sum(mix.values()) <= 0:
        raise BenchError("--mix weights must be finite, >= 0, and not all 0")
    return mix


def parse_sweep(text: str) -> list[float]:
    """``"100:900:100"`` (from, to inclusive, step) or ``"100,300,500"`` -> rates, ascending."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError("need FROM <= TO and STEP > 0")
            count = math.floor((stop - start) / step + 1e-9) + 1
            rates = [round(start + i * step, 6) for i in range(count)]
        else:
            rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BenchError(f"--sweep must be FROM:TO:STEP or a comma list of rates ({exc})") from exc
    if not rates or min(rates) <= 0:
        raise BenchError("--sweep needs rates > 0")
    return sorted(set(rates))


def crossing(
    steps: list[tuple[float, float | None]], threshold_ms: float
) -> tuple[float | None, str | None]:
    """Where the worst p99 crosses ``threshold_ms`` over ``[(rate, worst p99 ms)]`` (ascending
    rates): linearly interpolated between the last step under it and the first at or over it
    (a step without a p99 counts as over). ``(None, reason)`` when it is never crossed or
    already crossed at the first step."""
    for i, (rate, p99) in enumerate(steps):
        if p99 is None or p99 >= threshold_ms:
            if i == 0:
                return None, f"over the threshold already at the first step ({rate:g}/s)"
            low_rate, low_p99 = steps[i - 1]
            assert low_p99 is not None
            if p99 is None or p99 == low_p99:
                return rate, None
            at = low_rate + (threshold_ms - low_p99) * (rate - low_rate) / (p99 - low_p99)
            return round(at, 1), None
    return None, f"never crossed up to {steps[-1][0]:g}/s" if steps else "no steps"


# -- the users and their targets ----------------------------------------------------------------


@dataclass
class _User:
    index: int
    user_id: int
    session_id: int
    url: str  # its node
    headers: dict[str, str]
    friends: list[int] = field(default_factory=list)  # indexes
    groups: list[str] = field(default_factory=list)  # conversation ids it is in
    ws: RawWebSocket | None = None


class _Targets:
    """Posts to react to and comment on: the newest public ones, and each author's recent ones."""

    def __init__(self, users: int) -> None:
        self.hot: deque[str] = deque(maxlen=HOT_POSTS)
        self.by_author: list[deque[str]] = [deque(maxlen=RECENT_PER_AUTHOR) for _ in range(users)]

    def add(self, author: int, post_id: str, public: bool) -> None:
        self.by_author[author].append(post_id)
        if public:
            self.hot.append(post_id)

    def pick(self, rng: random.Random, user: _User, hot: float) -> str | None:
        """With probability ``hot`` one of the newest public posts, else uniformly one of the
        recent posts of the user's friends (each visible to the user); the other when one is
        empty."""
        if self.hot and rng.random() < hot:
            return self.hot[rng.randrange(len(self.hot))]
        recent = [self.by_author[f] for f in user.friends]
        total = sum(map(len, recent))
        if total == 0:
            return self.hot[rng.randrange(len(self.hot))] if self.hot else None
        n = rng.randrange(total)
        for posts in recent:
            if n < len(posts):
                return posts[n]
            n -= len(posts)
        raise AssertionError("unreachable")


# -- what one round measures ---------------------------------------------------------------------


class _Failure(Exception):
    """An action that did not succeed: ``key`` counts it (HTTP status, error-frame code, ...)."""

    def __init__(self, key: str, body: bytes | str = b"") -> None:
        super().__init__(key)
        self.key = key
        self.body = body if isinstance(body, str) else body[:SAMPLE_CHARS].decode(errors="replace")


@dataclass
class _KindStats:
    latency: Recorder = field(default_factory=Recorder)
    count: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, str]] = field(default_factory=list)

    def figures(self, duration: float) -> dict[str, Any]:
        s = self.latency.summary_ms()
        errors = sum(self.errors.values())
        return {
            "count": self.count,
            "per_s": per_second(self.count, duration),
            "errors": errors,
            "errors_by": dict(self.errors.most_common()),
            "error_samples": self.samples,
            "p50_ms": s["p50"],
            "p99_ms": s["p99"],
            "max_ms": s["max"],
            "mean_ms": s["mean"],
        }


@dataclass
class _Round:
    rate: float
    kinds: dict[str, _KindStats] = field(default_factory=lambda: {k: _KindStats() for k in KINDS})
    warmup_actions: int = 0
    warmup_errors: Counter[str] = field(default_factory=Counter)
    schedule_lag: Recorder = field(default_factory=Recorder)
    loop_lag: Recorder = field(default_factory=Recorder)


class _Frame(msgspec.Struct):
    """Any server frame; only what the bench reads (unknown fields are skipped)."""

    type: str
    client_id: str | None = None
    ref: str | None = None
    code: str | None = None


_decode_frame = msgspec.json.Decoder(_Frame).decode


class _Id(msgspec.Struct):
    id: str


_decode_id = msgspec.json.Decoder(_Id).decode


async def vacuum(database_url: str) -> float:
    """``VACUUM ANALYZE`` the database before a round (seconds taken, not measured): with
    autovacuum off (as on the development machine) the dead rows of earlier rounds and runs
    (deleted deliveries, cleaned-up users) would pile up and slow each round more than the
    last; a production server's autovacuum keeps up with them."""
    at = perf_counter()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()
    return round(perf_counter() - at, 2)


def _summary(recorder: Recorder) -> dict[str, float | None]:
    s = recorder.summary_ms()
    return {"p50": s["p50"], "p99": s["p99"], "max": s["max"]}


def _postgres_cpu() -> dict[tuple[int, str, str], float]:
    """CPU seconds so far of every process named ``postgres`` on the machine."""
    return cpu_by_process(["postgres"])


def postgres_cpu_between(
    before: dict[tuple[int, str, str], float], after: dict[tuple[int, str, str], float]
) -> float:
    """CPU seconds PostgreSQL used between two readings: every process alive at the second, less
    what it had used at the first (a backend that started in between counts whole; one that
    ended in between takes its time with it)."""
    return sum(max(0.0, v - before.get(k, 0.0)) for k, v in after.items())


# -- the run ------------------------------------------------------------------------------------


class _Mixed:
    def __init__(
        self, services: Services, options: MixedOptions, procs: list[ServerProcess]
    ) -> None:
        self.services = services
        self.o = options
        self.procs = procs
        self.rng = random.Random(options.seed)
        self.users: list[_User] = []
        self.targets = _Targets(options.users)
        self.http: aiohttp.ClientSession | None = None
        self.frames: Counter[str] = Counter()
        self.sockets_lost = 0
        self.unmatched_error_frames = 0
        self.pending: dict[str, tuple[asyncio.Future[None], int]] = {}
        self.run_id = secrets.token_hex(3)
        self.seq = itertools.count()
        self.round: _Round | None = None
        self.window = (math.inf, math.inf)
        self.kinds = [k for k in KINDS if options.mix[k] > 0]
        weights = list(itertools.accumulate(options.mix[k] for k in self.kinds))
        self.cumulative = [w / weights[-1] for w in weights]
        self.actions: dict[str, Callable[[_User], Awaitable[None]]] = {
            "feed": self._feed,
            "profile": self._profile,
            "post": self._post,
            "react": self._react,
            "comment": self._comment,
            "notifications": self._notifications,
            "chat": self._chat,
        }
        self.minted_at = 0.0

    # -- HTTP ---------------------------------------------------------------------------------

    async def _request(self, method: str, url: str, headers: dict[str, str], body: Any) -> bytes:
        assert self.http is not None
        data = None if body is None else msgspec.json.encode(body)
        async with self.http.request(method, url, headers=headers, data=data) as resp:
            answer = await resp.read()
        if not 200 <= resp.status < 300:
            raise _Failure(str(resp.status), answer)
        return answer

    def mint(self) -> None:
        """(Re)mint every user's access token (the sockets keep theirs)."""
        issuer = TokenIssuer(
            self.services.jwt_secret, self.services.config.auth.access_ttl, Clock()
        )
        for user in self.users:
            token = issuer.issue_access(user.user_id, user.session_id)
            user.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.minted_at = time.monotonic()

    # -- set-up -------------------------------------------------------------------------------

    async def setup(self, accounts: list[Account]) -> dict[str, Any]:
        o, timings = self.o, {}
        at = perf_counter()
        n = len(accounts)
        self.users = [
            _User(i, a.user_id, a.session_id, self.procs[i % len(self.procs)].url, {})
            for i, a in enumerate(accounts)
        ]
        self.mint()
        half = o.friends // 2
        pairs: set[tuple[int, int]] = set()
        for i in range(n):
            for d in range(1, half + 1):
                j = (i + d) % n
                if j != i:
                    pairs.add((i, j))
                    pairs.add((j, i))
        for i, j in sorted(pairs):
            self.users[i].friends.append(j)
        conn = await asyncpg.connect(self.services.database_url)
        try:
            await conn.copy_records_to_table(
                "friendships",
                schema_name="social",
                records=[(self.users[i].user_id, self.users[j].user_id) for i, j in sorted(pairs)],
                columns=["user_id", "friend_id"],
            )
        finally:
            await conn.close()
        timings["friendships"] = round(perf_counter() - at, 2)
        log(f"{len(pairs)} friendship rows (ring, {half} on each side) written")

        at = perf_counter()
        groups = await self._gather_setup(
            [self._create_group(u) for u in self.users], "POST /api/v1/conversations"
        )
        for owner, conversation_id in zip(self.users, groups, strict=True):
            for k in range(o.group_size):
                self.users[(owner.index + k) % n].groups.append(conversation_id)
        timings["groups"] = round(perf_counter() - at, 2)
        log(f"{len(groups)} group conversations of {o.group_size} created")

        at = perf_counter()
        jobs = [
            self._setup_post(u, k, public=(u.index + k) % 2 == 0)
            for k in range(o.posts_per_user)
            for u in self.users
        ]
        made = await self._gather_setup(jobs, "POST /api/v1/posts")
        for author, post_id, public in sorted(made, key=lambda p: int(p[1])):
            self.targets.add(author, post_id, public)
        timings["posts"] = round(perf_counter() - at, 2)
        log(f"{len(made)} posts created")

        at = perf_counter()
        sockets = await connect_all([self._member(u) for u in self.users])
        for user, ws in zip(self.users, sockets, strict=True):
            user.ws = ws
            self._attach(user, ws)
        timings["sockets"] = round(perf_counter() - at, 2)
        log(f"{len(sockets)} WebSockets open")
        return {
            "users": n,
            "friendship_rows": len(pairs),
            "friends_per_user": round(len(pairs) / n, 2),
            "groups": len(groups),
            "group_size": o.group_size,
            "posts": len(made),
            "sockets": len(sockets),
            "timings_s": timings,
        }

    def _member(self, user: _User) -> Member:
        token = user.headers["Authorization"].removeprefix("Bearer ")
        return Member(str(user.user_id), token, user.url)

    async def _gather_setup(self, jobs: Sequence[Awaitable[Any]], what: str) -> list[Any]:
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)

        async def one(job: Awaitable[Any]) -> Any:
            async with gate:
                return await job

        try:
            return list(await asyncio.gather(*(one(j) for j in jobs)))
        except _Failure as exc:
            raise BenchError(f"set-up: {what} answered {exc.key}: {exc.body}") from exc
        except aiohttp.ClientError as exc:
            raise BenchError(f"set-up: {what} failed: {exc!r}") from exc

    async def _create_group(self, owner: _User) -> str:
        n = len(self.users)
        members = [
            str(self.users[(owner.index + k) % n].user_id) for k in range(1, self.o.group_size)
        ]
        body = {"member_ids": members, "title": f"mixed bench group {owner.index}"}
        answer = await self._request(
            "POST", f"{owner.url}/api/v1/conversations", owner.headers, body
        )
        return _decode_id(answer).id

    async def _setup_post(self, user: _User, k: int, *, public: bool) -> tuple[int, str, bool]:
        body = {
            "text": f"mixed bench post {k} of user {user.index}",
            "visibility": "public" if public else "friends",
        }
        answer = await self._request("POST", f"{user.url}/api/v1/posts", user.headers, body)
        return user.index, _decode_id(answer).id, public

    # -- the sockets --------------------------------------------------------------------------

    def _attach(self, user: _User, ws: RawWebSocket) -> None:
        def on_text(data: bytes) -> None:
            try:
                frame = _decode_frame(data)
            except msgspec.DecodeError:
                self.frames["undecodable"] += 1
                return
            kind = frame.type
            self.frames[kind] += 1
            if kind == "ack":
                entry = self.pending.pop(frame.client_id or "", None)
                if entry is not None and not entry[0].done():
                    entry[0].set_result(None)
            elif kind == "error":
                entry = self.pending.pop(frame.ref or "", None)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(_Failure(f"error_frame {frame.code}", data))
                else:
                    self.unmatched_error_frames += 1
                    if self.unmatched_error_frames <= 5:
                        log(f"error frame for user {user.index}: {data[:SAMPLE_CHARS]!r}")

        def on_close() -> None:
            self.sockets_lost += 1
            if self.sockets_lost <= 5:
                log(f"WebSocket of user {user.index} closed: code {ws.close_code}")
            for client_id, (future, owner) in list(self.pending.items()):
                if owner == user.index and not future.done():
                    del self.pending[client_id]
                    future.set_exception(_Failure("socket_closed"))

        ws.on_close = on_close
        ws.set_on_text(on_text)

    # -- the actions --------------------------------------------------------------------------

    async def _feed(self, user: _User) -> None:
        await self._request("GET", f"{user.url}/api/v1/feed?limit=20", user.headers, None)

    async def _profile(self, user: _User) -> None:
        friend = self.users[user.friends[self.rng.randrange(len(user.friends))]]
        await self._request("GET", f"{user.url}/api/v1/users/{friend.user_id}", user.headers, None)

    async def _post(self, user: _User) -> None:
        public = self.rng.random() < 0.5
        body = {
            "text": f"mixed bench post {next(self.seq)} of user {user.index}",
            "visibility": "public" if public else "friends",
        }
        answer = await self._request("POST", f"{user.url}/api/v1/posts", user.headers, body)
        self.targets.add(user.index, _decode_id(answer).id, public)

    def _target(self, user: _User) -> str:
        post_id = self.targets.pick(self.rng, user, self.o.hot)
        if post_id is None:
            raise _Failure("no_target", "no post visible to this user yet")
        return post_id

    async def _react(self, user: _User) -> None:
        post_id = self._target(user)
        body = {"type": REACTIONS[self.rng.randrange(len(REACTIONS))]}
        await self._request(
            "PUT", f"{user.url}/api/v1/posts/{post_id}/reactions", user.headers, body
        )

    async def _comment(self, user: _User) -> None:
        post_id = self._target(user)
        body = {"text": f"a comment from the mixed bench, user {user.index}"}
        await self._request(
            "POST", f"{user.url}/api/v1/posts/{post_id}/comments", user.headers, body
        )

    async def _notifications(self, user: _User) -> None:
        await self._request("GET", f"{user.url}/api/v1/notifications", user.headers, None)

    async def _chat(self, user: _User) -> None:
        ws = user.ws
        if ws is None or ws.closed:
            raise _Failure("socket_closed")
        conversation_id = user.groups[self.rng.randrange(len(user.groups))]
        client_id = f"{self.run_id}-{next(self.seq)}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[client_id] = (future, user.index)
        try:
            ws.send_text(encode(SendFrame(conversation_id, client_id, TEXT)))
            await future
        finally:
            self.pending.pop(client_id, None)

    async def _act(self, kind: str, user: _User, due: float, measured: bool) -> None:
        key: str | None = None
        body = ""
        try:
            async with asyncio.timeout(self.o.timeout):
                await self.actions[kind](user)
        except _Failure as exc:
            key, body = exc.key, exc.body
        except TimeoutError:
            key, body = "timeout", f"no answer within {self.o.timeout:g}s"
        except (aiohttp.ClientError, OSError, msgspec.DecodeError) as exc:
            key, body = type(exc).__name__, str(exc)[:SAMPLE_CHARS]
        elapsed = perf_counter() - due
        r = self.round
        assert r is not None
        if not measured:
            r.warmup_actions += 1
            if key is not None:
                r.warmup_errors[f"{kind} {key}"] += 1
            return
        stats = r.kinds[kind]
        stats.count += 1
        # Successes and timeouts are latencies (a timeout as the time waited, so a node that
        # stops answering shows in p99); an error answer is not.
        if key is None or key == "timeout":
            stats.latency.record(elapsed)
        if key is not None:
            stats.errors[key] += 1
            if len(stats.samples) < SAMPLES:
                stats.samples.append({"error": key, "body": body})

    # -- one round ----------------------------------------------------------------------------

    async def _loop_lag(self, r: _Round) -> None:
        while True:
            before = perf_counter()
            await asyncio.sleep(LAG_TICK)
            now = perf_counter()
            if self.window[0] <= before and now <= self.window[1]:
                r.loop_lag.record(max(0.0, now - before - LAG_TICK))

    async def _meter(self) -> dict[str, Any]:
        """CPU over the measured window."""
        await asyncio.sleep(max(0.0, self.window[0] - perf_counter()))
        nodes = [p.cpu_seconds() for p in self.procs]
        pg, own, mark = _postgres_cpu(), own_cpu_seconds(), _cpu_mark()
        await asyncio.sleep(max(0.0, self.window[1] - perf_counter()))
        nodes = [p.cpu_seconds() - c for p, c in zip(self.procs, nodes, strict=True)]
        pg_s = postgres_cpu_between(pg, _postgres_cpu())
        own_s, after = own_cpu_seconds() - own, _cpu_mark()
        seconds = after.at - mark.at
        known = 100 * (sum(nodes) + own_s) / seconds
        return {
            "node_cpu_pct": [round(100 * c / seconds, 1) for c in nodes],
            "postgres_cpu_pct": round(100 * pg_s / seconds, 1),
            "bench_cpu_pct": round(100 * own_s / seconds, 1),
            "cpu_pct": _cpu_figures(mark, after, known),
        }

    async def run_round(self, rate: float, label: str) -> dict[str, Any]:
        o = self.o
        if time.monotonic() - self.minted_at > self.services.config.auth.access_ttl / 2:
            self.mint()
        vacuum_s = await vacuum(self.services.database_url)
        r = _Round(rate)
        self.round = r
        frames_before, lost_before = Counter(self.frames), self.sockets_lost
        unmatched_before = self.unmatched_error_frames
        rng = self.rng
        start = perf_counter()
        self.window = (start + o.warmup, start + o.warmup + o.duration)
        end = self.window[1]
        log(f"{label}: {rate:g} actions/s for {o.warmup:g}s warm-up + {o.duration:g}s")
        lag_task = asyncio.create_task(self._loop_lag(r))
        meter = asyncio.create_task(self._meter())
        tasks: set[asyncio.Task[None]] = set()
        try:
            due = start + rng.expovariate(rate)
            while due < end:
                now = perf_counter()
                while due <= now and due < end:
                    measured = due >= self.window[0]
                    user = self.users[rng.randrange(len(self.users))]
                    kind = self.kinds[bisect.bisect_left(self.cumulative, rng.random())]
                    task = asyncio.create_task(self._act(kind, user, due, measured))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    if measured:
                        r.schedule_lag.record(now - due)
                    due += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, min(due, end) - perf_counter()))
            cpu = await meter
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            lag_task.cancel()
            meter.cancel()
            for task in tasks:
                task.cancel()
        frames = self.frames - frames_before
        lost = self.sockets_lost - lost_before
        unmatched = self.unmatched_error_frames - unmatched_before
        kinds = {k: r.kinds[k].figures(o.duration) for k in self.kinds}
        p99s = [(f["p99_ms"], k) for k, f in kinds.items()]
        measured_p99 = [(p, k) for p, k in p99s if p is not None]
        worst_p99, worst_kind = max(measured_p99) if measured_p99 else (None, None)
        kind_errors = sum(f["errors"] for f in kinds.values())
        warmup_errors = sum(r.warmup_errors.values())
        errors = kind_errors + warmup_errors + lost + unmatched
        actions = sum(f["count"] for f in kinds.values())
        ok = actions - kind_errors
        loop_lag = _summary(r.loop_lag)
        if loop_lag["p99"] is not None and loop_lag["p99"] > LAG_WARN_MS:
            log(
                f"warning: the bench's event loop ran {loop_lag['p99']} ms late at p99 (> "
                f"{LAG_WARN_MS:g} ms): the client is saturated, latencies include its own delay"
            )
        goal_met = (
            errors == 0
            and all(p is not None for p, _ in p99s)
            and all(p is not None and p < o.threshold_ms for p, _ in p99s)
        )
        out = {
            "rate": rate,
            "vacuum_s": vacuum_s,
            "duration_s": o.duration,
            "warmup_s": o.warmup,
            "actions": actions,
            "offered_per_s": per_second(actions, o.duration),
            "actions_per_s": per_second(ok, o.duration),
            "errors": errors,
            "worst_p99_ms": worst_p99,
            "worst_p99_kind": worst_kind,
            "goal_met": goal_met,
            "kinds": kinds,
            **cpu,
            "loop_lag_ms": loop_lag,
            "schedule_lag_ms": _summary(r.schedule_lag),
            "frames": dict(sorted(frames.items())),
            "sockets_lost": lost,
            "unmatched_error_frames": unmatched,
            "warmup": {
                "actions": r.warmup_actions,
                "errors": warmup_errors,
                "errors_by": dict(r.warmup_errors.most_common()),
            },
        }
        log(
            f"  {out['actions_per_s']:g} actions/s, worst p99 {worst_p99} ms ({worst_kind}), "
            f"{errors} errors, node CPU {cpu['node_cpu_pct']}%, PostgreSQL "
            f"{cpu['postgres_cpu_pct']}%, bench {cpu['bench_cpu_pct']}%, loop lag p99 "
            f"{loop_lag['p99']} ms"
        )
        return out

    async def close_sockets(self) -> None:
        sockets = [u.ws for u in self.users if u.ws is not None]
        for u in self.users:
            if u.ws is not None:
                u.ws.on_close = None
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


def check_options(o: MixedOptions) -> None:
    """Refuse options that cannot run (before any service is started)."""
    if o.nodes not in (1, 2):
        raise BenchError("--nodes must be 1 or 2")
    if o.users < 3 or o.friends < 2 or o.friends >= o.users:
        raise BenchError("need --users >= 3 and 2 <= --friends < --users")
    if not 2 <= o.group_size <= o.friends // 2 + 1:
        raise BenchError(
            "--group-size must be between 2 and --friends/2 + 1 (a group is its owner and the "
            "next users on the ring, who must be friends of the owner)"
        )
    if o.posts_per_user < 1 and (o.mix["react"] > 0 or o.mix["comment"] > 0):
        raise BenchError("react and comment need --posts-per-user >= 1 (targets from the start)")
    if o.rate <= 0 or o.duration <= 0 or o.warmup < 0 or o.timeout <= 0:
        raise BenchError("need --rate, --duration, --timeout > 0 and --warmup >= 0")
    if not 0 <= o.hot <= 1:
        raise BenchError("--hot is a probability (0 to 1)")
    if o.rounds < 1:
        raise BenchError("--rounds must be >= 1")
    if o.sweep is not None and o.rounds != 1:
        raise BenchError("--sweep runs one round per rate: leave --rounds at 1")
    if o.threshold_ms <= 0:
        raise BenchError("--threshold-ms must be > 0")


async def mixed(services: Services, o: MixedOptions) -> dict[str, Any]:
    """Set up, run the rounds (or the sweep), clean up; return the report."""
    check_options(o)
    limit = raise_nofile_limit()
    if 2 * o.users + HTTP_CONNECTIONS + 200 > limit:
        raise BenchError(f"RLIMIT_NOFILE is {limit}: too low for {o.users} sockets")
    prefix = run_prefix("bmixed")
    procs: list[ServerProcess] = []
    runner: _Mixed | None = None
    report: dict[str, Any] = {
        "target": "agora-mixed",
        "nodes": o.nodes,
        "parameters": {
            "users": o.users,
            "friends": o.friends,
            "group_size": o.group_size,
            "posts_per_user": o.posts_per_user,
            "rate": o.rate if o.sweep is None else None,
            "sweep": o.sweep,
            "duration_s": o.duration,
            "warmup_s": o.warmup,
            "mix": {k: o.mix[k] for k in KINDS},
            "hot": o.hot,
            "timeout_s": o.timeout,
            "rounds": o.rounds,
            "threshold_ms": o.threshold_ms,
            "seed": o.seed,
        },
    }
    try:
        await migrate(services.database_url)  # the users are made before any node starts
        accounts = await create_accounts(services, prefix, o.users)
        log(f"{len(accounts)} users {prefix}* with sessions and tokens created")
        procs = await start_nodes(services, o.nodes, AGORA_WS_RATE_LIMIT="0")
        runner = _Mixed(services, o, procs)
        connector = aiohttp.TCPConnector(limit=HTTP_CONNECTIONS, limit_per_host=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=30)
        ) as http:
            runner.http = http
            report["setup"] = await runner.setup(accounts)
            runs: list[dict[str, Any]] = []
            if o.sweep is None:
                for i in range(o.rounds):
                    runs.append(await runner.run_round(o.rate, f"round {i + 1}/{o.rounds}"))
            else:
                over = 0
                for i, rate in enumerate(o.sweep):
                    step = await runner.run_round(rate, f"step {i + 1}/{len(o.sweep)}")
                    runs.append(step)
                    p99 = step["worst_p99_ms"]
                    over = over + 1 if p99 is None or p99 >= o.threshold_ms else 0
                    if over == 2 and i + 1 < len(o.sweep):
                        log("two steps in a row over the threshold: the sweep stops here")
                        break
        report["runs"] = runs
        report["goal"] = {"p99_ms_max": o.threshold_ms, "errors": 0}
        report["goal_met"] = all(run["goal_met"] for run in runs)
        if o.sweep is not None:
            at, reason = crossing([(s["rate"], s["worst_p99_ms"]) for s in runs], o.threshold_ms)
            report["crossing_actions_per_s"] = at
            report["crossing_reason"] = reason
            report["sweep_stopped_early"] = len(runs) < len(o.sweep)
        report["frames"] = dict(sorted(runner.frames.items()))
        report["sockets_lost"] = runner.sockets_lost
        report["node_rss_mib"] = [p.rss_mib() for p in procs]
    finally:
        if runner is not None:
            await runner.close_sockets()
        for p in procs:
            p.stop()
        at = perf_counter()
        await delete_accounts(services, prefix)
        report["cleanup_s"] = round(perf_counter() - at, 2)
        log(f"users {prefix}* and what they made deleted")
    return report
