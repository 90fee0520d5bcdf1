"""``python -m bench <command>``: each command prints one JSON object on stdout (progress goes
to stderr) and exits 0, or 1 with a one-line reason on stderr. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bench.procs import BenchError, log, run
from bench.services import resolved_services

Command = Callable[[argparse.Namespace], dict[str, Any]]


def _baseline_http(a: argparse.Namespace) -> dict[str, Any]:
    from bench.baseline_http import baseline_http

    return run(baseline_http(a.concurrency, a.duration, a.warmup))


def _seed(a: argparse.Namespace) -> dict[str, Any]:
    from bench.seed import seed

    reactions = a.posts if a.reactions is None else a.reactions
    comments = a.posts // 2 if a.comments is None else a.comments
    with resolved_services(need_redis=False) as services:
        return run(
            seed(
                services,
                users=a.users,
                friends=a.friends,
                posts=a.posts,
                reactions=reactions,
                comments=comments,
                reset=a.reset,
            )
        )


def _feed(a: argparse.Namespace) -> dict[str, Any]:
    from bench.feed import FeedOptions, feed

    options = FeedOptions(
        concurrency=a.concurrency,
        duration=a.duration,
        warmup=a.warmup,
        path=a.path,
        users=a.users,
        population=a.population,
        baseline=not a.no_baseline,
        limits=a.limits,
        rounds=a.rounds,
    )
    if a.url:
        return run(feed(options, url=a.url))
    with resolved_services(need_redis=True) as services:
        return run(feed(options, services=services))


def _check_senders(a: argparse.Namespace) -> None:
    if a.senders is not None and not 1 <= a.senders <= a.members:
        raise BenchError(f"--senders must be between 1 and --members ({a.members})")


def _baseline_ws(a: argparse.Namespace) -> dict[str, Any]:
    from bench.baseline_ws import baseline_ws

    _check_senders(a)
    return run(
        baseline_ws(a.conversations, a.members, a.rate, a.duration, a.warmup, senders=a.senders)
    )


def _chat(a: argparse.Namespace) -> dict[str, Any]:
    from bench.chat import chat

    _check_senders(a)
    with resolved_services(need_redis=True) as services:
        return run(
            chat(
                services,
                nodes=a.nodes,
                conversations=a.conversations,
                members=a.members,
                rate=a.rate,
                duration=a.duration,
                warmup=a.warmup,
                senders=a.senders,
                limits=a.limits or "on",
                rounds=a.rounds,
            )
        )


def _connections(a: argparse.Namespace) -> dict[str, Any]:
    from bench.connections import connections

    with resolved_services(need_redis=a.url is None) as services:
        return run(
            connections(
                services, count=a.count, url=a.url, pid=a.pid, per_user=a.per_user, batch=a.batch
            )
        )


def _events(a: argparse.Namespace) -> dict[str, Any]:
    from bench.events import EventsOptions, events, parse_mix

    if a.nodes < 1 or a.users < 1 or a.rate <= 0 or a.duration <= 0 or a.backlog < 0:
        raise BenchError("need --nodes, --users, --rate, --duration > 0 and --backlog >= 0")
    options = EventsOptions(
        rate=a.rate,
        duration=a.duration,
        warmup=a.warmup,
        nodes=a.nodes,
        users=a.users,
        mix=parse_mix(a.mix),
        connections=a.connections,
        max_connections=max(a.connections, a.max_connections),
        amqp=a.amqp,
        sustained=not a.no_sustained,
        backlog=a.backlog,
    )
    with resolved_services(need_redis=True) as services:
        return run(events(services, options))


def _search(a: argparse.Namespace) -> dict[str, Any]:
    from bench.search import SearchOptions, parse_kinds, search

    if min(a.concurrency, a.users, a.queries) < 1 or a.duration <= 0 or a.warmup < 0:
        raise BenchError("need --concurrency, --users, --queries, --duration > 0, --warmup >= 0")
    if not 1 <= a.limit <= 100 or a.probe < 0 or a.min_posts < 0:
        raise BenchError("need 1 <= --limit <= 100, --probe >= 0 and --min-posts >= 0")
    if a.pid is not None and a.url is None:
        raise BenchError("--pid goes with --url (a spawned node is measured anyway)")
    options = SearchOptions(
        concurrency=a.concurrency,
        duration=a.duration,
        warmup=a.warmup,
        kinds=parse_kinds(a.kinds),
        users=a.users,
        population=a.population,
        queries=a.queries,
        limit=a.limit,
        probe=a.probe,
        min_posts=a.min_posts,
        seed=a.seed,
    )
    with resolved_services(need_redis=a.url is None) as services:
        return run(search(options, services=services, url=a.url, pid=a.pid))


def _media(a: argparse.Namespace) -> dict[str, Any]:
    from bench.media import MediaOptions, media

    if min(a.concurrency, a.sockets) < 1 or min(a.duration, a.idle, a.ping_interval) <= 0:
        raise BenchError("need --concurrency, --sockets, --duration, --idle, --ping-interval > 0")
    if a.warmup < 0:
        raise BenchError("need --warmup >= 0")
    options = MediaOptions(
        concurrency=a.concurrency,
        duration=a.duration,
        warmup=a.warmup,
        idle=a.idle,
        sockets=a.sockets,
        ping_interval=a.ping_interval,
        library=a.library,
    )
    with resolved_services(need_redis=True) as services:
        return run(media(services, options))


def _mixed(a: argparse.Namespace) -> dict[str, Any]:
    from bench.mixed import (
        DEFAULT_MIX,
        MixedOptions,
        check_options,
        mixed,
        parse_mix,
        parse_sweep,
    )

    options = MixedOptions(
        nodes=a.nodes,
        users=a.users,
        friends=a.friends,
        group_size=a.group_size,
        posts_per_user=a.posts_per_user,
        rate=a.rate,
        duration=a.duration,
        warmup=a.warmup,
        mix=parse_mix(a.mix or DEFAULT_MIX),
        hot=a.hot,
        timeout=a.timeout,
        rounds=a.rounds,
        sweep=None if a.sweep is None else parse_sweep(a.sweep),
        threshold_ms=a.threshold_ms,
        seed=a.seed,
    )
    check_options(options)
    with resolved_services(need_redis=True) as services:
        return run(mixed(services, options))


def _load_options(p: argparse.ArgumentParser, concurrency: int = 50, duration: float = 30) -> None:
    p.add_argument("--concurrency", type=int, default=concurrency, help="connections")
    p.add_argument("--duration", type=float, default=duration, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")


def _chat_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conversations", type=int, default=100)
    p.add_argument("--members", type=int, default=5, help="members per conversation")
    p.add_argument(
        "--senders",
        type=int,
        help="sends come only from the first N members of each conversation (default: all)",
    )
    p.add_argument("--rate", type=float, default=1000, help="sends per second, all together")
    p.add_argument("--duration", type=float, default=20, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")


def _limits_options(p: argparse.ArgumentParser) -> None:
    from bench.limits import CHOICES

    p.add_argument(
        "--limits",
        choices=CHOICES,
        help="spawned nodes' rate limits (default on, scaled out of reach); both: on and off "
        "interleaved, compared",
    )
    p.add_argument("--rounds", type=int, default=3, help="with --limits both: rounds of each")


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("baseline-http", help="bare aiohttp+msgspec feed page: the ceiling")
    _load_options(s)
    s.set_defaults(func=_baseline_http)

    s = sub.add_parser("seed", help="bulk-load users, friendships, posts into PostgreSQL")
    s.add_argument("--users", type=int, default=10_000)
    s.add_argument("--friends", type=int, default=150, help="average friends per user")
    s.add_argument("--posts", type=int, default=200_000)
    s.add_argument("--reactions", type=int, help="reactions to draw (default: --posts)")
    s.add_argument("--comments", type=int, help="comments (default: --posts / 2)")
    s.add_argument("--reset", action="store_true", help="remove earlier bench_* data first")
    s.set_defaults(func=_seed)

    s = sub.add_parser("feed", help="GET /api/v1/feed as seeded users, then baseline-http")
    _load_options(s)
    s.add_argument("--url", help="an existing node (default: spawn one on the configured DB)")
    s.add_argument("--users", type=int, default=200, help="seeded users to log in and rotate")
    s.add_argument(
        "--population",
        type=int,
        help="draw users from bench_1..bench_N (default: the seeded count, or 10000 with --url)",
    )
    s.add_argument("--path", default="/api/v1/feed?limit=20", help="GET path to drive")
    s.add_argument("--no-baseline", action="store_true", help="skip the baseline-http run")
    _limits_options(s)
    s.set_defaults(func=_feed)

    s = sub.add_parser("baseline-ws", help="bare aiohttp WebSocket rooms: the chat ceiling")
    _chat_options(s)
    s.set_defaults(func=_baseline_ws)

    s = sub.add_parser("chat", help="group chat over /ws on 1 or 2 nodes")
    s.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    _chat_options(s)
    _limits_options(s)
    s.set_defaults(func=_chat)

    s = sub.add_parser("connections", help="memory per idle authenticated WebSocket")
    s.add_argument("--count", type=int, default=10_000)
    s.add_argument("--url", help="an existing node (default: spawn one)")
    s.add_argument("--pid", type=int, help="with --url: the node's pid, to read its RSS")
    s.add_argument("--per-user", type=int, default=1, help="connections (sessions) per user")
    s.add_argument("--batch", type=int, default=250, help="connections opened at once")
    s.set_defaults(func=_connections)

    s = sub.add_parser("events", help="domain events: lag under sustained writes, throughput")
    s.add_argument("--rate", type=float, default=1000, help="REST writes per second")
    s.add_argument("--duration", type=float, default=20, help="measured seconds")
    s.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    s.add_argument("--nodes", type=int, default=1, help="nodes for the sustained writes")
    s.add_argument("--users", type=int, default=200, help="seeded users writing")
    s.add_argument("--mix", default="60/25/15", help="weights of reactions/comments/posts")
    s.add_argument("--connections", type=int, default=32, help="connections per node at start")
    s.add_argument("--max-connections", type=int, default=256, help="connections per node at most")
    s.add_argument(
        "--amqp",
        action="store_true",
        help="RabbitMQ (AGORA_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/), not in-process",
    )
    s.add_argument("--no-sustained", action="store_true", help="skip the sustained writes")
    s.add_argument(
        "--backlog", type=int, default=100_000, help="events for the throughput phase (0: skip)"
    )
    s.set_defaults(func=_events)

    s = sub.add_parser("search", help="GET /api/v1/search: word, phrase and name-prefix queries")
    _load_options(s, duration=20)
    s.add_argument("--kinds", default="word,phrase,prefix", help="query kinds, run in this order")
    s.add_argument("--url", help="an existing node on the configured DB (default: spawn one)")
    s.add_argument("--pid", type=int, help="with --url: the node's pid, for its CPU and RSS")
    s.add_argument("--users", type=int, default=200, help="seeded users to log in and rotate")
    s.add_argument(
        "--population",
        type=int,
        help="draw users from bench_1..bench_N (default: the seeded count, or 10000 with --url)",
    )
    s.add_argument("--queries", type=int, default=2000, help="prebuilt requests per kind")
    s.add_argument("--limit", type=int, default=20, help="page size asked for")
    s.add_argument("--probe", type=int, default=100, help="requests per kind decoded first")
    s.add_argument(
        "--min-posts", type=int, default=200_000, help="fail below this many seeded bench posts"
    )
    s.add_argument("--seed", type=int, default=1, help="random seed for users and queries")
    s.set_defaults(func=_search)

    s = sub.add_parser("media", help="POST /api/v1/media uploads and WebSocket pings meanwhile")
    _load_options(s, concurrency=8, duration=20)
    s.add_argument("--idle", type=float, default=5.0, help="seconds of pings before the uploads")
    s.add_argument("--sockets", type=int, default=20, help="WebSocket sessions pinging")
    s.add_argument(
        "--ping-interval", type=float, default=0.1, help="seconds between one socket's pings"
    )
    s.add_argument(
        "--library",
        choices=("vips", "pillow"),
        help="imaging library for the node, as AGORA_MEDIA_LIBRARY (default: the node's own)",
    )
    s.set_defaults(func=_media)

    s = sub.add_parser("mixed", help="connected users doing everything at once, open loop")
    s.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    s.add_argument("--users", type=int, default=1000, help="users, one WebSocket each")
    s.add_argument("--friends", type=int, default=10, help="friends per user, on a ring")
    s.add_argument("--group-size", type=int, default=5, help="members of each user's group")
    s.add_argument("--posts-per-user", type=int, default=2, help="posts made before the run")
    s.add_argument("--rate", type=float, default=500, help="actions per second, all users")
    s.add_argument("--duration", type=float, default=30, help="measured seconds per round")
    s.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    s.add_argument(
        "--mix",
        help="weights of the kinds of action (default "
        "feed=35,profile=10,post=5,react=15,comment=8,notifications=7,chat=20)",
    )
    s.add_argument("--hot", type=float, default=0.8, help="share of targets among newest posts")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds before an action fails")
    s.add_argument("--rounds", type=int, default=1, help="rounds at --rate on the same set-up")
    s.add_argument("--sweep", help="rates FROM:TO:STEP or A,B,C: one round each, ascending")
    s.add_argument("--threshold-ms", type=float, default=200.0, help="the p99 goal")
    s.add_argument("--seed", type=int, help="random seed (arrivals, users, kinds, targets)")
    s.set_defaults(func=_mixed)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command: Command = args.func
    try:
        result = command(args)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; spawned servers stopped")
        return 130
    print(json.dumps(result, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
