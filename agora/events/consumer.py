"""What a consumer is: a name (its queue), the event types it is bound to, and one method.

The runner (:mod:`agora.events.runner`) owns everything else: acks, idempotency, retries with
backoff and the dead-letter queue. A consumer only says what an event does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from agora.events.types import Event
from agora.storage.db import Tx

AfterCommit = Callable[[], Awaitable[None]]


class Consumer(Protocol):
    #: Its queue is ``agora.<name>`` (RabbitMQ) or ``<name>`` in ``events.deliveries``.
    name: str
    #: The event types (routing keys) its queue is bound to.
    handles: frozenset[str]

    async def handle(self, events: list[Event], tx: Tx) -> AfterCommit | None:
        """Apply ``events`` (in order; each one this consumer has not handled before) inside
        ``tx``, the transaction that also records them as handled. Raise to have them retried
        (the runner then retries each one alone, so one poison event cannot hold back the
        others). What must happen only once the effect is committed (pushing frames to
        sockets) goes in the returned callable: it runs after the commit, at most once, and its
        failure is logged, not retried."""
        ...


class Reach(Protocol):
    """How a consumer reaches users' sessions on whichever node they are."""

    async def push(self, users: Iterable[int], frames: list[bytes]) -> None:
        """Send encoded frames to every open session of these users (best effort)."""
        ...

    async def online(self, users: Iterable[int]) -> set[int]:
        """The users of ``users`` with at least one open session somewhere."""
        ...
