"""Prometheus metrics of one application: requests per route template and status, and the index.

Each application has its own registry (so several apps in one process never share counters). The
index gauges are read from the service state at scrape time, so they follow every swap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from index_store.manifest import Manifest

# Seconds; a search on the CPU takes about a second, saliency with recomputed crops several.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class IndexReading:
    """What the index gauges show: the active manifest (None when none is active) and readiness."""

    manifest: Manifest | None
    ready: bool
    cached_queries: int


class ServiceMetrics:
    """The registry of one app, with the request counter and latency histogram."""

    def __init__(self, read_index: Callable[[], IndexReading]):
        self.registry = CollectorRegistry()
        self.requests = Counter("chextriev_http_requests", "HTTP requests answered",
                                ("route", "method", "status"), registry=self.registry)
        self.latency = Histogram("chextriev_http_request_duration_seconds", "HTTP request latency",
                                 ("route", "method", "status"), buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.registry.register(_IndexCollector(read_index))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every metric and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _IndexCollector(Collector):
    """Index size, version and readiness, read when scraped."""

    def __init__(self, read_index: Callable[[], IndexReading]):
        self._read_index = read_index

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reading = self._read_index()
        manifest = reading.manifest
        yield GaugeMetricFamily("chextriev_ready", "1 when the model and an index snapshot are loaded",
                                value=1.0 if reading.ready else 0.0)
        yield GaugeMetricFamily("chextriev_index_size", "cases in the active index snapshot",
                                value=float(manifest.count if manifest else 0))
        info = GaugeMetricFamily("chextriev_index_info", "the active index snapshot (value 1)",
                                 labels=("version", "model_fingerprint", "factory", "dimension"))
        if manifest is not None:
            info.add_metric((manifest.version, manifest.model_fingerprint, manifest.factory,
                             str(manifest.dimension)), 1.0)
        yield info
        yield GaugeMetricFamily("chextriev_cached_queries", "queries held for saliency requests",
                                value=float(reading.cached_queries))
