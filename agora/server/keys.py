"""Typed application state (aiohttp ``AppKey``s): what the app factory builds, handlers read."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiohttp import web

from agora.clock import Clock
from agora.config import Config

if TYPE_CHECKING:
    from agora.actors.conversation import ConversationDirectory
    from agora.actors.session import SessionRegistry
    from agora.cluster.nodes import NodeRegistry
    from agora.cluster.presence import Presence
    from agora.cluster.router import Router
    from agora.events.bus import EventBus
    from agora.events.consumer import Consumer
    from agora.server.amqp import Amqp
    from agora.server.metrics import Metrics
    from agora.server.middleware import InFlight
    from agora.server.routing import Endpoint
    from agora.services.accounts import AccountService
    from agora.services.activity import ActivityTracker
    from agora.services.chat import ChatService
    from agora.services.feed import FeedService
    from agora.services.invalidation import Invalidator
    from agora.services.media import MediaService
    from agora.services.moderation import ModerationService
    from agora.services.notifications import NotificationService
    from agora.services.posts import PostService
    from agora.services.ratelimit import Limiter
    from agora.services.realtime import Realtime
    from agora.services.search import SearchService
    from agora.services.social import SocialService
    from agora.services.stats import StatsService
    from agora.storage.db import Database
    from agora.storage.redis import Keys

CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey("clock", Clock)
REDIS = web.AppKey("redis", aioredis.Redis)
# The rest are typed by annotation: their classes import this module, so they cannot be
# imported here at run time.
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("in_flight")
ENDPOINTS: web.AppKey[list[Endpoint]] = web.AppKey("endpoints")
DB: web.AppKey[Database] = web.AppKey("db")
REDIS_KEYS: web.AppKey[Keys] = web.AppKey("redis_keys")
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
AMQP: web.AppKey[Amqp | None] = web.AppKey("amqp")
ACCOUNTS: web.AppKey[AccountService] = web.AppKey("accounts")
SOCIAL: web.AppKey[SocialService] = web.AppKey("social")
FEED: web.AppKey[FeedService] = web.AppKey("feed")
INVALIDATOR: web.AppKey[Invalidator] = web.AppKey("invalidator")
POSTS: web.AppKey[PostService] = web.AppKey("posts")
CHAT: web.AppKey[ChatService] = web.AppKey("chat")
SESSIONS: web.AppKey[SessionRegistry] = web.AppKey("sessions")
CONVERSATIONS: web.AppKey[ConversationDirectory] = web.AppKey("conversations")
NODES: web.AppKey[NodeRegistry] = web.AppKey("nodes")
PRESENCE: web.AppKey[Presence] = web.AppKey("presence")
ROUTER: web.AppKey[Router] = web.AppKey("router")
REALTIME: web.AppKey[Realtime] = web.AppKey("realtime")
NOTIFICATIONS: web.AppKey[NotificationService] = web.AppKey("notifications")
EVENTS: web.AppKey[EventBus] = web.AppKey("events")
SEARCH: web.AppKey[SearchService] = web.AppKey("search")
MEDIA: web.AppKey[MediaService] = web.AppKey("media")
MODERATION: web.AppKey[ModerationService] = web.AppKey("moderation")
EXTRA_CONSUMERS: web.AppKey[list[Consumer]] = web.AppKey("extra_consumers")
ACTIVITY: web.AppKey[ActivityTracker] = web.AppKey("activity")
STATS: web.AppKey[StatsService] = web.AppKey("stats")
