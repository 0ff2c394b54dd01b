"""Issue 13, routing: which repository a read reaches when upstreams are mirrored — the
prefix path, containerd's `?ns=` (answered with `OCI-Namespace`), the default upstream for
names not pushed locally; a local repository always wins; pushes are never rerouted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cangku.app import create_app
from cangku.config import Settings
from cangku.registry import Registry
from tests.api.helpers import OCI_MANIFEST, push_image

UPSTREAMS = [
    {"name": "docker.io", "url": "http://127.0.0.1:9", "default": True},
    {"name": "ghcr.io", "url": "http://127.0.0.1:9"},
]


def _client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://registry.test")


@pytest.fixture
async def mirror(registry: Registry, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app mirroring docker.io (the default) and ghcr.io."""
    settings = Settings(data=data_dir, auth={"open": True}, proxy={"upstreams": UPSTREAMS})
    async with _client(create_app(settings, registry)) as client:
        yield client


async def _get(client: httpx.AsyncClient, path: str) -> httpx.Response:
    return await client.get(path, headers={"Accept": OCI_MANIFEST})


async def test_ns_reaches_the_upstream_namespace_and_is_answered(
    client: httpx.AsyncClient, mirror: httpx.AsyncClient
) -> None:
    digest, _ = await push_image(client, "docker.io/library/alpine", "3")
    await push_image(client, "ghcr.io/jimo/tool", "1")

    answer = await _get(mirror, "/v2/library/alpine/manifests/3?ns=docker.io")
    assert answer.status_code == 200
    assert answer.headers["docker-content-digest"] == digest
    assert answer.headers["oci-namespace"] == "docker.io"
    head = await mirror.head("/v2/library/alpine/manifests/3?ns=docker.io")
    assert head.status_code == 200 and head.headers["oci-namespace"] == "docker.io"

    tool = await _get(mirror, "/v2/jimo/tool/manifests/1?ns=ghcr.io")
    assert tool.status_code == 200 and tool.headers["oci-namespace"] == "ghcr.io"
    tags = await mirror.get("/v2/jimo/tool/tags/list?ns=ghcr.io")
    assert tags.json() == {"name": "ghcr.io/jimo/tool", "tags": ["1"]}

    # Blobs are routed the same way.
    manifest = answer.json()
    layer = manifest["layers"][0]["digest"]
    blob = await mirror.get(f"/v2/library/alpine/blobs/{layer}?ns=docker.io")
    assert blob.status_code == 200 and blob.headers["oci-namespace"] == "docker.io"


async def test_the_prefix_path_needs_no_rewriting_and_ns_on_it_is_not_doubled(
    client: httpx.AsyncClient, mirror: httpx.AsyncClient
) -> None:
    digest, _ = await push_image(client, "docker.io/library/alpine", "3")
    prefixed = await _get(mirror, "/v2/docker.io/library/alpine/manifests/3")
    assert prefixed.status_code == 200 and "oci-namespace" not in prefixed.headers
    both = await _get(mirror, "/v2/docker.io/library/alpine/manifests/3?ns=docker.io")
    assert both.status_code == 200 and both.headers["docker-content-digest"] == digest


async def test_names_not_pushed_locally_go_to_the_default_upstream_local_ones_win(
    client: httpx.AsyncClient, mirror: httpx.AsyncClient
) -> None:
    mirrored, _ = await push_image(client, "docker.io/library/alpine", "3")
    await push_image(client, "docker.io/jimo/app", "1")
    local, _ = await push_image(client, "jimo/app", "1")
    assert (
        local
        != (await _get(client, "/v2/docker.io/jimo/app/manifests/1")).headers[
            "docker-content-digest"
        ]
    )

    # dockerd's registry-mirrors: no ns, no prefix.
    fallback = await _get(mirror, "/v2/library/alpine/manifests/3")
    assert fallback.status_code == 200
    assert fallback.headers["docker-content-digest"] == mirrored
    assert "oci-namespace" not in fallback.headers
    # The locally pushed jimo/app wins over docker.io/jimo/app.
    wins = await _get(mirror, "/v2/jimo/app/manifests/1")
    assert wins.headers["docker-content-digest"] == local
    # A name nowhere: the default upstream's namespace answers (and names it).
    missing = await _get(mirror, "/v2/nobody/here/manifests/1")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_an_ns_not_mirrored_is_ignored(
    client: httpx.AsyncClient, mirror: httpx.AsyncClient
) -> None:
    local, _ = await push_image(client, "jimo/app", "1")
    answer = await _get(mirror, "/v2/jimo/app/manifests/1?ns=quay.io")
    assert answer.status_code == 200 and answer.headers["docker-content-digest"] == local
    assert "oci-namespace" not in answer.headers


async def test_pushes_are_never_rerouted(
    mirror: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    # A new local repository pushed through the mirroring app stays local, ns or not.
    digest, _ = await push_image(mirror, "jimo/new", "1")
    local = await _get(client, "/v2/jimo/new/manifests/1")
    assert local.status_code == 200 and local.headers["docker-content-digest"] == digest
    elsewhere = await _get(client, "/v2/docker.io/jimo/new/manifests/1")
    assert elsewhere.status_code == 404


async def test_without_upstreams_nothing_is_routed(client: httpx.AsyncClient) -> None:
    await push_image(client, "docker.io/library/alpine", "3")
    answer = await _get(client, "/v2/library/alpine/manifests/3?ns=docker.io")
    assert answer.status_code == 404 and "oci-namespace" not in answer.headers


async def test_an_upload_status_is_never_rerouted(mirror: httpx.AsyncClient) -> None:
    # GET on an upload session is a read by method but belongs to a push: a new local
    # repository's session must stay local even with a default upstream.
    start = await mirror.post("/v2/jimo/fresh/blobs/uploads/")
    assert start.status_code == 202
    status = await mirror.get(start.headers["location"])
    assert status.status_code == 204, status.text


async def test_a_routed_read_keeps_its_route_label_and_its_requested_path_in_the_log(
    client: httpx.AsyncClient,
    registry: Registry,
    data_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The rewriting works on a copy of the scope; what the routing below records on it
    (the route's name) still reaches the metrics, and the access log keeps the path the
    client asked for (review, session 8: routed reads were counted as `unmatched`)."""
    await push_image(client, "docker.io/library/alpine", "3")
    settings = Settings(
        data=data_dir,
        auth={"open": True},
        proxy={"upstreams": UPSTREAMS},
        metrics={"enabled": True},
    )
    caplog.set_level(logging.INFO, logger="cangku.access")
    async with _client(create_app(settings, registry)) as observed:
        for path in (
            "/v2/library/alpine/manifests/3?ns=docker.io",  # containerd's ns
            "/v2/library/alpine/manifests/3",  # the default upstream
            "/v2/docker.io/library/alpine/manifests/3",  # the prefix: not rewritten
        ):
            assert (await _get(observed, path)).status_code == 200, path
        metrics = (await observed.get("/metrics")).text

    counted = {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "cangku_http_requests_total" and sample.labels["method"] == "GET"
    }
    assert counted.get(("v2.manifest", "200")) == 3
    assert ("unmatched", "200") not in counted
    logged = [record.getMessage() for record in caplog.records if record.name == "cangku.access"]
    assert sum(line.startswith("GET /v2/library/alpine/manifests/3 200") for line in logged) == 2
