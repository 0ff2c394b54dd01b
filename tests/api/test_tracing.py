"""OpenTelemetry tracing (tracing.py), with the SDK's in-memory exporter."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from cangku.app import create_app
from cangku.config import Settings
from cangku.content.digest import Digest
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage
from cangku.tracing import TracedStorage, Tracing, configure_tracing
from tests.api.helpers import push_blob, push_image

NAME = "team/traced"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced_client(
    data_dir: Path, database_url: str, exporter: InMemorySpanExporter
) -> AsyncIterator[httpx.AsyncClient]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider.get_tracer("cangku-test"))
    metadata = MetadataStore.open(database_url)
    metadata.span = tracing.span  # as build_registry does
    registry = Registry(TracedStorage(FilesystemStorage(data_dir), tracing), metadata)
    app = create_app(Settings(data=data_dir, auth={"open": True}), registry, tracing=tracing)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        yield client
    await metadata.close()


def children_of(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return [
        span.name
        for span in spans
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


async def test_a_request_is_a_server_span_with_database_and_storage_children(
    traced_client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    await push_blob(traced_client, NAME, b"layer bytes")
    spans = exporter.get_finished_spans()
    (request,) = [span for span in spans if span.kind is SpanKind.SERVER]
    assert request.name == "POST v2.upload_start"
    assert request.attributes is not None
    assert request.attributes["http.route"] == "v2.upload_start"
    assert request.attributes["http.response.status_code"] == 201
    assert request.attributes["url.path"] == f"/v2/{NAME}/blobs/uploads/"
    assert "digest" not in str(dict(request.attributes))  # never the query string
    children = children_of(spans, request)
    assert "storage.write_blob" in children
    assert "db.write" in children


async def test_manifest_get_reads_the_database_inside_its_request_span(
    traced_client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    await push_image(traced_client, NAME, "v1", layers=1)
    exporter.clear()
    response = await traced_client.get(f"/v2/{NAME}/manifests/v1")
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    (request,) = [span for span in spans if span.kind is SpanKind.SERVER]
    assert request.name == "GET v2.manifest"
    assert "db.read" in children_of(spans, request)


async def test_an_incoming_traceparent_is_continued(
    traced_client: httpx.AsyncClient, exporter: InMemorySpanExporter
) -> None:
    traceparent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
    await traced_client.get("/v2/", headers={"traceparent": traceparent})
    (request,) = exporter.get_finished_spans()
    assert request.context is not None
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert (
        request.parent is not None and format(request.parent.span_id, "016x") == "b7ad6b7169203331"
    )


async def test_server_errors_mark_the_span_as_failed(
    traced_client: httpx.AsyncClient, exporter: InMemorySpanExporter, data_dir: Path
) -> None:
    (data_dir / "tmp").rmdir()
    (data_dir / "tmp").write_bytes(b"")
    assert (await traced_client.get("/readyz")).status_code == 503
    ok = await traced_client.get("/livez")
    assert ok.status_code == 200
    by_name = {span.name: span for span in exporter.get_finished_spans()}
    assert by_name["GET observability.ready"].status.status_code is StatusCode.ERROR
    assert by_name["GET observability.live"].status.status_code is StatusCode.UNSET
    assert "storage.check_writable" in by_name


def test_tracing_is_off_unless_the_environment_asks_for_it() -> None:
    assert configure_tracing({}) is None
    assert configure_tracing({"OTEL_SERVICE_NAME": "x"}) is None
    assert configure_tracing({"OTEL_TRACES_EXPORTER": "none"}) is None
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}
    assert configure_tracing(disabled) is None


def test_tracing_is_on_with_an_exporter_or_an_otlp_endpoint() -> None:
    console = configure_tracing({"OTEL_TRACES_EXPORTER": "console"})
    assert console is not None
    console.shutdown()
    otlp = configure_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert otlp is not None
    otlp.shutdown()


def test_an_unknown_exporter_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        configure_tracing({"OTEL_TRACES_EXPORTER": "zipkin"})


async def test_reading_a_blob_through_the_storage_is_a_child_span(
    data_dir: Path, database_url: str, exporter: InMemorySpanExporter
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider.get_tracer("cangku-test"))
    storage = TracedStorage(FilesystemStorage(data_dir), tracing)
    data = b"streamed" * 1000
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await storage.write_blob(chunks(), digest, len(data))
    with tracing.tracer.start_as_current_span("request") as parent:
        read = b"".join([chunk async for chunk in storage.read(digest)])
    assert read == data
    by_name = {span.name: span for span in exporter.get_finished_spans()}
    child = by_name["storage.read"]
    assert child.parent is not None
    assert child.parent.span_id == parent.get_span_context().span_id


async def test_a_storage_read_that_stops_closes_the_stream_and_ends_its_span_at_once(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    closed: list[bool] = []

    class Storage:
        async def read(
            self, digest: Digest, start: int = 0, end: int | None = None
        ) -> AsyncIterator[bytes]:
            try:
                yield b"a"
                yield b"b"
            finally:
                closed.append(True)

    traced = TracedStorage(Storage(), Tracing(provider.get_tracer("cangku-test")))  # type: ignore[arg-type]
    chunks = traced.read(Digest.of(b"ab"))
    await anext(chunks)
    await chunks.aclose()  # type: ignore[attr-defined]
    # No await in between: nothing but aclose itself could have closed the inner stream.
    assert closed == [True]
    assert [span.name for span in exporter.get_finished_spans()] == ["storage.read"]
