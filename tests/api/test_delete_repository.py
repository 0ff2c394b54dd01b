"""Deleting a whole repository (the web UI's use case): pulls fail, GC frees the bytes."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from cangku.registry import Registry
from cangku.registry.context import RequestContext
from cangku.registry.gc import GarbageCollector
from tests.api.helpers import blob_files, push_manifest_of, random_config, sha256


async def test_deleted_repository_serves_nothing_and_its_unshared_blobs_are_collected(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    shared, own = os.urandom(1000), os.urandom(2000)
    config, other_config = random_config(), random_config()
    await push_manifest_of(client, "jimo/app", "1.0.0", config, [shared, own])
    await push_manifest_of(client, "jimo/app", "2.0.0", other_config, [shared])
    await push_manifest_of(client, "jimo/keep", "v1", random_config(), [shared])
    upload = await client.post("/v2/jimo/app/blobs/uploads/")
    assert upload.status_code == 202

    await registry.delete_repository("jimo/app", RequestContext(caller="jimo"))

    for tag in ("1.0.0", "2.0.0", "latest"):
        response = await client.head(f"/v2/jimo/app/manifests/{tag}")
        assert response.status_code == 404, tag
    assert (await client.get(upload.headers["location"])).status_code == 404
    assert (await registry.list_repositories(None, None)).items == ["jimo/keep"]
    history = await registry.repository("jimo/app").tags.history("1.0.0")
    assert history[0].new_digest is None and history[0].actor == "jimo"

    report = await collector.collect()
    collected = {blob.digest for blob in report.blobs}
    assert collected == {sha256(config), sha256(other_config), sha256(own)}
    assert sha256(shared) in blob_files(data_dir)


async def test_browse_lists_size_and_last_push_and_searches(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await push_manifest_of(client, "jimo/alpha", "1", random_config(), [os.urandom(100)])
    await push_manifest_of(client, "jimo/beta", "1", random_config(), [os.urandom(5000)])
    listing = await registry.browse_repositories(None, sort="pushed")
    assert [summary.name for summary in listing.repositories] == ["jimo/beta", "jimo/alpha"]
    assert listing.total == 2
    beta = listing.repositories[0]
    assert beta.size > 5000 and beta.tags == 1 and beta.last_push > 0
    searched = await registry.browse_repositories(None, search="ALP")
    assert [summary.name for summary in searched.repositories] == ["jimo/alpha"]
