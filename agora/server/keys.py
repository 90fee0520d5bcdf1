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
    from agora.services.chat import ChatService
    from agora.services.realtime import Realtime
    from agora.server.amqp import Amqp
    from agora.server.metrics import Metrics
    from agora.server.middleware import InFlight
    from agora.server.routing import Endpoint
    from agora.services.accounts import AccountService
    from agora.services.feed import FeedService
    from agora.services.invalidation import Invalidator
    from agora.services.posts import PostService
    from agora.services.social import SocialService
    from agora.storage.db import Database
    from agora.storage.redis import Keys

CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey("clock", Clock)
METRICS = web.AppKey("metrics", "Metrics")
IN_FLIGHT = web.AppKey("in_flight", "InFlight")
ENDPOINTS = web.AppKey("endpoints", "list[Endpoint]")
DB = web.AppKey("db", "Database")
REDIS = web.AppKey("redis", aioredis.Redis)
REDIS_KEYS = web.AppKey("redis_keys", "Keys")
AMQP = web.AppKey("amqp", "Amqp | None")
ACCOUNTS = web.AppKey("accounts", "AccountService")
SOCIAL = web.AppKey("social", "SocialService")
FEED = web.AppKey("feed", "FeedService")
INVALIDATOR = web.AppKey("invalidator", "Invalidator")
POSTS = web.AppKey("posts", "PostService")
CHAT = web.AppKey("chat", "ChatService")
SESSIONS = web.AppKey("sessions", "SessionRegistry")
CONVERSATIONS = web.AppKey("conversations", "ConversationDirectory")
NODES = web.AppKey("nodes", "NodeRegistry")
PRESENCE = web.AppKey("presence", "Presence")
ROUTER = web.AppKey("router", "Router")
REALTIME = web.AppKey("realtime", "Realtime")
