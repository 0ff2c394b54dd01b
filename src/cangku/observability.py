"""What an operator sees of a running registry: logs, Prometheus metrics, health, tracing.

- Logs: one access line per request (method, path, status, bytes, duration, request id, user),
  as text or as one JSON object per line (`log_format`). Every record logged while a request
  runs carries its request id (a context variable read by `RequestIdFilter`). Query strings are
  never logged: they may carry tokens.
- Metrics (`Metrics`): requests by route name, method and status; latency histograms; body
  bytes received and sent; upload requests in progress; stored blobs, manifests and bytes;
  garbage-collection runs and bytes freed; database transaction time and group-commit size.
  Labels are route names (declared in code), never repository names, so their number is fixed.
- Health: `/livez` (the process answers), `/readyz` (database reachable, storage writable;
  503 with the reason otherwise), `/healthz` (kept for existing probes; as `/livez`).
- Tracing: cangku/tracing.py (OpenTelemetry, optional).

docs/operations.md describes all of it for operators.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import anyio.to_thread
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cangku.asgi import ZERO_COPY_SEND
from cangku.config import Settings, split_listen
from cangku.metadata import events as event_rows
from cangku.proxy.stats import CacheStats
from cangku.registry.context import REQUEST_ID
from cangku.registry.usage import stored_content

if TYPE_CHECKING:
    from cangku.registry import Registry
    from cangku.registry.gc import CollectionReport, GarbageCollector
    from cangku.tracing import Tracing

log = logging.getLogger("cangku")
access_log = logging.getLogger("cangku.access")

# Route label of requests that matched no route (scanners): one label, not one per path.
UNMATCHED = "unmatched"
# Method labels: these, else "OTHER" (the HTTP parser accepts a few dozen methods; a label
# per method a scanner tries would still be labels nobody asked for). RFC 9110, 9.1.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


# --------------------------------------------------------------------------------- logs


class RequestIdFilter(logging.Filter):
    """Adds `request_id` (or None) to every record, for both formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER MESSAGE`, and ` id=REQUEST_ID` on records written during a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        # Access lines already name their id in the message.
        if request_id is not None and record.name != access_log.name:
            line += f" id={request_id}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and for access
    lines the fields of the text line (method, path, status, bytes, duration_ms, user)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            # RFC 3339 in UTC, which log pipelines parse without a format string.
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: Settings) -> None:
    """The root logger for `cangku serve`: level and format from the settings, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.set_name("cangku")
    root = logging.getLogger()
    # Replaces only a handler of ours (serve run twice in one process: tests); others stay.
    for existing in list(root.handlers):
        if existing.get_name() == "cangku":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Neither format shows the process or thread: a record need not look them up (the pid
    # was a getpid syscall per record, one per request for the access line).
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    # uvicorn's loggers write through their own handlers unless told to propagate here.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


# ------------------------------------------------------------------------------ metrics

# Seconds: from a cached manifest HEAD (~0.2 ms) to a multi-GiB blob upload.
LATENCY_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
GROUP_COMMIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """The registry's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = RequestStats()
        r.register(self.requests)
        self.uploads_in_progress = Gauge(
            "cangku_upload_requests_in_progress",
            "Blob upload requests (POST, PATCH, PUT) being received right now.",
            registry=r,
        )
        self.gc_runs = Counter(
            "cangku_gc_runs",
            "Garbage collections run by the server's schedule, by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self.gc_freed = Counter(
            "cangku_gc_freed_bytes", "Blob bytes freed by garbage collection.", registry=r
        )
        self.gc_duration = Histogram(
            "cangku_gc_duration_seconds",
            "Duration of garbage collections.",
            buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.db_transaction = Histogram(
            "cangku_db_transaction_duration_seconds",
            "Metadata database transactions (kind: read, write; a group commit is one write).",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.group_commit = Histogram(
            "cangku_db_group_commit_size",
            "Writes committed together in one SQLite transaction.",
            buckets=GROUP_COMMIT_BUCKETS,
            registry=r,
        )
        # Issue 16/14: event deliveries. Labels are bounded: never a URL or a repository.
        self.event_deliveries = Counter(
            "cangku_event_deliveries",
            "Event delivery attempts by outcome (delivered, retry, failed) and endpoint kind "
            "(server, namespace, repository).",
            ["outcome", "endpoint_kind"],
            registry=r,
        )
        self.event_delivery_latency = Histogram(
            "cangku_event_delivery_duration_seconds",
            "Event delivery attempts: from resolving the endpoint to its reply (or the error).",
            ["endpoint_kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._db_read = self.db_transaction.labels("read")
        self._db_write = self.db_transaction.labels("write")

    def observe_transaction(self, kind: str, seconds: float) -> None:
        """Called by MetadataStore, from whichever thread ran the transaction."""
        (self._db_write if kind == "write" else self._db_read).observe(seconds)

    def observe_group_commit(self, writes: int) -> None:
        self.group_commit.observe(writes)

    def observe_collection(self, report: CollectionReport | None, seconds: float) -> None:
        """One scheduled garbage collection: its report, or None if it failed."""
        self.gc_runs.labels("ok" if report is not None else "error").inc()
        self.gc_duration.observe(seconds)
        if report is not None:
            self.gc_freed.inc(report.freed_bytes)

    def observe_event_delivery(self, kind: str, outcome: str, seconds: float) -> None:
        """One delivery attempt (events/delivery.py): endpoint kind, outcome, its seconds."""
        self.event_deliveries.labels(outcome, kind).inc()
        self.event_delivery_latency.labels(kind).observe(seconds)

    def watch_registry(self, registry: Registry) -> None:
        """Stored-content gauges, read from the database at each scrape; transaction timing;
        the pull-through cache's counters when the registry mirrors upstreams."""
        self.registry.register(StoredContentCollector(registry))
        if isinstance(registry.cache_stats, CacheStats):
            self.registry.register(CacheCollector(registry.cache_stats))
        registry.metadata.on_transaction = self.observe_transaction
        registry.metadata.on_group_commit = self.observe_group_commit

    def exposition(self) -> bytes:
        """The text exposition format (Prometheus `text/plain; version=0.0.4`)."""
        return generate_latest(self.registry)


class _RequestEntry:
    __slots__ = ("buckets", "count", "received", "seconds", "sent")

    def __init__(self) -> None:
        self.count = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; +Inf last
        self.seconds = 0.0
        self.received = 0
        self.sent = 0


class RequestStats(Collector):
    """The per-request metrics: kept in plain numbers, made into metric families at scrape.

    prometheus-client's metric objects take a lock per update: ~1.6 µs for the four updates
    of a request, against ~55 µs of CPU for a whole manifest GET. Requests are observed on
    the event loop thread only, so plain numbers do. A scrape (another thread) reads them as
    they are: it may miss the request being added, never count one twice.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, int], _RequestEntry] = {}

    def observe(
        self, route: str, method: str, status: int, seconds: float, received: int, sent: int
    ) -> None:
        key = (route, method, status)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _RequestEntry()
        entry.count += 1
        # Prometheus buckets are "less than or equal": the first bound >= seconds.
        entry.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        entry.seconds += seconds
        entry.received += received
        entry.sent += sent

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "cangku_http_requests",
            "HTTP requests answered, by route name, method and status.",
            labels=["route", "method", "status"],
        )
        latency: dict[tuple[str, str], tuple[list[int], float]] = {}
        received: dict[str, int] = {}
        sent: dict[str, int] = {}
        for (route, method, status), entry in list(self._entries.items()):
            requests.add_metric([route, method, str(status)], entry.count)
            counts, total = latency.get((route, method), ([0] * len(entry.buckets), 0.0))
            counts = [a + b for a, b in zip(counts, entry.buckets, strict=True)]
            latency[(route, method)] = (counts, total + entry.seconds)
            received[route] = received.get(route, 0) + entry.received
            sent[route] = sent.get(route, 0) + entry.sent
        yield requests
        histogram = HistogramMetricFamily(
            "cangku_http_request_duration_seconds",
            "Time from the request's arrival to its last response byte handed to the server.",
            labels=["route", "method"],
        )
        # repr() writes these bounds as prometheus-client does ("0.0005", "1.0", "300.0").
        bounds = [repr(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
        for (route, method), (counts, total) in latency.items():
            cumulative = list(itertools.accumulate(counts))
            histogram.add_metric(
                [route, method], list(zip(bounds, cumulative, strict=True)), sum_value=total
            )
        yield histogram
        for name, doc, values in (
            ("cangku_http_request_body_bytes", "Request body bytes received, by route.", received),
            (
                "cangku_http_response_body_bytes",
                "Response body bytes sent (zero-copy ones included), by route.",
                sent,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["route"])
            for route, value in values.items():
                family.add_metric([route], value)
            yield family


class StoredContentCollector(Collector):
    """Gauges computed at scrape time by a few aggregate queries (not kept up to date by
    every push: the database is the truth, also for other replicas and the CLI)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def describe(self) -> Iterator[Metric]:
        return iter(())  # Nothing to describe ahead: no query at registration.

    def collect(self) -> Iterator[Metric]:
        try:
            stored = self.registry.metadata.read_now(stored_content)
        except Exception:
            log.exception("metrics: reading the stored content failed")
            return
        yield GaugeMetricFamily("cangku_blobs_stored", "Blobs stored.", value=stored.blobs)
        yield GaugeMetricFamily(
            "cangku_storage_bytes", "Bytes of all stored blobs.", value=stored.blob_bytes
        )
        yield GaugeMetricFamily(
            "cangku_manifests_stored",
            "Manifest records (one per repository holding the manifest).",
            value=stored.manifests,
        )
        yield GaugeMetricFamily("cangku_repositories", "Repositories.", value=stored.repositories)
        try:
            backlog = self.registry.metadata.read_now(event_rows.backlog)
        except Exception:
            log.exception("metrics: reading the event backlog failed")
            return
        yield GaugeMetricFamily(
            "cangku_event_backlog",
            "Event deliveries pending plus events not yet handed out to endpoints.",
            value=backlog,
        )


class CacheCollector(Collector):
    """The pull-through cache's counters (proxy/stats.py), per upstream: never the
    repository as a label (an unbounded set)."""

    COUNTERS = (
        ("cangku_proxy_cache_hits", "Manifests served from the pull-through cache.", "hits"),
        ("cangku_proxy_cache_misses", "Manifests fetched from the upstream.", "misses"),
        (
            "cangku_proxy_upstream_fetched_bytes",
            "Bytes received from the upstream (manifests and blobs).",
            "fetched_bytes",
        ),
        (
            "cangku_proxy_served_stale",
            "Cached tags served while the upstream failed (with a Warning header).",
            "served_stale",
        ),
        (
            "cangku_proxy_evicted_manifests",
            "Cached manifests evicted (proxy.max_size, proxy.evict_after).",
            "evicted_manifests",
        ),
    )

    def __init__(self, stats: CacheStats) -> None:
        self.stats = stats

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        upstreams = sorted(self.stats.upstreams.items())
        for name, documentation, attribute in self.COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=["upstream"])
            for upstream, counts in upstreams:
                family.add_metric([upstream], getattr(counts, attribute))
            yield family
        revalidations = CounterMetricFamily(
            "cangku_proxy_revalidations",
            "Tags checked upstream (manifest HEAD), by outcome: unchanged, moved, new, gone, "
            "failed.",
            labels=["upstream", "outcome"],
        )
        for (upstream, outcome), count in sorted(self.stats.revalidation_outcomes.items()):
            revalidations.add_metric([upstream, outcome], count)
        yield revalidations


class MeteredCollector:
    """A GarbageCollector whose runs are counted and timed (a wrapper, like the others)."""

    def __init__(self, collector: GarbageCollector, metrics: Metrics) -> None:
        self.collector = collector
        self.metrics = metrics

    async def collect(self) -> CollectionReport:
        started = time.perf_counter()
        try:
            report = await self.collector.collect()
        except Exception:
            self.metrics.observe_collection(None, time.perf_counter() - started)
            raise
        self.metrics.observe_collection(report, time.perf_counter() - started)
        return report


def metrics_route(metrics: Metrics) -> Route:
    async def serve_metrics(request: Request) -> Response:
        # The stored-content queries block; on PostgreSQL they wait for the network.
        body = await anyio.to_thread.run_sync(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", serve_metrics, methods=["GET"], name="metrics")


class MetricsListener:
    """`/metrics` on an address of its own (`metrics.listen`): prometheus-client's small
    threaded HTTP server, started and stopped with the app."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        self.metrics = metrics
        self.host, self.port = split_listen(listen)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(
            self.port, addr=self.host, registry=self.metrics.registry
        )
        log.info("metrics served on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ------------------------------------------------------------------------------- health


def health_routes(registry: Registry) -> list[Route]:
    """`/livez`, `/readyz` and `/healthz` (the answers are JSON: `{"status": ...}`)."""

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        reason = await readiness_problem(registry)
        if reason is not None:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    return [
        Route("/livez", live, name="livez"),
        Route("/healthz", live, name="healthz"),
        Route("/readyz", ready, name="readyz"),
    ]


async def readiness_problem(registry: Registry) -> str | None:
    """Why the registry cannot serve requests now, or None. The reason shown is generic
    (the probe is unauthenticated); the details go to the log."""
    try:
        await registry.metadata.ping()
    except Exception as error:
        log.warning("readiness: the database does not answer: %s", error)
        return "database unreachable"
    try:
        await registry.storage.check_writable()
    except Exception as error:
        log.warning("readiness: the storage is not writable: %s", error)
        return "storage not writable"
    return None


# ------------------------------------------------------------------------ per request


class RequestIds:
    """Where request ids come from: 16 hex digits, a random prefix of 32 bits per process and
    its count of requests times a random odd number, modulo 2**32 (a bijection: unique for
    2**32 requests). The multiplier only makes neighbouring ids differ in more than their
    last digits; it hides nothing: a few ids give away the multiplier, and with it how many
    requests the process served. An id needs to be unique, not unguessable: drawing 64
    random bits per request cost a `getrandom` syscall each (docs/performance.md, "Small
    requests: syscalls (session 9)"). A forked child draws its own prefix and multiplier."""

    def __init__(self) -> None:
        self.prefix = ""
        self.step = 1
        self.count: Iterator[int] = itertools.count()
        self.reseed()

    def reseed(self) -> None:
        """A new random prefix and odd multiplier (8 bytes from os.urandom), counting from 0."""
        drawn = os.urandom(8)
        self.prefix = drawn[:4].hex()
        self.step = int.from_bytes(drawn[4:]) | 1
        self.count = itertools.count()


_request_ids = RequestIds()
os.register_at_fork(after_in_child=_request_ids.reseed)


class ObservedApp:
    """Around every HTTP request: its id (header `X-Request-Id`, and in every log record),
    the access line, the metrics, and with tracing on its span.

    The route label comes from the routing below: `cangku.route` (set by the /v2 dispatch) or
    the Starlette endpoint that answered. The query string is never logged.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics | None = None, tracing: Tracing | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # 16 hex digits: the process's random prefix and its count of requests (see
        # RequestIds). Inline: this runs for every request.
        ids = _request_ids
        request_id = ids.prefix + format(next(ids.count) * ids.step & 0xFFFFFFFF, "08x")
        # Not reset afterwards: each request runs in a task (and context) of its own, and
        # uvicorn's own record of an unhandled error comes after the app returned.
        REQUEST_ID.set(request_id)
        state: dict[str, Any] = {"status": 0, "bytes": 0, "received": 0}
        upload = (
            self.metrics is not None
            and scope["method"] in ("POST", "PATCH", "PUT")
            and "/blobs/uploads" in scope["path"]
            and scope["path"].startswith("/v2/")
        )

        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
            return message

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY_SEND:
                # Handed to the server, as for bodies; blobs.py always gives the count.
                state["bytes"] += message["count"]
            await send(message)

        app_receive: Receive = receive_counted if self.metrics is not None else receive
        span = self.tracing.start_request(scope) if self.tracing is not None else None
        if upload:
            self.metrics.uploads_in_progress.inc()  # type: ignore[union-attr]
        try:
            if span is None:
                await self.app(scope, app_receive, send_logged)
            else:
                with span.activated():
                    await self.app(scope, app_receive, send_logged)
        finally:
            seconds = time.perf_counter() - started
            # route_name and method_label, their common case inline (every request).
            route = scope.get("cangku.route")
            if not isinstance(route, str):
                route = route_name(scope)
            if upload:
                self.metrics.uploads_in_progress.dec()  # type: ignore[union-attr]
            if self.metrics is not None:
                method = scope["method"]
                self.metrics.requests.observe(
                    route,
                    method if method in KNOWN_METHODS else "OTHER",
                    state["status"],
                    seconds,
                    state["received"],
                    state["bytes"],
                )
            if span is not None:
                span.finish(route, state["status"])
            if access_log.isEnabledFor(logging.INFO):
                self._log_access(scope, state, seconds, request_id)

    @staticmethod
    def _log_access(scope: Scope, state: dict[str, Any], seconds: float, request_id: str) -> None:
        fields = {
            "method": scope["method"],
            "path": scope["path"],
            "status": state["status"],
            "bytes": state["bytes"],
            "duration_ms": round(seconds * 1000, 1),
            "user": scope.get("user_name", "-"),
        }
        access_log.info(
            "%s %s %d %d %.1fms id=%s user=%s",
            fields["method"],
            fields["path"],
            fields["status"],
            fields["bytes"],
            fields["duration_ms"],
            request_id,
            fields["user"],
            extra={"access": fields, "request_id": request_id},
        )


def route_name(scope: Scope) -> str:
    """The name of the route that answered, from a fixed set declared in code."""
    name = scope.get("cangku.route")
    if isinstance(name, str):
        return name
    endpoint: Callable[..., Any] | None = scope.get("endpoint")
    if endpoint is None or isinstance(endpoint, Starlette | Router):
        return UNMATCHED  # No route, or only a mount whose routes all missed.
    name = getattr(endpoint, "__name__", None) or type(endpoint).__name__
    module = getattr(endpoint, "__module__", "") or ""
    return f"{module.removeprefix('cangku.')}.{name}"
