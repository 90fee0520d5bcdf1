"""Prometheus metrics of the event layer, registered on the app's registry (or a worker's)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class EventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.published = Counter(
            "agora_events_published_total",
            "Events relayed from the outbox (confirmed by RabbitMQ, or queued in process)",
            ["type"],
            registry=r,
        )
        self.consumed = Counter(
            "agora_events_consumed_total",
            "Events handled by a consumer (repeats of handled events not counted)",
            ["consumer", "type"],
            registry=r,
        )
        self.lag = Histogram(
            "agora_event_lag_seconds",
            "From an event's commit to the commit of a consumer's effect",
            ["consumer"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.duplicates = Counter(
            "agora_events_duplicates_total",
            "Deliveries of events a consumer had handled before (dropped)",
            ["consumer"],
            registry=r,
        )
        self.failures = Counter(
            "agora_event_consumer_failures_total",
            "Failed attempts to handle an event",
            ["consumer"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "agora_events_dead_lettered_total",
            "Events sent to a consumer's dead-letter queue",
            ["consumer"],
            registry=r,
        )
        self.backlog = Gauge(
            "agora_outbox_backlog", "Events committed and not yet relayed", registry=r
        )
        self.oldest_age = Gauge(
            "agora_outbox_oldest_unsent_age_seconds",
            "Age of the oldest event not yet relayed (0 when none waits)",
            registry=r,
        )
        self.broker_up = Gauge(
            "agora_events_broker_up",
            "1 while the relay can publish (RabbitMQ reachable, or in-process mode)",
            registry=r,
        )
        self.dead_letters = Gauge(
            "agora_events_dead_letters",
            "Events waiting in a consumer's dead-letter queue",
            ["consumer"],
            registry=r,
        )
        self._consumed_children: dict[tuple[str, str], Any] = {}
        self._published_children: dict[str, Any] = {}

    def count_published(self, event_type: str) -> None:
        child = self._published_children.get(event_type)
        if child is None:
            child = self._published_children[event_type] = self.published.labels(event_type)
        child.inc()

    def count_consumed(self, consumer: str, event_type: str) -> None:
        key = (consumer, event_type)
        child = self._consumed_children.get(key)
        if child is None:
            child = self._consumed_children[key] = self.consumed.labels(consumer, event_type)
        child.inc()
