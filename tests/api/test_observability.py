"""Health checks, Prometheus metrics and request ids in log records (observability.py)."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from cangku.app import create_app
from cangku.config import Settings
from cangku.observability import MeteredCollector, Metrics, RequestIdFilter
from cangku.registry import Registry
from cangku.registry.gc import GarbageCollector
from tests.api.helpers import push_blob, push_image

NAME = "secretteam/private-image"


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition, by (name, labels)."""
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(exposition: str, name: str, **labels: str) -> float:
    return samples(exposition).get((name, frozenset(labels.items())), 0.0)


# ----------------------------------------------------------------------------- health


async def test_livez_and_readyz_answer_ok(client: httpx.AsyncClient) -> None:
    for path in ("/livez", "/readyz", "/healthz"):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert response.json() == {"status": "ok"}


async def test_readyz_is_503_when_storage_cannot_be_written(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    # Where blobs are first written becomes a file: writing there fails, even for root.
    shutil.rmtree(data_dir / "tmp")
    (data_dir / "tmp").write_bytes(b"")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "storage not writable"}
    assert (await client.get("/livez")).status_code == 200  # The process still answers.


async def test_readyz_is_503_when_the_database_is_unreachable(
    client: httpx.AsyncClient, registry: Registry, tmp_path: Path
) -> None:
    working = registry.metadata.engine
    registry.metadata.engine = create_engine(f"sqlite:///{tmp_path}/no/such/dir/cangku.db")
    try:
        response = await client.get("/readyz")
    finally:
        registry.metadata.engine.dispose()
        registry.metadata.engine = working
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "database unreachable"}


# ---------------------------------------------------------------------------- metrics


async def test_metrics_count_requests_by_route_name_never_by_repository(
    client: httpx.AsyncClient,
) -> None:
    digest, _ = await push_image(client, NAME, "v1", layers=1)
    for _ in range(3):
        assert (await client.get(f"/v2/{NAME}/manifests/v1")).status_code == 200
    assert (await client.get(f"/v2/{NAME}/manifests/nope")).status_code == 404
    assert (await client.get("/v2/secretteam/passwd")).status_code == 404
    assert (await client.get("/secretteam/passwd/nothing/here")).status_code == 404

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    requests = "cangku_http_requests_total"
    assert value(text, requests, route="v2.manifest", method="GET", status="200") == 3
    assert value(text, requests, route="v2.manifest", method="GET", status="404") == 1
    assert value(text, requests, route="v2.manifest", method="PUT", status="201") == 1
    assert value(text, requests, route="v2.upload_start", method="POST", status="201") == 2
    assert (
        value(text, "cangku_http_request_duration_seconds_count", route="v2.manifest", method="GET")
        == 4
    )
    # Not one label per path: every label value comes from a fixed set.
    assert "secretteam" not in text and "private-image" not in text and "passwd" not in text
    routes = {dict(labels)["route"] for (name, labels) in samples(text) if name == requests}
    assert {"v2.unmatched", "unmatched"} <= routes
    assert all("/" not in route for route in routes)
    assert digest not in text


async def test_metrics_count_body_bytes_and_stored_content(client: httpx.AsyncClient) -> None:
    data = b"x" * 3000
    digest = await push_blob(client, NAME, data)
    assert (await client.get(f"/v2/{NAME}/blobs/{digest}")).status_code == 200
    await push_image(client, NAME, "v1", layers=1)

    text = (await client.get("/metrics")).text
    assert value(text, "cangku_http_request_body_bytes_total", route="v2.upload_start") >= 3000
    assert value(text, "cangku_http_response_body_bytes_total", route="v2.blob") == 3000
    assert value(text, "cangku_blobs_stored") == 3  # the blob, a config and a layer
    assert value(text, "cangku_storage_bytes") >= 3000 + 512
    assert value(text, "cangku_manifests_stored") == 1
    assert value(text, "cangku_repositories") == 1
    assert value(text, "cangku_upload_requests_in_progress") == 0


async def test_metrics_time_database_transactions_and_group_commits(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await push_image(client, NAME, "v1", layers=1)
    text = (await client.get("/metrics")).text
    assert value(text, "cangku_db_transaction_duration_seconds_count", kind="write") >= 3
    assert value(text, "cangku_db_transaction_duration_seconds_count", kind="read") >= 1
    if registry.metadata.is_sqlite:
        assert value(text, "cangku_db_group_commit_size_count") >= 3


async def test_upload_requests_in_progress_are_counted_while_the_body_arrives(
    client: httpx.AsyncClient, app: object
) -> None:
    seen: list[float] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 100
        text = (await client.get("/metrics")).text
        seen.append(value(text, "cangku_upload_requests_in_progress"))
        yield b"b" * 100

    start = await client.post(f"/v2/{NAME}/blobs/uploads/")
    response = await client.patch(start.headers["Location"], content=body())
    assert response.status_code == 202
    assert seen == [1.0]
    text = (await client.get("/metrics")).text
    assert value(text, "cangku_upload_requests_in_progress") == 0


async def test_scheduled_garbage_collections_are_counted(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    data = b"garbage" * 100
    await push_blob(client, NAME, data)  # held by no manifest: collected
    metrics = Metrics()
    metered = MeteredCollector(collector, metrics)
    report = await metered.collect()
    assert report.freed_bytes == len(data)
    text = metrics.exposition().decode()
    assert value(text, "cangku_gc_runs_total", outcome="ok") == 1
    assert value(text, "cangku_gc_freed_bytes_total") == len(data)
    assert value(text, "cangku_gc_duration_seconds_count") == 1


async def test_a_failed_garbage_collection_is_counted_as_an_error(
    collector: GarbageCollector, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(**_: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(collector, "collect", broken)
    metrics = Metrics()
    with pytest.raises(OSError):
        await MeteredCollector(collector, metrics).collect()
    assert value(metrics.exposition().decode(), "cangku_gc_runs_total", outcome="error") == 1


async def test_metrics_can_be_turned_off(registry: Registry, data_dir: Path) -> None:
    app = create_app(
        Settings(data=data_dir, auth={"open": True}, metrics={"enabled": False}), registry
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/v2/")).status_code == 200


async def test_with_its_own_listener_metrics_are_not_on_the_main_one(
    registry: Registry, data_dir: Path
) -> None:
    # The listener itself starts with the app's lifespan: tests/e2e/test_e2e_operations.py.
    settings = Settings(data=data_dir, auth={"open": True}, metrics={"listen": "127.0.0.1:1"})
    transport = httpx.ASGITransport(app=create_app(settings, registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        assert (await client.get("/metrics")).status_code == 404


# ------------------------------------------------------------------------------- logs


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Records of the `cangku` loggers, through the filter `cangku serve` installs."""
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Keep()
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("cangku")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield captured
    logger.removeHandler(handler)
    logger.setLevel(previous)


async def test_every_record_of_a_request_carries_its_request_id(
    client: httpx.AsyncClient, data_dir: Path, records: list[logging.LogRecord]
) -> None:
    shutil.rmtree(data_dir / "tmp")
    (data_dir / "tmp").write_bytes(b"")  # /readyz logs why it fails
    response = await client.get("/readyz", params={"token": "s3cr3t"})
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", request_id)
    ours = [record for record in records if getattr(record, "request_id", None) == request_id]
    assert {record.name for record in ours} == {"cangku", "cangku.access"}
    assert any("storage is not writable" in record.getMessage() for record in ours)
    assert all("s3cr3t" not in record.getMessage() for record in records)
    other = await client.get("/livez")
    assert other.headers["x-request-id"] != request_id


def test_latency_buckets_count_less_than_or_equal() -> None:
    metrics = Metrics()
    for seconds in (0.0005, 0.00051, 500.0):
        metrics.requests.observe("v2.blob", "GET", 200, seconds, 10, 20)
    metrics.requests.observe("v2.blob", "GET", 404, 0.002, 0, 5)
    text = metrics.exposition().decode()
    bucket = "cangku_http_request_duration_seconds_bucket"
    labels = {"route": "v2.blob", "method": "GET"}
    assert value(text, bucket, le="0.0005", **labels) == 1
    assert value(text, bucket, le="0.001", **labels) == 2
    assert value(text, bucket, le="0.0025", **labels) == 3  # the 404 too: one histogram
    assert value(text, bucket, le="300.0", **labels) == 3
    assert value(text, bucket, le="+Inf", **labels) == 4
    assert value(text, "cangku_http_request_duration_seconds_count", **labels) == 4
    total = value(text, "cangku_http_request_duration_seconds_sum", **labels)
    assert total == pytest.approx(500.00301)
    requests = "cangku_http_requests_total"
    assert value(text, requests, route="v2.blob", method="GET", status="200") == 3
    assert value(text, "cangku_http_request_body_bytes_total", route="v2.blob") == 30
    assert value(text, "cangku_http_response_body_bytes_total", route="v2.blob") == 65


async def test_unknown_methods_share_one_label(client: httpx.AsyncClient) -> None:
    for method in ("FOOBAR", "PROPFIND", "MKCOL"):
        assert (await client.request(method, "/v2/")).status_code == 405
    text = (await client.get("/metrics")).text
    requests = "cangku_http_requests_total"
    assert value(text, requests, route="v2.base", method="OTHER", status="405") == 3
    assert "FOOBAR" not in text and "PROPFIND" not in text
