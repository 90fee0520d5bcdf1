"""Configuration: read once from the environment, validated, then frozen.

One frozen struct per section. A bad value raises :class:`ConfigError` naming the variable;
``agora`` prints that one line and exits with status 2. Secrets come only from the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

ENVIRONMENTS = ("development", "production", "test")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MIN_SECRET_LENGTH = 32


class ConfigError(Exception):
    """A configuration value is missing or wrong; ``str()`` is the one line shown to the user."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class DatabaseConfig:
    url: str | None  # None: start the embedded PostgreSQL
    pool_min: int = 2
    pool_max: int = 20

    @property
    def embedded(self) -> bool:
        return self.url is None


@dataclass(frozen=True)
class RedisConfig:
    url: str | None  # None: start the embedded Redis
    prefix: str = "agora:"

    @property
    def embedded(self) -> bool:
        return self.url is None


@dataclass(frozen=True)
class AuthConfig:
    jwt_secret: str | None  # None outside production: generated under the data dir
    access_ttl: int = 15 * 60
    refresh_ttl: int = 30 * 24 * 3600
    password_time_cost: int = 3
    password_memory_kib: int = 64 * 1024
    session_recheck: float = 60.0  # seconds between re-checks of open sessions' logins
    purge_interval: float = 3600.0  # seconds between purges of old logins and refresh tokens
    # Revoked and expired logins and used refresh tokens are purged after this long; revoked
    # ones must outlive their access tokens (nodes reload them at start-up).
    login_retention: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class WebSocketConfig:
    rate_limit: float = 20.0  # sustained frames/s per session; 0 = no limit
    rate_burst: int = 40
    outbound_queue: int = 1000  # frames queued for one client before it is dropped
    max_sessions_per_user: int = 100  # open sessions of one account on one node
    max_frame_bytes: int = 64 * 1024
    heartbeat: float = 20.0


@dataclass(frozen=True)
class ClusterConfig:
    heartbeat: float = 2.0  # seconds between node heartbeats
    node_timeout: float = 10.0  # a node silent this long is dead (noticed within ~12 s)
    answer_timeout: float = 5.0  # a forwarded command unanswered this long: "retry"
    presence_debounce: float = 5.0  # offline is announced only after this long without sessions
    conversation_idle: float = 60.0  # an idle conversation actor stops after this long
    max_conversations: int = 10_000  # live conversation actors per node (idle ones evicted)


@dataclass(frozen=True)
class EventsConfig:
    exchange: str = "agora.events"  # RabbitMQ topic exchange; queues are "<exchange>.<consumer>"
    relay: bool = True  # this process relays the outbox
    consumers: bool = True  # this process runs the event consumers (agora worker always does)
    prefetch: int = 256  # unacknowledged deliveries per consumer
    max_attempts: int = 5  # attempts before an event goes to the dead-letter queue
    retry_backoff: float = 0.5  # seconds before the first retry; doubled for each next one
    lease: float = 120.0  # in-process mode: seconds a taken delivery waits before redelivery
    poll: float = 2.0  # the relay and in-process queues look without a notification this often
    gather: float = 0.005  # seconds between the starts of two relay drains, at least
    pool: int = 8  # connections of the relay (4 lanes) and consumers, apart from requests'
    retention: float = 7 * 24 * 3600.0  # sent events and handled-event records are kept this long
    purge_interval: float = 3600.0
    vacuum_interval: float = 5.0  # seconds between VACUUMs of the churning event tables


@dataclass(frozen=True)
class SearchConfig:
    rate_limit: int = 120  # searches per account per minute; 0 = no limit
    pool: int = 4  # PostgreSQL connections of the full-text candidate queries
    # Ranking windows a node keeps and shares between searches of the same words (PostgreSQL
    # backend): how long (a post shows in search this long after it is written, at most) and
    # how many (about 3 kB each). 0: none.
    cache_ttl: float = 2.0
    cache_size: int = 1000
    # Elasticsearch (only with AGORA_ELASTICSEARCH_URL): indices and aliases are named
    # "<index_prefix>-users|posts|messages"; a request waits at most `timeout` seconds.
    index_prefix: str = "agora"
    timeout: float = 5.0


@dataclass(frozen=True)
class MediaConfig:
    max_bytes: int = 10 * 1024 * 1024  # an upload's body, enforced while it is read
    max_pixels: int = 33_177_600  # width x height (Mastodon's), refused before decoding in full
    workers: int = 2  # threads decoding and resizing images, apart from the event loop
    library: str | None = None  # "vips" or "pillow" (None: agora.media.imaging.DEFAULT)
    url_ttl: float = 3600.0  # seconds a signed URL of a non-public post's media works
    upload_limit: int = 30  # uploads per account within upload_window seconds (Mastodon: 30/30 min)
    upload_window: int = 1800
    orphan_age: float = 86_400.0  # unattached uploads older than this are removed
    # S3-compatible storage (all of bucket, endpoint... set: S3; otherwise the media directory)
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_prefix: str = ""


Per = Literal["account", "address", "account_address"]


@dataclass(frozen=True, slots=True)
class Rule:
    """``limit`` actions per ``period`` seconds for each subject (an account, a client address
    with IPv6 grouped by /64, or an account from an address); ``limit`` 0 turns it off."""

    name: str
    limit: int
    period: float
    per: Per = "account"

    @property
    def on(self) -> bool:
        return self.limit > 0


# Mastodon's published defaults where it has one (its rack-attack throttles and status limits);
# each is AGORA_RATE_LIMIT_<NAME> = "<limit>/<seconds>", or 0 to turn it off.
RATE_RULES: tuple[Rule, ...] = (
    Rule("api", 300, 300),  # every authenticated API request
    Rule("api_anonymous", 300, 300, "address"),  # every API request without a token
    Rule("register", 5, 1800, "address"),
    Rule("login", 25, 300, "address"),  # sign-in attempts from one address
    Rule("login_account", 25, 300),  # successful sign-ins to one account
    Rule("login_failures", 10, 900, "account_address"),  # failed ones, per account and address
    Rule("posts", 300, 3 * 3600),
    Rule("comments", 300, 3 * 3600),
    Rule("reactions", 600, 3600),
    Rule("friend_requests", 400, 24 * 3600),
    Rule("messages", 120, 60),  # REST and WebSocket `send`
    Rule("uploads", 30, 1800),
    Rule("deletes", 30, 1800),
    Rule("search", 120, 60),
    Rule("reports", 30, 1800),
)


@dataclass(frozen=True)
class RateLimitConfig:
    enabled: bool = True
    rules: Mapping[str, Rule] = field(default_factory=lambda: {r.name: r for r in RATE_RULES})
    # Peers whose X-Forwarded-For is believed (the proxies in front of the node); none: the
    # address of the connection is the client's.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    password_workers: int = 2  # argon2 threads (64 MiB each at the default cost)
    password_queue: int = 8  # hashes waiting beyond the workers; more are refused with 503

    def __getitem__(self, name: str) -> Rule:
        return self.rules[name]

    def but(self, **rules: tuple[int, float]) -> RateLimitConfig:
        """These limits with some rules changed: ``but(posts=(3, 60))``."""
        changed = {
            n: replace(self.rules[n], limit=lim, period=per) for n, (lim, per) in rules.items()
        }
        return replace(self, rules={**self.rules, **changed})


MAX_PATTERN_LENGTH = 200
MAX_FILTER_ENTRIES = 500
# A group that repeats and holds a repetition itself: (a+)+, (\w*)*, (x+){2,} ... the shapes
# whose backtracking explodes.
_NESTED_REPEAT = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,)")


@dataclass(frozen=True)
class ModerationConfig:
    """The word filter (agora/services/wordfilter.py): whole words, case-insensitive, and
    regular expressions; a post or comment matching either is held for review."""

    words: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


def _moderation(env: Mapping[str, str]) -> ModerationConfig:
    words_raw = _get(env, "AGORA_MODERATION_WORDS")
    words = tuple(
        dict.fromkeys(w.strip().lower() for w in (words_raw or "").split(",") if w.strip())
    )
    patterns_raw = _get(env, "AGORA_MODERATION_PATTERNS")
    patterns = tuple(p.strip() for p in (patterns_raw or "").splitlines() if p.strip())
    if len(words) > MAX_FILTER_ENTRIES:
        raise ConfigError("AGORA_MODERATION_WORDS", f"at most {MAX_FILTER_ENTRIES} words")
    if len(patterns) > MAX_FILTER_ENTRIES:
        raise ConfigError("AGORA_MODERATION_PATTERNS", f"at most {MAX_FILTER_ENTRIES} patterns")
    for pattern in patterns:
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise ConfigError(
                "AGORA_MODERATION_PATTERNS",
                f"{pattern[:40]!r}... is longer than {MAX_PATTERN_LENGTH} characters",
            )
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                "AGORA_MODERATION_PATTERNS", f"{pattern!r} is not a regular expression: {exc}"
            ) from None
        if _NESTED_REPEAT.search(pattern):
            raise ConfigError(
                "AGORA_MODERATION_PATTERNS",
                f"{pattern!r} repeats a group that repeats itself (catastrophic backtracking)",
            )
    return ModerationConfig(words=words, patterns=patterns)


@dataclass(frozen=True)
class Config:
    env: str
    node_id: str
    data_dir: Path
    media_dir: Path
    log_level: str
    database: DatabaseConfig
    redis: RedisConfig
    auth: AuthConfig
    ws: WebSocketConfig = field(default_factory=WebSocketConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    amqp_url: str | None = None
    elasticsearch_url: str | None = None
    metrics_token: str | None = None
    # Browsers' cross-origin calls: the origins allowed (exact "https://app.example.com", or
    # "*" for any); none: no cross-origin call is allowed.
    cors_origins: tuple[str, ...] = ()
    hsts_seconds: int = 0  # Strict-Transport-Security max-age when served over HTTPS; 0: not sent
    max_body_bytes: int = 1024 * 1024
    feed_cache_size: int = 800  # posts per user kept in Redis; 0 = feeds read PostgreSQL only
    feed_page_cache: int = 20_000  # encoded feed pages kept in memory per node; 0 = none
    shutdown_timeout: float = 8.0

    @property
    def production(self) -> bool:
        return self.env == "production"

    def with_overrides(self, **changes: object) -> Config:
        return replace(self, **changes)  # type: ignore[arg-type]


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _set_fields(env: Mapping[str, str], fields: dict[str, tuple[str, _Kind]]) -> dict[str, Any]:
    """``{field: (VARIABLE, kind)}`` -> the fields whose variable is set, parsed. The defaults
    live on the dataclasses alone, so a variable that is not set takes them as they are."""
    out: dict[str, Any] = {}
    for field_name, (name, (parse, what)) in fields.items():
        raw = _get(env, name)
        if raw is None:
            continue
        try:
            out[field_name] = parse(raw)
        except (ValueError, TypeError):
            raise ConfigError(name, f"must be {what}, got {raw!r}") from None
    return out


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError(raw)
    return value


def _positive_float(raw: str) -> float:
    value = _non_negative_float(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


_Kind = tuple[Callable[[str], Any], str]  # parser, and what a good value is (for the error)
POSITIVE_INT: _Kind = (_positive_int, "a positive integer")
NON_NEGATIVE_INT: _Kind = (_non_negative_int, "a non-negative integer")
SECONDS: _Kind = (_positive_float, "a positive number of seconds")
SECONDS_OR_ZERO: _Kind = (_non_negative_float, "a non-negative number of seconds")
FRAME_RATE: _Kind = (_non_negative_float, "a non-negative number of frames per second")


def _switch(raw: str) -> bool:
    value = raw.lower()
    if value not in ("on", "off", "true", "false", "1", "0"):
        raise ValueError(raw)
    return value in ("on", "true", "1")


def _exchange(raw: str) -> str:
    if not _PREFIX.match(raw):
        raise ValueError(raw)
    return raw


def _index_prefix(raw: str) -> str:
    # Elasticsearch index names: lowercase, no leading '-', '_' or '+', none of \/*?"<>| ,#:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", raw):
        raise ValueError(raw)
    return raw


def _imaging_library(raw: str) -> str:
    if raw not in ("vips", "pillow"):
        raise ValueError(raw)
    return raw


SWITCH: _Kind = (_switch, "on or off")
SCALE: _Kind = (_positive_float, "a positive number (a factor applied to every rate limit)")
IMAGING_LIBRARY: _Kind = (_imaging_library, "vips or pillow")
INDEX_PREFIX: _Kind = (
    _index_prefix,
    "1-64 lowercase letters, digits or '_.-', starting with a letter or digit",
)
EXCHANGE: _Kind = (_exchange, "1-64 letters, digits or '_.:-'")


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = _get(env, name)
    if raw is None:
        return ()
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                name, f"{origin!r} is not an origin like https://app.example.com (or *)"
            )
    return origins


def _rate(raw: str) -> tuple[int, float]:
    if raw == "0":
        return 0, 1.0
    count, sep, seconds = raw.partition("/")
    limit, period = int(count), float(seconds)
    if not sep or limit < 0 or not 0 < period < float("inf"):
        raise ValueError(raw)
    return limit, period


def _networks(
    env: Mapping[str, str], name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    raw = _get(env, name)
    if raw is None:
        return ()
    try:
        return tuple(
            ipaddress.ip_network(p.strip(), strict=False) for p in raw.split(",") if p.strip()
        )
    except ValueError:
        raise ConfigError(
            name, f"must be addresses or networks like 10.0.0.0/8, ::1, got {raw!r}"
        ) from None


def _limits(env: Mapping[str, str], search: SearchConfig, media: MediaConfig) -> RateLimitConfig:
    """The rate limits: the defaults, then the older single settings (searches per minute,
    uploads per window), then AGORA_RATE_LIMIT_<NAME>, then AGORA_RATE_LIMIT_SCALE."""
    rules = {r.name: r for r in RATE_RULES}
    rules["search"] = replace(rules["search"], limit=search.rate_limit, period=60)
    rules["uploads"] = replace(
        rules["uploads"], limit=media.upload_limit, period=media.upload_window
    )
    for rule in RATE_RULES:
        name = f"AGORA_RATE_LIMIT_{rule.name.upper()}"
        raw = _get(env, name)
        if raw is None:
            continue
        try:
            limit, period = _rate(raw)
        except ValueError:
            raise ConfigError(
                name, f"must be <limit>/<seconds> like 300/300, or 0 for none, got {raw!r}"
            ) from None
        rules[rule.name] = replace(rule, limit=limit, period=period)
    scale = _set_fields(env, {"scale": ("AGORA_RATE_LIMIT_SCALE", SCALE)}).get("scale", 1.0)
    if scale != 1.0:
        rules = {
            n: replace(r, limit=max(1, round(r.limit * scale)) if r.limit else 0)
            for n, r in rules.items()
        }
    return RateLimitConfig(
        rules=rules,
        trusted_proxies=_networks(env, "AGORA_TRUSTED_PROXIES"),
        **_set_fields(
            env,
            {
                "enabled": ("AGORA_RATE_LIMITS", SWITCH),
                "password_workers": ("AGORA_PASSWORD_WORKERS", POSITIVE_INT),
                "password_queue": ("AGORA_PASSWORD_QUEUE", NON_NEGATIVE_INT),
            },
        ),
    )


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    raw = _get(env, name)
    if raw is None:
        return None
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in schemes or not rest:
        raise ConfigError(
            name, f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
        )
    return raw


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{secrets.token_hex(3)}"


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env

    mode = (_get(env, "AGORA_ENV") or "development").lower()
    if mode not in ENVIRONMENTS:
        raise ConfigError("AGORA_ENV", f"must be one of {', '.join(ENVIRONMENTS)}, got {mode!r}")

    level = (_get(env, "AGORA_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError("AGORA_LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")

    node_id = _get(env, "AGORA_NODE_ID") or default_node_id()
    if not _NODE_ID.match(node_id):
        raise ConfigError("AGORA_NODE_ID", "must be 1-64 letters, digits, '_', '.' or '-'")

    data_dir = Path(_get(env, "AGORA_DATA_DIR") or "var").absolute()
    media_raw = _get(env, "AGORA_MEDIA_DIR")
    media_dir = Path(media_raw).absolute() if media_raw else data_dir / "media"

    secret = _get(env, "AGORA_JWT_SECRET")
    if secret is None and mode == "production":
        raise ConfigError("AGORA_JWT_SECRET", "is required when AGORA_ENV=production")
    if secret is not None and len(secret.encode()) < MIN_SECRET_LENGTH:
        raise ConfigError("AGORA_JWT_SECRET", f"must be at least {MIN_SECRET_LENGTH} bytes long")

    auth = AuthConfig(
        jwt_secret=secret,
        **_set_fields(
            env,
            {
                "access_ttl": ("AGORA_ACCESS_TOKEN_TTL", POSITIVE_INT),
                "refresh_ttl": ("AGORA_REFRESH_TOKEN_TTL", POSITIVE_INT),
                "session_recheck": ("AGORA_SESSION_RECHECK", SECONDS),
                "purge_interval": ("AGORA_PURGE_INTERVAL", SECONDS),
                "login_retention": ("AGORA_LOGIN_RETENTION", SECONDS),
            },
        ),
    )
    if auth.login_retention < auth.access_ttl + 300:
        raise ConfigError(
            "AGORA_LOGIN_RETENTION",
            f"must be at least {auth.access_ttl + 300}s (an access token's life plus 5 minutes)",
        )

    prefix = _get(env, "AGORA_REDIS_PREFIX") or "agora:"
    if not _PREFIX.match(prefix):
        raise ConfigError("AGORA_REDIS_PREFIX", "must be 1-64 letters, digits or '_.:-'")

    database = DatabaseConfig(
        url=_url(env, "AGORA_DATABASE_URL", ("postgres", "postgresql")),
        **_set_fields(
            env,
            {
                "pool_min": ("AGORA_DB_POOL_MIN", POSITIVE_INT),
                "pool_max": ("AGORA_DB_POOL_MAX", POSITIVE_INT),
            },
        ),
    )
    if database.pool_max < database.pool_min:
        raise ConfigError(
            "AGORA_DB_POOL_MAX", f"must be >= AGORA_DB_POOL_MIN ({database.pool_min})"
        )

    ws = WebSocketConfig(
        **_set_fields(
            env,
            {
                "rate_limit": ("AGORA_WS_RATE_LIMIT", FRAME_RATE),
                "outbound_queue": ("AGORA_WS_OUTBOUND_QUEUE", POSITIVE_INT),
                "max_sessions_per_user": ("AGORA_WS_MAX_SESSIONS_PER_USER", POSITIVE_INT),
            },
        )
    )
    ws = replace(ws, rate_burst=max(1, int(ws.rate_limit * 2)))
    cluster = ClusterConfig(
        **_set_fields(
            env,
            {
                "heartbeat": ("AGORA_CLUSTER_HEARTBEAT", SECONDS),
                "node_timeout": ("AGORA_CLUSTER_NODE_TIMEOUT", SECONDS),
                "presence_debounce": ("AGORA_PRESENCE_DEBOUNCE", SECONDS_OR_ZERO),
                "max_conversations": ("AGORA_MAX_CONVERSATION_ACTORS", POSITIVE_INT),
            },
        )
    )
    if cluster.node_timeout < 2 * cluster.heartbeat:
        raise ConfigError(
            "AGORA_CLUSTER_NODE_TIMEOUT",
            f"must be at least twice AGORA_CLUSTER_HEARTBEAT ({cluster.heartbeat}s)",
        )

    events = EventsConfig(
        **_set_fields(
            env,
            {
                "exchange": ("AGORA_EVENTS_EXCHANGE", EXCHANGE),
                "relay": ("AGORA_EVENTS_RELAY", SWITCH),
                "consumers": ("AGORA_EVENTS_CONSUMERS", SWITCH),
                "prefetch": ("AGORA_EVENTS_PREFETCH", POSITIVE_INT),
                "max_attempts": ("AGORA_EVENTS_MAX_ATTEMPTS", POSITIVE_INT),
                "retry_backoff": ("AGORA_EVENTS_RETRY_BACKOFF", SECONDS),
                "lease": ("AGORA_EVENTS_LEASE", SECONDS),
                "gather": ("AGORA_EVENTS_GATHER", SECONDS_OR_ZERO),
                "pool": ("AGORA_EVENTS_DB_POOL", POSITIVE_INT),
                "retention": ("AGORA_EVENTS_RETENTION", SECONDS),
                "purge_interval": ("AGORA_EVENTS_PURGE_INTERVAL", SECONDS),
                "vacuum_interval": ("AGORA_EVENTS_VACUUM_INTERVAL", SECONDS),
            },
        )
    )

    search = SearchConfig(
        **_set_fields(
            env,
            {
                "rate_limit": ("AGORA_SEARCH_RATE_LIMIT", NON_NEGATIVE_INT),
                "pool": ("AGORA_SEARCH_DB_POOL", POSITIVE_INT),
                "cache_ttl": ("AGORA_SEARCH_CACHE_TTL", SECONDS_OR_ZERO),
                "cache_size": ("AGORA_SEARCH_CACHE_SIZE", NON_NEGATIVE_INT),
                "index_prefix": ("AGORA_ELASTICSEARCH_INDEX_PREFIX", INDEX_PREFIX),
                "timeout": ("AGORA_ELASTICSEARCH_TIMEOUT", SECONDS),
            },
        )
    )

    media = MediaConfig(
        **_set_fields(
            env,
            {
                "max_bytes": ("AGORA_MEDIA_MAX_BYTES", POSITIVE_INT),
                "max_pixels": ("AGORA_MEDIA_MAX_PIXELS", POSITIVE_INT),
                "workers": ("AGORA_MEDIA_WORKERS", POSITIVE_INT),
                "url_ttl": ("AGORA_MEDIA_URL_TTL", SECONDS),
                "upload_limit": ("AGORA_MEDIA_UPLOAD_LIMIT", NON_NEGATIVE_INT),
                "orphan_age": ("AGORA_MEDIA_ORPHAN_AGE", SECONDS),
                "library": ("AGORA_MEDIA_LIBRARY", IMAGING_LIBRARY),
            },
        ),
        s3_bucket=_get(env, "AGORA_MEDIA_S3_BUCKET"),
        s3_endpoint=_url(env, "AGORA_MEDIA_S3_ENDPOINT", ("http", "https")),
        s3_region=_get(env, "AGORA_MEDIA_S3_REGION") or "us-east-1",
        s3_access_key_id=_get(env, "AGORA_MEDIA_S3_ACCESS_KEY_ID"),
        s3_secret_access_key=_get(env, "AGORA_MEDIA_S3_SECRET_ACCESS_KEY"),
        s3_prefix=_get(env, "AGORA_MEDIA_S3_PREFIX") or "",
    )

    return Config(
        env=mode,
        node_id=node_id,
        data_dir=data_dir,
        media_dir=media_dir,
        log_level=level,
        database=database,
        redis=RedisConfig(
            url=_url(env, "AGORA_REDIS_URL", ("redis", "rediss", "unix")), prefix=prefix
        ),
        auth=auth,
        ws=ws,
        cluster=cluster,
        events=events,
        search=search,
        media=media,
        moderation=_moderation(env),
        limits=_limits(env, search, media),
        amqp_url=_url(env, "AGORA_AMQP_URL", ("amqp", "amqps")),
        elasticsearch_url=_url(env, "AGORA_ELASTICSEARCH_URL", ("http", "https")),
        metrics_token=_get(env, "AGORA_METRICS_TOKEN"),
        cors_origins=_origins(env, "AGORA_CORS_ORIGINS"),
        **_set_fields(
            env,
            {
                "feed_cache_size": ("AGORA_FEED_CACHE_SIZE", NON_NEGATIVE_INT),
                "feed_page_cache": ("AGORA_FEED_PAGE_CACHE", NON_NEGATIVE_INT),
                "shutdown_timeout": ("AGORA_SHUTDOWN_TIMEOUT", SECONDS_OR_ZERO),
                "hsts_seconds": ("AGORA_HSTS_SECONDS", NON_NEGATIVE_INT),
            },
        ),
    )


def ensure_jwt_secret(config: Config, warn: Callable[[str], None]) -> Config:
    """Outside production a missing secret is generated once and kept under the data dir."""
    if config.auth.jwt_secret is not None:
        return config
    path = config.data_dir / "jwt_secret"
    if path.exists():
        secret = path.read_text().strip()
        if len(secret.encode()) < MIN_SECRET_LENGTH:  # emptied or cut short: not a key to sign with
            raise ConfigError(
                "AGORA_JWT_SECRET",
                f"is not set and {path} holds no usable secret; delete it to generate a new one",
            )
    else:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
    warn(
        f"AGORA_JWT_SECRET is not set; using the generated secret in {path} "
        "(set AGORA_JWT_SECRET for production)"
    )
    return replace(config, auth=replace(config.auth, jwt_secret=secret))
