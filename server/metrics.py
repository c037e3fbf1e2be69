"""Prometheus metrics at ``/metrics``, correct under several gunicorn processes.

Two sources feed one exposition:

- Fleet figures (targets and check states by status, queue depths, result batches
  accepted but not yet stored, results ingested, ingest lag) are read at scrape time
  from the database and Redis, so every process reports the same numbers and nothing
  is counted per process.
- Request latency is observed in each process; with ``PROMETHEUS_MULTIPROC_DIR`` set
  (``aami-server serve`` sets it) prometheus-client aggregates the processes' files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import redis
from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from rq import Queue
from rq.registry import FailedJobRegistry
from sqlalchemy import func, select

from server.db import Database
from server.jobs import backlog, dead_letters
from server.jobs.ingest import INGEST_LAG_KEY, RESULTS_INGESTED_KEY
from server.jobs.queues import ALL_QUEUES
from server.models import CheckState, Target

TARGET_STATUSES = ("pending", "online", "stale", "offline")
CHECK_STATUSES = ("ok", "warning", "critical", "unknown")

# Label values come from known sets only: a label taken from the request as sent would let
# any client mint new time series (a random method or path per request) without bound.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ENDPOINT = "unmatched"

REQUEST_LATENCY = Histogram(
    "aami_http_request_duration_seconds",
    "Time to answer an HTTP request (long-polls included).",
    ["method", "endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class FleetCollector(Collector):
    def __init__(self, database: Database, client: redis.Redis) -> None:
        self.database = database
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        targets = GaugeMetricFamily("aami_targets", "Targets by status.", labels=["status"])
        states = GaugeMetricFamily(
            "aami_check_states", "Current check states by status.", labels=["status"]
        )
        with self.database.sessions() as session:
            by_target = dict(
                session.execute(select(Target.status, func.count()).group_by(Target.status)).all()
            )
            by_check = dict(
                session.execute(
                    select(CheckState.status, func.count()).group_by(CheckState.status)
                ).all()
            )
        for status in TARGET_STATUSES:
            targets.add_metric([status], by_target.get(status, 0))
        for status in CHECK_STATUSES:
            states.add_metric([status], by_check.get(status, 0))
        yield targets
        yield states

        ingested, lag = self.client.mget(RESULTS_INGESTED_KEY, INGEST_LAG_KEY)
        yield CounterMetricFamily(
            "aami_results_ingested", "Check results stored.", value=int(ingested or 0)
        )
        yield GaugeMetricFamily(
            "aami_ingest_lag_seconds",
            "Now minus executed_at of the newest batch, when it was stored.",
            value=float(lag or 0),
        )
        waiting, storing = backlog.size(self.client)
        batches = GaugeMetricFamily(
            "aami_ingest_backlog_batches",
            "Result batches accepted (202) and not yet stored: waiting, or being stored.",
            labels=["state"],
        )
        batches.add_metric(["waiting"], waiting)
        batches.add_metric(["storing"], storing)
        yield batches
        yield from dead_letters.metric_families(self.database, self.client)
        depth = GaugeMetricFamily("aami_queue_depth", "Jobs waiting per queue.", labels=["queue"])
        failed = GaugeMetricFamily(
            "aami_queue_failed_jobs", "Failed jobs per queue.", labels=["queue"]
        )
        for name in ALL_QUEUES:
            queue = Queue(name, connection=self.client)
            depth.add_metric([name], queue.count)
            failed.add_metric([name], FailedJobRegistry(queue=queue).count)
        yield depth
        yield failed


def request_labels(status: int) -> tuple[str, str, str]:
    """The (method, endpoint, status) labels of this request, each from a bounded set:
    the route's rule (not the path sent), a standard method or ``other``."""
    method = request.method if request.method in HTTP_METHODS else OTHER_METHOD
    endpoint = request.url_rule.rule if request.url_rule else UNMATCHED_ENDPOINT
    return method, endpoint, str(status)


def init_app(app: Flask, database: Database, client: redis.Redis) -> None:
    collector = FleetCollector(database, client)

    @app.before_request
    def _start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("request_started", None)
        if started is not None:
            REQUEST_LATENCY.labels(*request_labels(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response

    def metrics() -> Response:
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(REQUEST_LATENCY)
        registry.register(collector)
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", metrics)
