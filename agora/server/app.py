"""The application factory: one function builds a node's aiohttp app from a resolved config.

Each resource's life is a ``cleanup_ctx`` generator (start, ``yield``, close), in dependency
order; aiohttp closes them in reverse on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from agora.actors.committer import Committer
from agora.actors.conversation import ConversationActor, ConversationDirectory
from agora.actors.session import SessionRegistry
from agora.clock import Clock
from agora.cluster.inbox import Inbox
from agora.cluster.nodes import NodeRegistry
from agora.cluster.presence import Presence
from agora.cluster.reach import RouterReach
from agora.cluster.router import Router, conversation_key
from agora.config import Config, redact
from agora.events.bus import EventBus
from agora.events.consumer import Consumer, Reach
from agora.events.metrics import EventMetrics
from agora.handlers import (
    admin,
    admin_stats,
    auth,
    conversations,
    docs,
    feed,
    friends,
    media,
    notifications,
    posts,
    reports,
    search,
    users,
    ws,
)
from agora.handlers import web as web_client
from agora.media.storage import storage_for
from agora.media.urls import MediaUrls
from agora.protocol.frames import CloseCode
from agora.search.backend import SearchBackend
from agora.search.elastic import ElasticBackend
from agora.search.indexer import search_consumers
from agora.search.postgres import PostgresBackend
from agora.server import hardening, keys, ops
from agora.server.amqp import Amqp
from agora.server.metrics import Metrics
from agora.server.middleware import InFlight, envelope_middleware
from agora.server.routing import mount
from agora.services.accounts import AccountService
from agora.services.activity import ActivityTracker
from agora.services.audit import AuditLog
from agora.services.chat import ChatService
from agora.services.feed import FeedService
from agora.services.feed_pages import FeedPages
from agora.services.housekeeping import Periodic, housekeeping_jobs
from agora.services.invalidation import Invalidator
from agora.services.media import MediaService
from agora.services.moderation import ModerationService
from agora.services.notifications import NotificationConsumer, NotificationService
from agora.services.passwords import Passwords
from agora.services.posts import PostService
from agora.services.ratelimit import Limiter
from agora.services.realtime import Realtime
from agora.services.revocations import Revocations
from agora.services.search import SearchService
from agora.services.social import SocialService
from agora.services.stats import StatsConsumer, StatsService
from agora.services.suspensions import Suspensions
from agora.services.tokens import TokenIssuer
from agora.services.wordfilter import WordFilter
from agora.storage import redis as redis_store
from agora.storage.accounts import AccountStore
from agora.storage.chat import ChatStore
from agora.storage.content import CommentStore, PostStore
from agora.storage.db import Database
from agora.storage.feed_cache import FeedCache
from agora.storage.media import MediaStore
from agora.storage.migrations import migrate
from agora.storage.moderation import AuditStore, ReportStore
from agora.storage.notifications import NotificationStore
from agora.storage.search import SEARCH_SETTINGS, SearchStore
from agora.storage.social import SocialStore
from agora.storage.stats import StatsStore

log = logging.getLogger(__name__)

STEP_TIMEOUT = 3.0  # seconds one shutdown step may take before the node goes on without it
COUNTER_FOLD_INTERVAL = 1.0  # seconds between folds of the post counters' deltas


async def bounded(step: Coroutine[Any, Any, Any], what: str) -> None:
    """Run one shutdown step for at most ``STEP_TIMEOUT`` seconds (not waiting for it to
    acknowledge a cancellation either: a step stuck in I/O must not keep the node up)."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=STEP_TIMEOUT)
    if not done:
        task.cancel()
        log.warning("shutdown: %s took over %.0f s; going on without it", what, STEP_TIMEOUT)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("shutdown: %s failed", what, exc_info=task.exception())


HERE = Path(__file__).parent
API_PREFIX = "/api/v1"
REST_TABLES = [
    auth.routes,
    users.routes,
    friends.routes,
    friends.blocks,
    posts.routes,
    feed.routes,
    conversations.routes,
    notifications.routes,
    search.routes,
    media.routes,
    reports.routes,
    admin.routes,
    admin_stats.routes,
]


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    assert config.database.url, "resolve embedded services before building the app"
    applied = await migrate(config.database.url)
    if applied:
        log.info("applied %d migration(s): %s", len(applied), ", ".join(applied))
    db = await Database.connect(
        config.database.url,
        min_size=config.database.pool_min,
        max_size=config.database.pool_max,
        observe=app[keys.METRICS].observe_db,
    )
    app[keys.DB] = db
    yield
    await db.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    assert config.redis.url, "resolve embedded services before building the app"
    client = redis_store.connect(config.redis.url)
    await client.ping()
    app[keys.REDIS] = client
    app[keys.REDIS_KEYS] = redis_store.Keys(config.redis.prefix)
    app[keys.LIMITER] = Limiter(
        client, app[keys.REDIS_KEYS], app[keys.CLOCK], enabled=config.limits.enabled
    )
    yield
    await app[keys.LIMITER].close()
    await client.aclose()


async def _amqp(app: web.Application) -> AsyncIterator[None]:
    config = app[keys.CONFIG]
    amqp = Amqp(config.amqp_url) if config.amqp_url else None
    if amqp is not None and not await amqp.ensure():
        # Start anyway: /readyz answers 503 until the broker is reachable (checked per call).
        log.warning("RabbitMQ at %s is not reachable yet", redact(amqp.url))
    app[keys.AMQP] = amqp
    yield
    if amqp is not None:
        await amqp.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    config, clock = app[keys.CONFIG], app[keys.CLOCK]
    db, redis, rkeys = app[keys.DB], app[keys.REDIS], app[keys.REDIS_KEYS]
    assert config.auth.jwt_secret, "resolve the JWT secret before building the app"
    store = AccountStore(db)
    passwords = Passwords(
        config.auth.password_time_cost,
        config.auth.password_memory_kib,
        workers=config.limits.password_workers,
        queue=config.limits.password_queue,
    )
    revocations = Revocations(redis, rkeys, store, clock, config.auth.access_ttl)
    await revocations.start()
    app[keys.ACCOUNTS] = AccountService(
        store=store,
        passwords=passwords,
        tokens=TokenIssuer(config.auth.jwt_secret, config.auth.access_ttl, clock),
        revocations=revocations,
        limiter=app[keys.LIMITER],
        limits=config.limits,
        clock=clock,
        refresh_ttl=config.auth.refresh_ttl,
    )

    social_store, post_store = SocialStore(db), PostStore(db)
    urls = MediaUrls(config.auth.jwt_secret, config.media.url_ttl, clock)
    media_store = MediaStore(db)
    storage = storage_for(config)
    app[keys.MEDIA] = MediaService(media_store, storage, urls, config.media)
    app[keys.ACCOUNTS].media = media_store
    feed_cache = FeedCache(redis, rkeys, size=config.feed_cache_size)
    invalidator = Invalidator(FeedPages(clock, max_entries=config.feed_page_cache))
    app[keys.METRICS].watch_feed_pages(invalidator.pages)
    app[keys.INVALIDATOR] = invalidator
    app[keys.ACCOUNTS].invalidator = invalidator
    app[keys.SOCIAL] = SocialService(db, social_store, store, feed_cache, invalidator)
    app[keys.FEED] = FeedService(
        post_store, social_store, feed_cache, invalidator.pages, invalidator, clock, urls
    )
    app[keys.NOTIFICATIONS] = NotificationService(db)
    app[keys.REALTIME] = Realtime(social_store)
    reports = ReportStore(db)
    audit = AuditLog(AuditStore(db), reports)
    app[keys.POSTS] = PostService(
        post_store,
        CommentStore(db),
        store,
        app[keys.FEED],
        urls,
        on_created=app[keys.REALTIME].post_created,
        word_filter=WordFilter(config.moderation.words, config.moderation.patterns),
        audit=audit,
    )
    # Moderation (services/moderation.py): the node's set of suspended accounts, which
    # authenticate checks, and the lifting of suspensions that ended, at login and refresh.
    suspensions = Suspensions(redis, rkeys, store, clock, config.auth.session_recheck)
    await suspensions.start()
    moderation = ModerationService(
        store,
        revocations,
        suspensions,
        reports,
        audit,
        app[keys.POSTS],
        ChatStore(db),
        social_store,
        invalidator,
        clock,
    )
    app[keys.MODERATION] = moderation
    app[keys.ACCOUNTS].suspended = suspensions
    app[keys.ACCOUNTS].suspension_over = moderation.lift_if_over
    app[keys.ACCOUNTS].suspension_message = moderation.suspended_message
    yield
    await bounded(suspensions.stop(), "stopping suspensions")
    await bounded(revocations.stop(), "stopping revocations")
    passwords.close()
    app[keys.MEDIA].close()
    await bounded(storage.close(), "closing media storage")


async def _search(app: web.Application) -> AsyncIterator[None]:
    """The search backend: Elasticsearch when configured, PostgreSQL full text otherwise."""
    config = app[keys.CONFIG]
    assert config.database.url
    search_db: Database | None = None
    backend: SearchBackend
    if config.elasticsearch_url:
        store = SearchStore(app[keys.DB])
        backend = ElasticBackend(config, app[keys.DB])
    else:
        # The candidate queries' own small pool, planned for each query's words (see
        # storage/search.py); the re-check runs on the node's pool.
        search_db = await Database.connect(
            config.database.url,
            min_size=1,
            max_size=config.search.pool,
            observe=app[keys.METRICS].observe_db,
            settings=SEARCH_SETTINGS,
        )
        store = SearchStore(app[keys.DB], search_db)
        backend = PostgresBackend(
            store,
            app[keys.CLOCK],
            cache_ttl=config.search.cache_ttl,
            cache_size=config.search.cache_size,
        )
        app[keys.METRICS].watch_search_windows(backend.windows)
    app[keys.SEARCH] = SearchService(
        backend,
        store,
        app[keys.MEDIA].urls,
    )
    log.info("search: %s", backend.name)
    yield
    await bounded(backend.close(), "closing the search backend")
    if search_db is not None:
        await search_db.close()


async def _realtime(app: web.Application) -> AsyncIterator[None]:
    """The cluster side of the node: registry, inbox, presence, router, actors."""
    config, clock, cc = app[keys.CONFIG], app[keys.CLOCK], app[keys.CONFIG].cluster
    db, redis, rkeys = app[keys.DB], app[keys.REDIS], app[keys.REDIS_KEYS]
    chat_store, social_store = ChatStore(db), SocialStore(db)
    realtime = app[keys.REALTIME]

    nodes = NodeRegistry(redis, rkeys, config.node_id, clock, cc.heartbeat, cc.node_timeout)
    sessions = SessionRegistry()
    presence = Presence(
        redis, rkeys, nodes, realtime.presence_changed, cc.presence_debounce, clock=clock
    )
    router_box: list[Router] = []

    def restarted(kind: str) -> None:
        app[keys.METRICS].actor_restarts.labels(kind).inc()

    committer = Committer(chat_store, clock=clock)
    committer.on_crash = restarted
    committer.start()
    conversations = ConversationDirectory(
        lambda cid, state: ConversationActor(
            cid, chat_store, committer, router_box[0], clock, cc.conversation_idle, state=state
        ),
        chat_store,
        clock,
        max_actors=cc.max_conversations,
        metrics_gauge=app[keys.METRICS].actors.labels("conversation"),
        on_crash=restarted,
    )
    invalidator = app[keys.INVALIDATOR]
    router = Router(
        nodes,
        presence,
        sessions,
        conversations,
        cc.answer_timeout,
        on_evict=invalidator.apply,
        clock=clock,
    )
    conversations.resubmit = router.submit  # an actor's leftovers follow the conversation
    invalidator.cluster = router
    router_box.append(router)
    realtime.router = router
    inbox = Inbox(redis, rkeys, nodes.node_id, router.handle)  # this life's stream
    router.inbox = inbox
    inbox.on_gap = lambda: router.resync_local(None, [])

    async def ownership_changed(old: frozenset[str], new: frozenset[str]) -> None:
        await conversations.stop_where(lambda cid: not nodes.owns(conversation_key(cid)))

    nodes.on_change(ownership_changed)
    nodes.on_dead(presence.clear_node)
    nodes.on_dead(inbox.drop)

    async def reborn(old: str, new: str) -> None:
        # Declared dead while out of touch with Redis: what was posted to the old life is gone
        # with its inbox, so read the new one, place our sessions again, say we are here, and
        # have every session sync what it may have missed.
        inbox.switch(new)
        await presence.reborn()
        router.announce(joined=True)
        router.resync_local(None, [])
        # Nodes that had not yet seen the burial may have posted to the old life meanwhile:
        # once each has beaten twice, they all post to the new one; sync once more then.
        clock.call_later(2 * cc.heartbeat, router.resync_local, None, [])

    nodes.on_reborn(reborn)
    await inbox.start()  # read position fixed before anyone can route to us
    await nodes.start()
    router.announce(joined=True)
    await presence.start()
    unsubscribe = app[keys.ACCOUNTS].revocations.subscribe(
        lambda sid: sessions.close_login(sid, CloseCode.REVOKED, "revoked")
    )

    app[keys.NODES], app[keys.SESSIONS], app[keys.PRESENCE] = nodes, sessions, presence
    app[keys.CONVERSATIONS], app[keys.ROUTER] = conversations, router
    app[keys.CHAT] = ChatService(chat_store, social_store, router)
    yield
    # Shutdown, in order (sessions were closed by on_shutdown, and no new ones are taken):
    # leave the cluster so the other nodes own our conversations from now on; pass commands
    # that still reach us on to them; let each actor finish its batch in hand, its queued
    # commands following the conversation to its new owner; then the committer, the inbox
    # (flushing what is queued) and, after this function, the pools.
    # Each step is bounded: one that hangs (a Redis reply that never comes) is logged and left
    # behind, so the node still stops and closes its pools.
    unsubscribe()
    await sessions.wait_cleanups(STEP_TIMEOUT)
    await bounded(realtime.stop(), "stopping post pushes")
    router.leaving = True
    await bounded(nodes.stop(), "leaving the cluster")
    router.announce(joined=False)
    await bounded(conversations.stop_all(), "draining conversation actors")
    await bounded(committer.stop(), "stopping the committer")
    router.fail_pending()
    await bounded(presence.stop(), "stopping presence")
    await bounded(inbox.stop(), "stopping the inbox")


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    """Periodic jobs (services/housekeeping.py); after _realtime, whose sessions they check."""
    accounts = app[keys.ACCOUNTS]
    jobs = housekeeping_jobs(
        app[keys.CONFIG].auth,
        app[keys.CLOCK],
        accounts.store,
        accounts.revocations,
        app[keys.SESSIONS],
    )
    jobs.append(
        Periodic(
            "media-cleanup",
            app[keys.CONFIG].auth.purge_interval,
            app[keys.CLOCK],
            app[keys.MEDIA].cleanup_once,
        )
    )
    jobs.append(
        Periodic(
            "suspension-expiry",
            app[keys.CONFIG].auth.session_recheck,
            app[keys.CLOCK],
            app[keys.MODERATION].lift_expired,
        )
    )
    for job in jobs:
        job.start()
    yield
    for job in jobs:
        await bounded(job.stop(), f"stopping {job.name}")


async def _stats(app: web.Application) -> AsyncIterator[None]:
    """Analytics (services/stats.py): the activity tracker every authenticated request and
    WebSocket connect feeds (after _realtime: it reports this node's sessions), and the
    figures admins read."""
    redis, rkeys, clock = app[keys.REDIS], app[keys.REDIS_KEYS], app[keys.CLOCK]
    nodes, sessions = app[keys.NODES], app[keys.SESSIONS]
    tracker = ActivityTracker(redis, rkeys, clock, sessions=lambda: (nodes.node_id, len(sessions)))
    tracker.start()
    app[keys.ACTIVITY] = tracker
    app[keys.STATS] = StatsService(
        StatsStore(app[keys.DB]),
        app[keys.ACCOUNTS].store,
        redis,
        rkeys,
        clock,
        app[keys.CONFIG].cluster.node_timeout,
    )
    yield
    await bounded(tracker.stop(), "flushing activity")


def consumers_for(
    config: Config, db: Database, reach: Reach, metrics: Metrics | None = None
) -> list[Consumer]:
    """The event consumers a process runs (a node's, or ``agora worker``'s)."""
    return [
        NotificationConsumer(
            NotificationStore(db),
            reach,
            on_created=metrics.notification_created if metrics else None,
        ),
        *search_consumers(config, db),
        StatsConsumer(StatsStore(db)),
    ]


async def _events(app: web.Application) -> AsyncIterator[None]:
    """Outbox relay and event consumers (after _realtime: consumers push through the router),
    and the counter fold, which shares their pool."""
    config = app[keys.CONFIG]
    assert config.database.url
    reach = RouterReach(app[keys.ROUTER], app[keys.PRESENCE])
    # The bus has a pool of its own: requests waiting for connections under load must not
    # hold up the relay and consumers (nor are its statements counted in a request's queries).
    bus_db = await Database.connect(
        config.database.url,
        min_size=1,
        max_size=config.events.pool,
        observe=app[keys.METRICS].observe_db,
        durable_commits=False,  # see EventBus
    )
    bus = EventBus(
        config.events,
        bus_db,
        config.database.url,
        app[keys.AMQP],
        [
            *consumers_for(config, bus_db, reach, app[keys.METRICS]),
            *app[keys.EXTRA_CONSUMERS],
        ],
        app[keys.CLOCK],
        EventMetrics(app[keys.METRICS].registry),
        relay=config.events.relay,
        consume=config.events.consumers,
    )
    bus.start()
    # The counter fold (storage/content.py) on every node, on this pool: its commits need no
    # WAL flush (a fold lost in a crash is lost whole, deltas and sums together).
    fold = Periodic(
        "counter-fold",
        COUNTER_FOLD_INTERVAL,
        app[keys.CLOCK],
        PostStore(bus_db).fold_all_counters,
    )
    fold.start()
    app[keys.DB].events_committed = bus.committed  # the stores' commits wake the relay
    app[keys.EVENTS] = bus
    log.info(
        "events: %s%s%s",
        bus.transport,
        ", relaying" if bus.relay else "",
        f", consumers {', '.join(r.name for r in bus.runners)}" if bus.runners else "",
    )
    yield
    await bounded(fold.stop(), "stopping the counter fold")
    await bounded(bus.stop(), "stopping the event relay and consumers")
    await bus_db.close()


def create_app(
    config: Config, *, clock: Clock | None = None, consumers: Sequence[Consumer] = ()
) -> web.Application:
    """Build a node. ``config`` must be resolved: database and Redis URLs and JWT secret set.
    ``consumers`` run beside the node's own event consumers (tests, extensions)."""
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[envelope_middleware, hardening.cors_preflight],
    )
    hardening.install(app)
    app[keys.CONFIG] = config
    app[keys.CLOCK] = clock or Clock()
    app[keys.METRICS] = Metrics()
    app[keys.IN_FLIGHT] = InFlight()
    app[keys.EXTRA_CONSUMERS] = list(consumers)
    app.cleanup_ctx.extend(
        [_database, _redis, _amqp, _services, _search, _realtime, _stats, _housekeeping, _events]
    )

    app[keys.ENDPOINTS] = mount(app, API_PREFIX, REST_TABLES)
    ops.add_routes(app)
    ws.add_routes(app)
    media.add_routes(app)
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader([HERE / "templates", web_client.TEMPLATES]),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    docs.add_routes(app, str(HERE / "static"))
    web_client.add_routes(app)
    return app
