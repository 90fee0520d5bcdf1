"""Prometheus metrics, one registry per app (so tests can run several apps in one process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from agora.search.postgres import WindowCache
from agora.services.feed_pages import FeedPages

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._db_children: dict[str, Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "agora_http_requests_total",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "agora_http_request_duration_seconds",
            "HTTP request handling time",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "agora_http_requests_in_flight", "HTTP requests being handled", registry=r
        )
        self.db_seconds = Histogram(
            "agora_db_statement_duration_seconds",
            "PostgreSQL statements and transactions by name",
            ["name"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ws_sessions = Gauge(
            "agora_ws_sessions", "Open WebSocket sessions on this node", registry=r
        )
        self.ws_frames_in = Counter(
            "agora_ws_frames_in_total", "Frames received from clients", ["type"], registry=r
        )
        self.ws_frames_out = Counter(
            "agora_ws_frames_out_total", "Frames sent to clients", registry=r
        )
        self.ws_closed = Counter(
            "agora_ws_closed_total", "Sessions closed by the server", ["reason"], registry=r
        )
        self.actors = Gauge("agora_actors", "Live actors on this node", ["kind"], registry=r)
        self.actor_restarts = Counter(
            "agora_actor_restarts_total", "Actors restarted after a crash", ["kind"], registry=r
        )
        self.notifications = Counter(
            "agora_notifications_total",
            "Notifications created (a grown group counts each notification it gained), by kind",
            ["kind"],
            registry=r,
        )

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time a request (label children cached: ``labels()`` is slow per call).
        Labels come from a bounded set (route templates, known methods), so no client can grow
        the registry by inventing paths or methods."""
        if method not in _METHODS:
            method = "other"
        key = (method, route, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def notification_created(self, kind: str) -> None:
        """The notifications consumer's ``on_created`` (kinds are a fixed set)."""
        self.notifications.labels(kind).inc()

    def observe_db(self, name: str, seconds: float) -> None:
        child = self._db_children.get(name)
        if child is None:
            child = self._db_children[name] = self.db_seconds.labels(name)
        child.observe(seconds)

    def watch_feed_pages(self, pages: FeedPages) -> None:
        """Export the feed page cache's own counters (read when /metrics is scraped)."""
        self.registry.register(_FeedPagesCollector(pages))

    def watch_search_windows(self, windows: WindowCache) -> None:
        """Export the search ranking windows a node shares (PostgreSQL backend)."""
        self.registry.register(_SearchWindowsCollector(windows))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FeedPagesCollector(Collector):
    def __init__(self, pages: FeedPages) -> None:
        self.pages = pages

    def collect(self) -> Iterator[Metric]:
        pages = self.pages
        yield CounterMetricFamily(
            "agora_feed_page_cache_hits", "Feed pages served from memory", value=pages.hits
        )
        yield CounterMetricFamily(
            "agora_feed_page_cache_misses", "Feed pages that had to be built", value=pages.misses
        )
        yield GaugeMetricFamily(
            "agora_feed_page_cache_bytes", "Bytes of encoded pages held", value=pages.bytes
        )
        yield GaugeMetricFamily(
            "agora_feed_page_cache_entries", "Encoded pages held", value=len(pages)
        )


class _SearchWindowsCollector(Collector):
    def __init__(self, windows: WindowCache) -> None:
        self.windows = windows

    def collect(self) -> Iterator[Metric]:
        windows = self.windows
        yield CounterMetricFamily(
            "agora_search_window_cache_hits",
            "Search ranking windows (and first-page starts) found in the node's memory",
            value=windows.hits,
        )
        yield CounterMetricFamily(
            "agora_search_window_cache_misses",
            "Search ranking windows (and first-page starts) read from PostgreSQL",
            value=windows.misses,
        )
        yield GaugeMetricFamily(
            "agora_search_window_cache_entries", "Search windows held", value=len(windows)
        )
