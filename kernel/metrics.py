"""Prometheus metrics (``prometheus-client``): what each process exposes, in one place.

Services: ``Metrics`` (a nameko DependencyProvider on each service class) counts and times
every RPC entry point per method and outcome; the ``stats`` RPCs set the projection and
outbox gauges, and ``metrics_refresh`` (a timer entry point) calls them every
``METRICS_REFRESH`` seconds when ``METRICS_PORT`` is set. ``microblog serve <service>``
serves the default registry on ``METRICS_PORT`` (``prometheus_client.start_http_server``).

Gateway: ``instrument_app`` counts and times requests per endpoint and status;
``InstrumentedRpcPool`` times the RPC calls it makes; ``metrics_response`` is its
``/metrics``. Under gunicorn (several worker processes) the figures are summed over the
workers with prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by
``microblog serve gateway``).

Every metric is documented in deploy/README.md ("Metrics").
"""
from __future__ import annotations

import logging
import os
import time
import weakref

from nameko.extensions import DependencyProvider
from nameko.timer import Timer
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kernel.rpc_pool import RpcPool, ServiceUnavailable

logger = logging.getLogger(__name__)

# Latency buckets (seconds) for calls that take from a millisecond to a timeout.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- services ---------------------------------------------------------------------------

RPC_REQUESTS = Counter(
    "microblog_rpc_requests", "RPC requests a service handled, by method and outcome "
    "(ok, or the class name of the error it answered)", ["service", "method", "outcome"])
RPC_DURATION = Histogram(
    "microblog_rpc_request_duration_seconds", "Time a service took to handle an RPC request",
    ["service", "method"], buckets=BUCKETS)
PROJECTION_POSITION = Gauge(
    "microblog_projection_position", "Last event position a projection applied", ["projection"],
    multiprocess_mode="max")
PROJECTION_HEAD = Gauge(
    "microblog_projection_head", "Head of the feed (the messages log) as the projection last saw it",
    ["projection"], multiprocess_mode="max")
PROJECTION_LAG = Gauge(
    "microblog_projection_lag", "Events the projection has still to apply (head - position)", ["projection"],
    multiprocess_mode="max")
# Labelled by the service that owns the log (messages), so that processes which never set
# them (the gateway, users) show no misleading zero.
OUTBOX_HEAD = Gauge("microblog_outbox_log_head", "Position of the last event appended to the log",
                    ["service"], multiprocess_mode="max")
OUTBOX_PUBLISHED = Gauge("microblog_outbox_published", "Position of the last event the outbox relay published",
                         ["service"], multiprocess_mode="max")
OUTBOX_BACKLOG = Gauge("microblog_outbox_backlog", "Events appended but not yet published (log head - published)",
                       ["service"], multiprocess_mode="max")

# -- gateway ----------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "microblog_http_requests", "HTTP requests the gateway answered, by endpoint, method and status",
    ["endpoint", "method", "status"])
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HTTP_DURATION = Histogram(
    "microblog_http_request_duration_seconds", "Time to the gateway's response (for a stream: to its start)",
    ["endpoint", "method"], buckets=BUCKETS)
OPEN_STREAMS = Gauge("microblog_open_streams", "Push streams (/notifications/stream) open now",
                     multiprocess_mode="livesum")
STREAM_EVENTS = Counter("microblog_stream_events", "Events written to push streams (each row to each stream)")
RPC_CALLS = Counter(
    "microblog_rpc_calls", "RPC calls the gateway made, by outcome (ok, unavailable, or the error's class name)",
    ["service", "method", "outcome"])
RPC_CALL_DURATION = Histogram(
    "microblog_rpc_call_duration_seconds", "Time the gateway waited for an RPC answer (or its failure)",
    ["service", "method"], buckets=BUCKETS)


def set_outbox(head: int, published: int, service: str = "messages") -> dict:
    OUTBOX_HEAD.labels(service).set(head)
    OUTBOX_PUBLISHED.labels(service).set(published)
    OUTBOX_BACKLOG.labels(service).set(max(head - published, 0))
    return {"head": head, "published": published, "backlog": max(head - published, 0)}


def set_projection(projection: str, position: int, head: int | None) -> dict:
    PROJECTION_POSITION.labels(projection).set(position)
    lag = None
    if head is not None:
        lag = max(head - position, 0)
        PROJECTION_HEAD.labels(projection).set(head)
        PROJECTION_LAG.labels(projection).set(lag)
    return {"projection": projection, "position": position, "head": head, "lag": lag}


class Metrics(DependencyProvider):
    """Counts and times every RPC entry point of the service it is added to."""

    def setup(self):
        self.started: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def worker_setup(self, worker_ctx):
        from nameko.rpc import Rpc

        if isinstance(worker_ctx.entrypoint, Rpc):
            self.started[worker_ctx] = time.perf_counter()

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        started = self.started.pop(worker_ctx, None)
        if started is None:
            return
        service, method = self.container.service_name, worker_ctx.entrypoint.method_name
        RPC_DURATION.labels(service, method).observe(time.perf_counter() - started)
        outcome = "ok" if exc_info is None else exc_info[0].__name__
        RPC_REQUESTS.labels(service, method, outcome).inc()


class MetricsTimer(Timer):
    """A timer that runs only when the service exposes metrics (``METRICS_PORT`` set), every
    ``METRICS_REFRESH`` seconds: it keeps the gauges current between scrapes."""

    def setup(self):
        config = self.container.config
        self.enabled = bool(config.get("METRICS_PORT"))
        self.interval = float(config.get("METRICS_REFRESH", self.interval))
        super().setup()

    def _run(self):
        if self.enabled:  # otherwise the timer's thread ends at once: no ticks
            super()._run()


def metrics_refresh(fn):
    return MetricsTimer.decorator(5.0)(fn)


def refresh_quietly(stats) -> None:
    """Call ``stats()`` for its side effect on the gauges. A failure (the database or a
    service down) is left to the RPC metrics and ``microblog status`` to show: a timer
    that raised would log a traceback every few seconds for the whole outage."""
    try:
        stats()
    except Exception as exc:
        logger.debug("metrics: gauges not refreshed (%s: %s)", type(exc).__name__, exc)


# -- gateway ----------------------------------------------------------------------------

def instrument_app(app) -> None:
    """Count and time every request of a Flask app by endpoint (the route's name, or
    ``unmatched``: a URL no route knows, so random paths do not grow the label set)."""
    from flask import g, request

    @app.before_request
    def _start_timer():
        g._metrics_started = time.perf_counter()

    @app.after_request
    def _record(response):
        # A client picks the method: any other than these is "OTHER", or each made-up one
        # would add a series (unbounded memory, and files under gunicorn).
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        endpoint = request.endpoint or "unmatched"
        started = g.pop("_metrics_started", None)
        if started is not None:
            HTTP_DURATION.labels(endpoint, method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
        return response


def metrics_response():
    """The body and content type of ``/metrics``: every worker's figures under gunicorn
    (multiprocess mode), this process's otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


class InstrumentedRpcPool(RpcPool):
    """``RpcPool`` that counts and times each call by service, method and outcome."""

    def call(self, service: str, method: str, *args, **kwargs):
        started = time.perf_counter()
        outcome = "ok"
        try:
            return super().call(service, method, *args, **kwargs)
        except Exception as exc:
            outcome = "unavailable" if isinstance(exc, ServiceUnavailable) else type(exc).__name__
            raise
        finally:
            RPC_CALL_DURATION.labels(service, method).observe(time.perf_counter() - started)
            RPC_CALLS.labels(service, method, outcome).inc()
