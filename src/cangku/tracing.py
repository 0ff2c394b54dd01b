"""OpenTelemetry tracing: off by default, on through the standard `OTEL_*` variables.

Needs the optional extra `cangku[otel]` (the OpenTelemetry SDK and its OTLP/HTTP exporter).
Tracing is on when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP
endpoint is given (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), unless
`OTEL_SDK_DISABLED=true`; the SDK and exporter read the rest themselves (`OTEL_SERVICE_NAME`,
default `cangku`; `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_TRACES_SAMPLER`; `OTEL_EXPORTER_OTLP_*`;
`OTEL_BSP_*`). Source: the OpenTelemetry specification, "Environment Variable Specification".

Spans: one SERVER span per request (`GET v2.manifest`), continuing an incoming W3C
`traceparent`; children for each metadata transaction (`db.read`, `db.write`) and storage
operation (`storage.stat`, `storage.write_blob`, ...). Attributes never hold query strings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import Scope

from cangku.content.digest import Digest
from cangku.observability import method_label
from cangku.storage.base import BlobContent, BlobStorage, closing_chunks

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("cangku")

_EXPORTERS = ("otlp", "console")


def configure_tracing(environ: Mapping[str, str]) -> Tracing | None:
    """Tracing as the environment asks for it, or None (off, or the SDK is not installed)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not exporter_name:
        if not endpoint:
            return None
        exporter_name = "otlp"
    if exporter_name == "none":
        return None
    if exporter_name not in _EXPORTERS:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={exporter_name!r}: cangku knows {', '.join(_EXPORTERS)}, none"
        )
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning("OTEL_* asks for tracing, but cangku[otel] is not installed: tracing off")
        return None
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "cangku"}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter: SpanExporter
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: spans go to the %s exporter", exporter_name)
    return Tracing(provider.get_tracer("cangku"), shutdown=provider.shutdown)


class Tracing:
    """Makes the spans; `tracer` is an OpenTelemetry Tracer."""

    def __init__(self, tracer: Tracer, shutdown: Any = None) -> None:
        self.tracer = tracer
        self._shutdown = shutdown

    def start_request(self, scope: Scope) -> RequestSpan:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        carrier = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        method = method_label(scope["method"])
        span = self.tracer.start_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],  # never the query string: it may carry tokens
                "url.scheme": scope.get("scheme", "http"),
            },
        )
        return RequestSpan(span, method)

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator[None]:
        """A child span of the current one, around a block."""
        with self.tracer.start_as_current_span(name):
            yield

    @contextlib.contextmanager
    def span_not_current(self, name: str) -> Iterator[None]:
        """A child span that does not become the current one: for async generators, whose
        steps may run in other contexts (attaching there could not be undone cleanly)."""
        span = self.tracer.start_span(name)
        try:
            yield
        finally:
            span.end()

    def shutdown(self) -> None:
        """Export the spans still buffered (at server exit)."""
        if self._shutdown is not None:
            self._shutdown()


class RequestSpan:
    def __init__(self, span: Span, method: str) -> None:
        self.span = span
        self.method = method

    @contextlib.contextmanager
    def activated(self) -> Iterator[None]:
        from opentelemetry.trace import use_span

        with use_span(self.span, end_on_exit=False, record_exception=True):
            yield

    def finish(self, route: str, status: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.update_name(f"{self.method} {route}")
        self.span.set_attribute("http.route", route)
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500 or status == 0:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()


class TracedStorage:
    """A storage driver whose operations are child spans (`storage.<operation>`)."""

    def __init__(self, storage: BlobStorage, tracing: Tracing) -> None:
        self.storage = storage
        self.tracing = tracing

    async def stat(self, digest: Digest) -> int | None:
        with self.tracing.span("storage.stat"):
            return await self.storage.stat(digest)

    async def open(self, digest: Digest, start: int, end: int) -> BlobContent:
        with self.tracing.span("storage.open"):
            return await self.storage.open(digest, start, end)

    async def read(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        # aclosing: a reader that stops closes the storage's stream (an S3 body's read
        # thread, a file) and ends the span now, not when the generator is collected.
        with self.tracing.span_not_current("storage.read"):
            async with closing_chunks(self.storage.read(digest, start, end)) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def delete(self, digest: Digest) -> None:
        with self.tracing.span("storage.delete"):
            await self.storage.delete(digest)

    def stat_blocking(self, digest: Digest) -> int | None:
        return self.storage.stat_blocking(digest)

    def delete_blocking(self, digest: Digest) -> None:
        self.storage.delete_blocking(digest)

    def iterate(self) -> AsyncIterator[tuple[Digest, int, float]]:
        return self.storage.iterate()

    async def write_blob(
        self, chunks: AsyncIterable[bytes], digest: Digest, expected_length: int | None
    ) -> int:
        with self.tracing.span("storage.write_blob"):
            return await self.storage.write_blob(chunks, digest, expected_length)

    async def create_upload(self, upload_id: str, algorithm: str = "sha256") -> None:
        with self.tracing.span("storage.create_upload"):
            await self.storage.create_upload(upload_id, algorithm)

    async def upload_size(self, upload_id: str) -> int | None:
        with self.tracing.span("storage.upload_size"):
            return await self.storage.upload_size(upload_id)

    async def append_upload(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        expected_offset: int | None = None,
        *,
        before_save: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        with self.tracing.span("storage.append_upload"):
            return await self.storage.append_upload(
                upload_id, chunks, expected_length, expected_offset, before_save=before_save
            )

    async def commit_upload(self, upload_id: str, digest: Digest) -> int:
        with self.tracing.span("storage.commit_upload"):
            return await self.storage.commit_upload(upload_id, digest)

    async def delete_upload(self, upload_id: str) -> None:
        with self.tracing.span("storage.delete_upload"):
            await self.storage.delete_upload(upload_id)

    def iterate_uploads(self) -> AsyncIterator[tuple[str, float]]:
        return self.storage.iterate_uploads()

    async def delete_stale_temporary(self, older_than: float) -> int:
        with self.tracing.span("storage.delete_stale_temporary"):
            return await self.storage.delete_stale_temporary(older_than)

    async def check_writable(self) -> None:
        with self.tracing.span("storage.check_writable"):
            await self.storage.check_writable()
