"""The configured services (or the embedded ones), resolved once per bench command.

The bench reads the same environment as a node (``agora.config.load_config``). What is not
configured is started embedded under ``AGORA_DATA_DIR`` exactly as ``agora migrate`` does, and the
nodes the bench spawns are then given the resolved URLs explicitly, so any number of them share
one PostgreSQL and one Redis and the bench can write fixtures into the same database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from agora.config import Config, load_config, redact
from agora.server.run import resolve

# Used when AGORA_JWT_SECRET is not set, so the bench can mint tokens the nodes accept.
BENCH_JWT_SECRET = "agora-bench-only-secret-0123456789abcdef"

# Spawned nodes keep their rate limits on (the limiter's cost is part of what is measured) but
# multiplied by this, so a bench that signs in hundreds of users from 127.0.0.1 and drives
# thousands of requests per account never trips them. Not applied when the caller's environment
# chooses limits itself (any AGORA_RATE_LIMIT_<NAME> or AGORA_RATE_LIMIT_SCALE).
BENCH_RATE_LIMIT_SCALE = "1000000"
RATE_LIMIT_PREFIX = "AGORA_RATE_LIMIT_"


def bench_rate_limits(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The rate-limit settings a spawned node gets on top of ``environ`` (default: this
    process's): ``AGORA_RATE_LIMIT_SCALE`` large, unless ``environ`` sets limits itself."""
    environ = dict(os.environ) if environ is None else environ
    if any(k.startswith(RATE_LIMIT_PREFIX) for k in environ):
        return {}
    return {"AGORA_RATE_LIMIT_SCALE": BENCH_RATE_LIMIT_SCALE}


@dataclass(frozen=True)
class Services:
    config: Config  # database URL, Redis URL (when needed) and JWT secret filled in

    @property
    def database_url(self) -> str:
        assert self.config.database.url is not None
        return self.config.database.url

    @property
    def jwt_secret(self) -> str:
        assert self.config.auth.jwt_secret is not None
        return self.config.auth.jwt_secret

    def describe(self) -> str:
        """The database URL without its password, for progress lines and reports."""
        return redact(self.database_url)

    def node_env(self, node_id: str, **extra: str) -> dict[str, str]:
        """Environment for a node on these services: the caller's ``AGORA_*`` settings with the
        resolved URLs and secret, ``AGORA_LOG_LEVEL=WARNING``, rate limits scaled out of reach
        (:func:`bench_rate_limits`), and ``extra``."""
        env = dict(os.environ)
        env.update(bench_rate_limits(env))
        env.update(
            {
                "AGORA_DATABASE_URL": self.database_url,
                "AGORA_JWT_SECRET": self.jwt_secret,
                "AGORA_REDIS_PREFIX": self.config.redis.prefix,
                "AGORA_NODE_ID": node_id,
                "AGORA_LOG_LEVEL": "WARNING",
            }
        )
        if self.config.redis.url is not None:
            env["AGORA_REDIS_URL"] = self.config.redis.url
        env.update(extra)
        return env


@contextmanager
def resolved_services(*, need_redis: bool) -> Iterator[Services]:
    """Resolve the configured services, starting embedded ones where nothing is configured
    (stopped again on exit). With ``need_redis`` the data dir is locked, as a node locks it."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    config = load_config()
    if config.auth.jwt_secret is None:
        config = replace(config, auth=replace(config.auth, jwt_secret=BENCH_JWT_SECRET))
    resolved, embedded = resolve(config, need_redis=need_redis, lock=need_redis)
    try:
        yield Services(resolved)
    finally:
        embedded.stop()
