"""Prometheus metrics (prometheus_client).

Per-process instruments (request counts and latency, upstream latency and errors) live in the
process that observes them; with several uvicorn workers set PROMETHEUS_MULTIPROC_DIR (the
library's own variable, read when prometheus_client is imported) to an empty directory: every
process then writes its values there and `exposition()` sums them, whichever process is scraped.
Money and job figures are read from the database at scrape time, so every process reports the
same truth: credits charged and refunded by model, jobs by state, open holds; the queue depth
comes from the broker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import psycopg
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from common.db import METRICS_STATEMENT_MS, probe
from common.money import MICRO
from common.shared_reading import SharedReading

log = logging.getLogger(__name__)
JOB_TYPES = ("image", "video")
JOB_STATES = ("queued", "running", "succeeded", "failed", "canceled")

REQUESTS = Counter("helyx_http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "helyx_http_request_duration_seconds", "HTTP request latency (to the last body byte)", ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM_LATENCY = Histogram(
    "helyx_upstream_request_duration_seconds", "Provider call latency (to the full answer or first chunk)",
    ["provider", "kind"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
UPSTREAM_ERRORS = Counter("helyx_upstream_errors_total", "Provider call failures", ["provider", "code"])


class DatabaseCollector(Collector):
    """Gauges computed from the database (and broker) when Prometheus scrapes."""

    def __init__(self, engine: Engine, queue_depth: Any = None) -> None:
        self._engine = engine
        self._queue_depth = queue_depth
        self._shared: SharedReading[list[Metric]] = SharedReading()

    def describe(self) -> Iterator[Metric]:
        """Names only, so registering touches no database."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        yield from self._database_families()
        if self._queue_depth is not None:
            try:
                sizes = self._queue_depth()
            except Exception as exc:  # noqa: BLE001 - the broker being down must not break /metrics
                log.warning("metrics: broker unavailable (%s)", type(exc).__name__)
                return
            depth = GaugeMetricFamily("helyx_queue_depth", "Messages waiting in the job queues", labels=["queue"])
            for queue, size in sizes.items():
                depth.add_metric([queue], size)
            yield depth

    def _families(self) -> Iterator[Metric]:
        yield CounterMetricFamily("helyx_credits_charged", "Credits charged, by model", labels=["model", "kind"])
        yield CounterMetricFamily("helyx_credits_refunded", "Credits refunded by failed or canceled jobs",
                                  labels=["model"])
        yield GaugeMetricFamily("helyx_jobs", "Media jobs by state", labels=["type", "state"])
        yield GaugeMetricFamily("helyx_open_holds", "Open credit reservations")
        yield GaugeMetricFamily("helyx_open_holds_credits", "Credits held by open reservations")
        if self._queue_depth is not None:
            yield GaugeMetricFamily("helyx_queue_depth", "Messages waiting in the job queues", labels=["queue"])

    def _database_families(self) -> list[Metric]:
        """One read at a time, its figures shared for RECENT_SECONDS (common.shared_reading): each
        read scans the tables on a connection of its own, and /metrics needs no key (a burst of
        scrapes ran a scan each, one after the other, holding the API's threads meanwhile)."""
        return self._shared.get(self._read_or_nothing, RECENT_SECONDS)

    def _read_or_nothing(self) -> list[Metric]:
        try:
            return list(self._read())
        except SQLAlchemyError as exc:  # a scrape during a database outage reports what it can
            if isinstance(getattr(exc, "orig", None), psycopg.errors.QueryCanceled):
                log.warning("metrics: the database's figures took longer than %d s (statement timeout); "
                            "left out", METRICS_STATEMENT_MS // 1000)
            else:
                log.warning("metrics: database unavailable (%s)", type(exc).__name__)
            return []

    def _read(self) -> Iterator[Metric]:
        charged = CounterMetricFamily("helyx_credits_charged", "Credits charged, by model", labels=["model", "kind"])
        refunded = CounterMetricFamily("helyx_credits_refunded", "Credits refunded by failed or canceled jobs",
                                       labels=["model"])
        jobs = GaugeMetricFamily("helyx_jobs", "Media jobs by state", labels=["type", "state"])
        holds = GaugeMetricFamily("helyx_open_holds", "Open credit reservations")
        held = GaugeMetricFamily("helyx_open_holds_credits", "Credits held by open reservations")
        # on SQLite, beside the writers, not before them; on PostgreSQL a new connection, bounded in time
        with probe(self._engine, METRICS_STATEMENT_MS).connect() as conn:
            for model, total in conn.execute(text("SELECT model, COALESCE(SUM(credits), 0) FROM generations"
                                                  " GROUP BY model")):
                charged.add_metric([model, "chat"], total / MICRO)
            for model, kind, total, refund in conn.execute(text(
                "SELECT model, type, COALESCE(SUM(charged), 0), COALESCE(SUM(CASE WHEN status IN"
                " ('failed', 'canceled') THEN price ELSE 0 END), 0) FROM jobs GROUP BY model, type")):
                charged.add_metric([model, kind], total / MICRO)
                refunded.add_metric([model], refund / MICRO)
            by_state = text("SELECT type, status, COUNT(*) FROM jobs GROUP BY type, status")
            counts = {(kind, state): 0 for kind in JOB_TYPES for state in JOB_STATES}  # a series never vanishes
            counts.update({(kind, state): count for kind, state, count in conn.execute(by_state)})
            for (kind, state), count in sorted(counts.items()):
                jobs.add_metric([kind, state], count)
            count, amount = conn.execute(text("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM holds"
                                              " WHERE status = 'open'")).one()
        holds.add_metric([], count)
        held.add_metric([], amount / MICRO)
        yield from (charged, refunded, jobs, holds, held)


RECENT_SECONDS = 1.0  # how long one read of the database's figures answers every scrape
_database: DatabaseCollector | None = None


def use_database_collector(collector: DatabaseCollector) -> None:
    """The process's one database collector (tests build many apps: the last one wins)."""
    global _database
    if _database is not None:
        REGISTRY.unregister(_database)
    _database = collector
    REGISTRY.register(collector)


def exposition() -> bytes:
    """What Prometheus scrapes. In multiprocess mode the per-process instruments come from every
    process's files, summed (a scrape used to see only the process that answered it, so counters
    seemed to jump back and forth); the database figures are the same from any process."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if _database is not None:
        registry.register(_database)
    return generate_latest(registry)
