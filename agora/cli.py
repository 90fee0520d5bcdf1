"""``agora``: serve, migrate, admin. Configuration comes from the environment (see README)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import date

from agora.config import Config, ConfigError, load_config
from agora.errors import AppError
from agora.search.backend import SEARCH_TYPES
from agora.server.logs import setup_logging

log = logging.getLogger("agora")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agora", description="Agora social-network backend node")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run a node")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)

    sub.add_parser("migrate", help="apply pending migrations and exit")
    sub.add_parser("worker", help="run the outbox relay and the event consumers (no HTTP)")

    events = sub.add_parser("events", help="domain events").add_subparsers(
        dest="events_command", required=True
    )
    d = events.add_parser("dead-letters", help="list dead-lettered events (JSON lines)")
    d.add_argument("--consumer", help="only this consumer's (default: all)")
    rp = events.add_parser("replay", help="put dead-lettered events back in their queues")
    rp.add_argument("--consumer", help="only this consumer's (default: all)")
    rp.add_argument(
        "--event-id", type=int, action="append", dest="event_ids", help="only these (repeatable)"
    )

    search = sub.add_parser("search", help="the Elasticsearch index").add_subparsers(
        dest="search_command", required=True
    )
    ri = search.add_parser(
        "reindex", help="rebuild the index from PostgreSQL into a new one and swap it in"
    )
    ri.add_argument(
        "--type",
        choices=SEARCH_TYPES,
        action="append",
        dest="types",
        help="only this type (repeatable; default: all three)",
    )

    admin = sub.add_parser("admin", help="account administration").add_subparsers(
        dest="admin_command", required=True
    )
    c = admin.add_parser("create-user", help="create an account")
    c.add_argument("--username", required=True)
    c.add_argument("--email", required=True)
    c.add_argument("--password", required=True)
    c.add_argument("--role", default="user", choices=["user", "moderator", "admin"])
    r = admin.add_parser("set-role", help="change an account's role")
    r.add_argument("--username", required=True)
    r.add_argument("--role", required=True, choices=["user", "moderator", "admin"])
    st = admin.add_parser("stats", help="activity per day (as GET /admin/stats answers)")
    st.add_argument("--from", dest="first", type=_day, metavar="DAY", help="first day, YYYY-MM-DD")
    st.add_argument("--to", dest="last", type=_day, metavar="DAY", help="default: today (UTC)")
    st.add_argument("--json", action="store_true", help="the endpoint's JSON, not a table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"agora: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(production=config.production, level=config.log_level, node_id=config.node_id)

    if args.command == "serve":
        from agora.server.run import serve

        return serve(config, args.host, args.port)
    if args.command in ("worker", "events"):
        return _events(config, args)
    if args.command == "search" and config.elasticsearch_url is None:
        print(
            "agora: search reindex needs AGORA_ELASTICSEARCH_URL (without it, search uses "
            "PostgreSQL full-text, which has no index to rebuild)",
            file=sys.stderr,
        )
        return 2
    return _offline(config, args)


def _events(config: Config, args: argparse.Namespace) -> int:
    """``agora worker`` and ``agora events ...``: they need the configured services."""
    from agora.server import worker
    from agora.server.run import run
    from agora.storage.migrations import MigrationError

    problem = worker.needs_services(config)
    if problem:
        print(f"agora: {problem}", file=sys.stderr)
        return 2
    try:
        if args.command == "worker":
            return run(worker.work(config))
        if args.events_command == "dead-letters":
            return run(worker.dead_letters(config, args.consumer))
        return run(worker.replay(config, args.consumer, args.event_ids))
    except MigrationError as exc:
        log.error("cannot start: %s", exc)
        return 1


def _offline(config: Config, args: argparse.Namespace) -> int:
    """Commands that act on the database and exit (no Redis needed): migrate, search, admin."""
    from agora.server.embedded import EmbeddedError
    from agora.server.run import resolve, run
    from agora.storage.migrations import MigrationError, migrate

    try:
        stats = args.command == "admin" and args.admin_command == "stats"
        resolved, embedded = resolve(config, need_redis=stats, lock=False)
    except EmbeddedError as exc:
        log.error("%s", exc)
        return 1
    try:
        url = resolved.database.url
        assert url is not None
        try:
            applied = run(migrate(url))
        except MigrationError as exc:
            log.error("cannot migrate: %s", exc)
            return 1
        if args.command == "migrate":
            print(
                f"applied {len(applied)} migration(s)"
                + (f": {', '.join(applied)}" if applied else "")
            )
            return 0
        if args.command == "search":
            from agora.search.reindex import command

            return run(command(resolved, args.types or SEARCH_TYPES))
        return run(_admin(resolved, args))
    finally:
        embedded.stop()


async def _admin(config: Config, args: argparse.Namespace) -> int:
    from agora.services.accounts import create_user, set_role
    from agora.services.audit import record_cli
    from agora.services.passwords import Passwords
    from agora.storage.accounts import AccountStore
    from agora.storage.db import Database

    assert config.database.url is not None
    if args.admin_command == "stats":
        from agora.server.stats_command import command

        return await command(config, args.first, args.last, args.json)
    db = await Database.connect(config.database.url, min_size=1, max_size=2)
    passwords = Passwords(config.auth.password_time_cost, config.auth.password_memory_kib)
    try:
        store = AccountStore(db)
        if args.admin_command == "create-user":
            user = await create_user(
                store, passwords, args.username, args.email, args.password, role=args.role
            )
            await record_cli(db, "user.create", user, f"created with the role {user.role}")
            print(f"created user {user.username} (id {user.id}, role {user.role})")
        else:
            before = await store.find_by_login(args.username)
            user = await set_role(store, args.username, args.role)
            was = before.role if before is not None else "?"
            await record_cli(db, "user.set_role", before or user, f"role {was} -> {user.role}")
            print(f"user {user.username} now has role {user.role}")
        return 0
    except AppError as exc:
        detail = "; ".join(f"{k}: {v}" for k, v in (exc.fields or {}).items())
        print(f"agora: {exc.message}" + (f" ({detail})" if detail else ""), file=sys.stderr)
        return 1
    finally:
        passwords.close()
        await asyncio.wait_for(db.close(), 5)


if __name__ == "__main__":
    raise SystemExit(main())
