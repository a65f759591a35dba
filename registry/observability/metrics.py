"""Prometheus metric families of the API server and the validation worker.

Each app (and each worker) has a `CollectorRegistry` of its own: tests build many apps in one
process, and a family registered twice in the global registry is an error. Webhook deliveries
are counted process-wide (`observe_webhook_delivery`, called by the dispatcher wherever it
runs) and that one counter is registered into every registry built here.

Label values are bounded: routes are templates (``/api/v1/adapters/{name}``), never raw paths;
methods outside the standard set are counted as ``other``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "ApiMetrics", "JobStats", "WorkerMetrics", "generate_latest",
           "observe_webhook_delivery"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Request latencies: a health probe (sub-millisecond) up to a multi-gigabyte blob transfer.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
# A validation: seconds for a tiny model on a warm cache, tens of minutes for a 70B base.
VALIDATION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# delivered: the endpoint answered 2xx; retrying: this attempt failed, another is scheduled;
# failed: this attempt failed and no retry is left.
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed")

_webhook_deliveries = Counter(
    "registry_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retrying, failed)",
    ["outcome"], registry=None)
for _outcome in WEBHOOK_OUTCOMES:
    _webhook_deliveries.labels(_outcome)


def observe_webhook_delivery(outcome: str) -> None:
    """Count one webhook delivery attempt (the dispatcher calls it, wherever it runs).

    Args:
        outcome: one of ``WEBHOOK_OUTCOMES``; anything else is counted as ``other``, so the
            label stays bounded.
    """
    _webhook_deliveries.labels(outcome if outcome in WEBHOOK_OUTCOMES else "other").inc()


def _new_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_webhook_deliveries)
    return registry


@dataclass(frozen=True)
class JobStats:
    """The queue as one query sees it (see ``registry.jobs.queries.job_stats``)."""

    counts: dict[tuple[str, str], int]  # (kind, status) → jobs, every pair present
    queued: dict[str, int]  # kind → queued jobs
    oldest_queued_age: dict[str, float]  # kind → seconds the oldest runnable job has waited


class JobsCollector(Collector):
    """``registry_jobs``, ``registry_job_queue_depth``, ``registry_job_queue_oldest_age_seconds``
    computed from the jobs table at scrape time (a value kept in one replica's memory would
    contradict another's). A failed query drops these families from the scrape and sets
    ``registry_job_stats_up`` to 0, so the rest of the scrape still answers."""

    def __init__(self, stats: Callable[[], JobStats], on_error: Callable[[Exception], None]
                 ) -> None:
        self._stats = stats
        self._on_error = on_error

    def describe(self) -> Iterable[Any]:
        return []  # not known before the query; auto_describe must not run it at registration

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("registry_job_stats_up",
                               "1 when the last scrape could read the jobs table, else 0")
        try:
            stats = self._stats()
        except Exception as exc:  # a scrape must answer while the database does not
            self._on_error(exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("registry_jobs", "Jobs in the jobs table by kind and status",
                                 labels=["kind", "status"])
        for (kind, status), n in sorted(stats.counts.items()):
            jobs.add_metric([kind, status], n)
        yield jobs
        depth = GaugeMetricFamily("registry_job_queue_depth",
                                  "Queued jobs (waiting for a worker) by kind", labels=["kind"])
        age = GaugeMetricFamily(
            "registry_job_queue_oldest_age_seconds",
            "How long the oldest runnable queued job has waited, by kind (0: none waiting)",
            labels=["kind"])
        for kind, n in sorted(stats.queued.items()):
            depth.add_metric([kind], n)
            age.add_metric([kind], stats.oldest_queued_age.get(kind, 0.0))
        yield depth
        yield age


@dataclass
class ApiMetrics:
    """The API server's families, on a registry of their own."""

    registry: CollectorRegistry = field(default_factory=_new_registry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "registry_http_requests_total", "HTTP requests by route template, method and status",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "registry_http_request_duration_seconds",
            "HTTP request duration (until the response was sent) by route template, method "
            "and status", ["method", "route", "status"], buckets=HTTP_BUCKETS,
            registry=self.registry)
        self.blob_bytes = Counter(
            "registry_blob_bytes_total",
            "Blob bytes received (direction=in: stored uploads) and sent (direction=out: "
            "downloads, ranges included)", ["direction"], registry=self.registry)
        for direction in ("in", "out"):
            self.blob_bytes.labels(direction)
        self._jobs_lock = threading.Lock()
        self._jobs: JobsCollector | None = None

    def watch_jobs(self, stats: Callable[[], JobStats],
                   on_error: Callable[[Exception], None]) -> None:
        """Add the queue families, read from ``stats`` at each scrape (once per app)."""
        with self._jobs_lock:
            if self._jobs is None:
                self._jobs = JobsCollector(stats, on_error)
                self.registry.register(self._jobs)

    def observe_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def observe_blob_bytes(self, direction: str, n: int) -> None:
        if n:
            self.blob_bytes.labels(direction).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class WorkerMetrics:
    """A worker's families, served on ``adapter-registry worker --metrics-port PORT``."""

    registry: CollectorRegistry = field(default_factory=_new_registry)

    def __post_init__(self) -> None:
        self.validation = Histogram(
            "registry_validation_duration_seconds",
            "Validation jobs run by this worker: wall time from claim to report, by outcome "
            "(validated, failed, released, lost, unreported)", ["outcome"],
            buckets=VALIDATION_BUCKETS, registry=self.registry)
        self.jobs = Counter(
            "registry_worker_jobs_total", "Jobs this worker ran, by kind and outcome",
            ["kind", "outcome"], registry=self.registry)

    def observe_job(self, *, kind: str, outcome: str, seconds: float) -> None:
        self.jobs.labels(kind, outcome).inc()
        if kind == "validate":
            self.validation.labels(outcome).observe(seconds)

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[Any, Any]:
        """Serve ``/metrics`` on a daemon thread; returns (server, thread). ``port`` 0 picks a
        free port (``server.server_port``)."""
        return start_http_server(port, addr=addr, registry=self.registry)
