"""Storage usage (/api/v1) and namespace quotas: exact numbers, refusals, recovery."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from cangku.registry import Registry
from cangku.registry.gc import GarbageCollector
from tests.api.helpers import (
    OCI_MANIFEST,
    blob_files,
    error_code,
    push_blob,
    push_manifest_of,
    random_config,
    recorded_blobs,
    sha256,
)


async def usage_of(client: httpx.AsyncClient, repository: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/repositories/{repository}/usage")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def namespace_usage(client: httpx.AsyncClient, namespace: str) -> dict[str, Any]:
    response = await client.get("/api/v1/usage")
    assert response.status_code == 200
    found: dict[str, Any] = next(
        entry for entry in response.json()["namespaces"] if entry["namespace"] == namespace
    )
    return found


async def manifest_size(client: httpx.AsyncClient, name: str, reference: str) -> int:
    response = await client.get(f"/v2/{name}/manifests/{reference}")
    return len(response.content)


# -- usage -------------------------------------------------------------------------------------
async def test_usage_counts_each_blob_once_deduplicated_and_per_image_apparent(
    client: httpx.AsyncClient,
) -> None:
    base, extra, tool = os.urandom(4000), os.urandom(1000), os.urandom(700)
    config_1, config_2, config_3 = random_config(), random_config(), random_config()
    await push_manifest_of(client, "jimo/app", "1", config_1, [base])
    await push_manifest_of(client, "jimo/app", "2", config_2, [base, extra])
    await push_manifest_of(client, "jimo/tools", "1", config_3, [base, tool])
    await push_manifest_of(client, "other", "1", config_3, [tool])
    m1, m2 = (
        await manifest_size(client, "jimo/app", "1"),
        await manifest_size(client, "jimo/app", "2"),
    )
    m3, m4 = (
        await manifest_size(client, "jimo/tools", "1"),
        await manifest_size(client, "other", "1"),
    )

    app = await usage_of(client, "jimo/app")
    assert app == {
        "repository": "jimo/app",
        "namespace": "jimo",
        "deduplicated_bytes": m1 + m2 + len(base) + len(extra) + len(config_1) + len(config_2),
        "apparent_bytes": m1 + m2 + 2 * len(base) + len(extra) + len(config_1) + len(config_2),
        "manifests": 2,
        "tags": 2,
        "blobs": 4,
    }
    tools = await usage_of(client, "jimo/tools")
    assert (
        tools["deduplicated_bytes"]
        == tools["apparent_bytes"]
        == m3 + len(base) + len(tool) + len(config_3)
    )

    jimo = await namespace_usage(client, "jimo")
    assert [r["repository"] for r in jimo["repositories"]] == ["jimo/app", "jimo/tools"]
    shared_blobs = {base, extra, tool, config_1, config_2, config_3}
    assert jimo["deduplicated_bytes"] == m1 + m2 + m3 + sum(map(len, shared_blobs))
    assert jimo["apparent_bytes"] == app["apparent_bytes"] + tools["apparent_bytes"]
    assert jimo["quota_bytes"] is None

    total = (await client.get("/api/v1/usage")).json()
    assert total["deduplicated_bytes"] == m1 + m2 + m3 + m4 + sum(map(len, shared_blobs))
    assert total["blob_store_bytes"] == sum(map(len, shared_blobs))


async def test_blobs_waiting_for_their_manifest_count_as_usage(client: httpx.AsyncClient) -> None:
    await push_blob(client, "jimo/app", os.urandom(1234))
    usage = await usage_of(client, "jimo/app")
    assert usage["deduplicated_bytes"] == usage["apparent_bytes"] == 1234
    assert usage["blobs"] == 1 and usage["manifests"] == 0


async def test_usage_of_an_unknown_repository_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/repositories/jimo/nothing/usage")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NAME_UNKNOWN"
    invalid = await client.get("/api/v1/repositories/Bad..Name/usage")
    assert invalid.status_code == 400


# -- quotas -----------------------------------------------------------------------------------
async def test_a_blob_over_quota_is_denied_with_the_quota_and_usage_and_nothing_is_written(
    client: httpx.AsyncClient, registry: Registry, data_dir: Path
) -> None:
    await registry.set_quota("jimo", 10_000)
    await push_blob(client, "jimo/app", os.urandom(6000))
    files_before, recorded_before = blob_files(data_dir), await recorded_blobs(registry)

    too_big = os.urandom(5000)
    response = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"digest": sha256(too_big)}, content=too_big
    )

    assert response.status_code == 403
    assert error_code(response) == "DENIED"
    message = response.json()["errors"][0]["message"]
    assert "jimo" in message and "10000 bytes" in message and "6000 bytes" in message
    assert response.json()["errors"][0]["detail"] == {
        "namespace": "jimo",
        "quota_bytes": 10_000,
        "usage_bytes": 6000,
        "push_bytes": 5000,
    }
    assert blob_files(data_dir) == files_before
    assert await recorded_blobs(registry) == recorded_before


async def test_a_chunked_upload_over_quota_is_denied_at_its_chunk_and_parks_nothing(
    client: httpx.AsyncClient, registry: Registry, data_dir: Path
) -> None:
    await registry.set_quota("jimo", 4000)
    data = os.urandom(5000)
    started = await client.post("/v2/jimo/app/blobs/uploads/")
    location = started.headers["Location"]

    refused = await client.patch(location, content=data)

    assert refused.status_code == 403 and error_code(refused) == "DENIED"
    assert [path.stat().st_size for path in (data_dir / "uploads").iterdir()] == [0]
    response = await client.put(location, params={"digest": sha256(data)})
    assert response.status_code == 400  # the digest of nothing
    assert blob_files(data_dir) == set()
    assert await recorded_blobs(registry) == set()


async def test_bytes_parked_in_open_upload_sessions_count_against_the_quota(
    client: httpx.AsyncClient, registry: Registry, data_dir: Path
) -> None:
    """Issue 12 item 13: 2 x 20 MiB sat in sessions under a 1 MiB quota (here 2 x 6000 / 10000)."""
    await registry.set_quota("jimo", 10_000)
    first = (await client.post("/v2/jimo/app/blobs/uploads/")).headers["Location"]
    second = (await client.post("/v2/jimo/other/blobs/uploads/")).headers["Location"]
    assert (await client.patch(first, content=os.urandom(6000))).status_code == 202

    refused = await client.patch(second, content=os.urandom(6000))

    assert refused.status_code == 403 and error_code(refused) == "DENIED"
    assert refused.json()["errors"][0]["detail"]["usage_bytes"] == 6000
    parked = sum(path.stat().st_size for path in (data_dir / "uploads").iterdir())
    assert parked == 6000
    # What is left of the quota may still be used, in either session.
    assert (await client.patch(second, content=os.urandom(4000))).status_code == 202
    # Another namespace is not affected.
    other = (await client.post("/v2/lee/app/blobs/uploads/")).headers["Location"]
    assert (await client.patch(other, content=os.urandom(20_000))).status_code == 202


async def test_a_streamed_chunk_of_unknown_length_is_cut_off_at_the_quota(
    client: httpx.AsyncClient, registry: Registry, data_dir: Path
) -> None:
    await registry.set_quota("jimo", 10_000)
    location = (await client.post("/v2/jimo/app/blobs/uploads/")).headers["Location"]

    async def stream() -> Any:
        for _ in range(40):  # 40 KiB in all, without a Content-Length
            yield os.urandom(1024)

    refused = await client.patch(location, content=stream())

    assert refused.status_code == 403 and error_code(refused) == "DENIED"
    assert [path.stat().st_size for path in (data_dir / "uploads").iterdir()] == [0]
    data = os.urandom(20_000)

    async def one_shot() -> Any:
        yield data

    monolithic = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"digest": sha256(data)}, content=one_shot()
    )
    assert monolithic.status_code == 403 and error_code(monolithic) == "DENIED"
    assert list((data_dir / "tmp").iterdir()) == []


async def test_a_manifest_over_quota_is_denied_and_nothing_is_written(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    layer, config = os.urandom(3000), random_config()
    await push_blob(client, "jimo/app", layer)
    await push_blob(client, "jimo/app", config)
    await registry.set_quota("jimo", 3000 + len(config) + 10)  # no room for the manifest

    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256(layer),
                "size": len(layer),
            }
        ],
    }
    response = await client.put(
        "/v2/jimo/app/manifests/v1",
        content=json.dumps(document).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )

    assert response.status_code == 403 and error_code(response) == "DENIED"
    assert (await client.get("/v2/jimo/app/tags/list")).json()["tags"] in (None, [])
    assert (await usage_of(client, "jimo/app"))["manifests"] == 0


async def test_content_the_namespace_already_holds_is_never_refused(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    config, layer = random_config(), os.urandom(5000)
    await push_manifest_of(client, "jimo/app", "v1", config, [layer])
    await registry.set_quota("jimo", 100)  # far below what it holds already

    # Pushing the same image again, or mounting its layer into another repository of the
    # namespace, adds no byte.
    await push_manifest_of(client, "jimo/app", "v1", config, [layer])
    mounted = await client.post(
        "/v2/jimo/copy/blobs/uploads/", params={"mount": sha256(layer), "from": "jimo/app"}
    )
    assert mounted.status_code == 201


async def test_a_mount_from_another_namespace_counts_against_the_target_quota(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    layer = os.urandom(5000)
    await push_blob(client, "library/base", layer)
    await registry.set_quota("jimo", 4000)

    response = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"mount": sha256(layer), "from": "library/base"}
    )

    assert response.status_code == 403 and error_code(response) == "DENIED"
    assert (await client.head(f"/v2/jimo/app/blobs/{sha256(layer)}")).status_code == 404


async def test_quota_refusal_then_recovery_after_deleting_and_collecting(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector
) -> None:
    await registry.set_quota("jimo", 20_000)
    old = await push_manifest_of(client, "jimo/app", "old", random_config(), [os.urandom(12_000)])
    new_layer, new_config = os.urandom(9000), random_config()

    refused = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"digest": sha256(new_layer)}, content=new_layer
    )
    assert error_code(refused) == "DENIED"

    assert (await client.delete(f"/v2/jimo/app/manifests/{old}")).status_code == 202
    report = await collector.collect()
    assert report.freed_bytes >= 12_000
    assert (await namespace_usage(client, "jimo"))["deduplicated_bytes"] == 0

    await push_manifest_of(client, "jimo/app", "new", new_config, [new_layer])
    assert (await namespace_usage(client, "jimo"))["quota_bytes"] == 20_000


async def test_a_quota_covers_its_namespace_and_nothing_that_merely_starts_alike(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await registry.set_quota("a_b", 1000)
    # LIKE wildcards in the namespace must not match other names: "_" is any character.
    assert (
        await client.post(
            "/v2/axb/app/blobs/uploads/",
            params={"digest": sha256(b"x" * 2000)},
            content=b"x" * 2000,
        )
    ).status_code == 201
    assert (
        await client.post(
            "/v2/a_bc/app/blobs/uploads/",
            params={"digest": sha256(b"y" * 2000)},
            content=b"y" * 2000,
        )
    ).status_code == 201
    denied = await client.post(
        "/v2/a_b/deep/er/blobs/uploads/",
        params={"digest": sha256(b"z" * 2000)},
        content=b"z" * 2000,
    )
    assert error_code(denied) == "DENIED"
    denied_top = await client.post(
        "/v2/a_b/blobs/uploads/", params={"digest": sha256(b"z" * 2000)}, content=b"z" * 2000
    )
    assert error_code(denied_top) == "DENIED"


async def test_quotas_are_listed_with_their_usage_and_can_be_removed(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await push_blob(client, "jimo/app", os.urandom(700))
    await registry.set_quota("jimo", 1000)
    await registry.set_quota("empty", 5)

    listed = (await client.get("/api/v1/quotas")).json()["quotas"]
    assert listed == [
        {"namespace": "empty", "limit_bytes": 5, "usage_bytes": 0},
        {"namespace": "jimo", "limit_bytes": 1000, "usage_bytes": 700},
    ]
    assert (await namespace_usage(client, "empty"))["repositories"] == []

    assert await registry.unset_quota("jimo") is True
    assert await registry.unset_quota("jimo") is False
    await push_blob(client, "jimo/app", os.urandom(5000))


@pytest.mark.parametrize("namespace", ["jimo/app", "Jimo", "", "-x"])
async def test_a_quota_needs_a_valid_namespace(registry: Registry, namespace: str) -> None:
    from cangku.content.errors import NameInvalid

    with pytest.raises(NameInvalid):
        await registry.set_quota(namespace, 10)
