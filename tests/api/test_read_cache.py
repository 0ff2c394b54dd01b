"""The read cache never serves an answer older than the last commit, from any connection."""

from __future__ import annotations

from pathlib import Path

import httpx

from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import OCI_MANIFEST, push_image
from tests.databases import same_database


async def test_cached_reads_see_commits_of_another_process(
    client: httpx.AsyncClient, registry: Registry, data_dir: Path
) -> None:
    first, _ = await push_image(client, "jimo/app", "v1")
    second, second_content = await push_image(client, "jimo/app")
    assert (await registry.repository("jimo/app").manifests.get("v1")).digest == first
    assert (await registry.repository("jimo/app").tags.list(None, None)).items == ["v1"]

    # Another process (its own engine and connections) moves the tag.
    other = Registry(
        FilesystemStorage(data_dir), MetadataStore.open(same_database(registry.metadata))
    )
    try:
        await other.repository("jimo/app").manifests.put(
            "v1", second_content, OCI_MANIFEST, IN_PROCESS
        )
        await other.repository("jimo/app").manifests.put(
            "v2", second_content, OCI_MANIFEST, IN_PROCESS
        )
    finally:
        await other.metadata.close()

    assert (await registry.repository("jimo/app").manifests.get("v1")).digest == second
    assert (await registry.repository("jimo/app").tags.list(None, None)).items == ["v1", "v2"]


async def test_own_writes_invalidate_cached_reads(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    digest, _ = await push_image(client, "jimo/app", "v1")
    assert (await client.get("/v2/jimo/app/manifests/v1")).status_code == 200
    assert (await client.delete(f"/v2/jimo/app/manifests/{digest}")).status_code == 202
    assert (await client.get("/v2/jimo/app/manifests/v1")).status_code == 404
    assert (await client.get(f"/v2/jimo/app/manifests/{digest}")).status_code == 404
