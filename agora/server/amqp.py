"""The RabbitMQ connection (when ``AGORA_AMQP_URL`` is set).

Domain events leave through the transactional outbox; this holds the broker connection that the
relay publishes on and that ``/readyz`` checks.
"""

from __future__ import annotations

import asyncio
import logging

import aiormq

log = logging.getLogger(__name__)


class Amqp:
    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: aiormq.abc.AbstractConnection | None = None

    async def connect(self, timeout: float = 10.0) -> None:
        self.connection = await asyncio.wait_for(aiormq.connect(self.url), timeout)

    @property
    def healthy(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    async def ensure(self) -> bool:
        """Reconnect if the broker went away; True when connected."""
        if self.healthy:
            return True
        try:
            await self.connect(timeout=2.0)
        except Exception:
            return False
        return self.healthy

    async def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            try:
                await asyncio.wait_for(self.connection.close(), 5.0)
            except Exception:
                log.warning("closing the AMQP connection failed", exc_info=True)
