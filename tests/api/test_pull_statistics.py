"""Pull statistics (issue 17): what counts as a pull, and that counts are buffered."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.registry.pulls import PullCounter
from tests.api.helpers import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, push_image

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}


async def pulls_json(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/repositories/{name}/pulls")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


async def test_get_by_tag_and_by_digest_count_and_heads_do_not(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    digest, _ = await push_image(client, "team/app", "1.0.0")
    for _ in range(2):
        assert (await client.get("/v2/team/app/manifests/1.0.0", headers=ACCEPT)).is_success
    assert (await client.get(f"/v2/team/app/manifests/{digest}", headers=ACCEPT)).is_success
    assert (await client.head("/v2/team/app/manifests/1.0.0", headers=ACCEPT)).is_success
    assert (await client.head(f"/v2/team/app/manifests/{digest}", headers=ACCEPT)).is_success
    # A miss is no pull.
    assert (await client.get("/v2/team/app/manifests/9.9.9", headers=ACCEPT)).status_code == 404

    stats = await pulls_json(client, "team/app")
    assert stats["pulls"] == 3
    assert stats["tags"] == {
        "1.0.0": {"pulls": 2, "last_pulled_at": pytest.approx(stats["last_pulled_at"], abs=5)}
    }
    assert stats["manifests"][digest]["pulls"] == 3
    assert stats["last_pulled_at"] is not None


async def test_head_by_tag_then_get_by_digest_is_a_pull_of_the_tag(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # How docker and containerd pull a tag.
    digest, _ = await push_image(client, "team/app", "1.0.0")
    assert (await client.head("/v2/team/app/manifests/1.0.0", headers=ACCEPT)).is_success
    assert (await client.get(f"/v2/team/app/manifests/{digest}", headers=ACCEPT)).is_success
    stats = await pulls_json(client, "team/app")
    assert (stats["pulls"], stats["tags"]["1.0.0"]["pulls"]) == (1, 1)
    # The HEAD is used once: the next GET by digest is a pull by digest only.
    assert (await client.get(f"/v2/team/app/manifests/{digest}", headers=ACCEPT)).is_success
    stats = await pulls_json(client, "team/app")
    assert (stats["pulls"], stats["tags"]["1.0.0"]["pulls"]) == (2, 1)
    # Too long after the HEAD: not attributed to the tag.
    monkeypatch.setattr("cangku.registry.pulls.RESOLUTION_SECONDS", -1.0)
    assert (await client.head("/v2/team/app/manifests/1.0.0", headers=ACCEPT)).is_success
    assert (await client.get(f"/v2/team/app/manifests/{digest}", headers=ACCEPT)).is_success
    stats = await pulls_json(client, "team/app")
    assert (stats["pulls"], stats["tags"]["1.0.0"]["pulls"]) == (3, 1)
    assert stats["manifests"][digest]["pulls"] == 3


async def test_an_index_and_its_image_fetched_in_one_pull_count_once(
    client: httpx.AsyncClient,
) -> None:
    image_digest, image = await push_image(client, "team/multi")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image_digest,
                    "size": len(image),
                    "platform": {"architecture": "amd64", "os": "linux"},
                }
            ],
        }
    ).encode()
    put = await client.put(
        "/v2/team/multi/manifests/1", content=index, headers={"Content-Type": OCI_INDEX}
    )
    assert put.status_code == 201, put.text
    accept = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}
    assert (await client.get("/v2/team/multi/manifests/1", headers=accept)).is_success
    assert (await client.get(f"/v2/team/multi/manifests/{image_digest}", headers=accept)).is_success
    stats = await pulls_json(client, "team/multi")
    assert stats["pulls"] == 1
    assert stats["tags"]["1"]["pulls"] == 1
    assert stats["manifests"][image_digest]["pulls"] == 1  # last pulled per digest still moves
    # The image alone later: a pull of its own.
    assert (await client.get(f"/v2/team/multi/manifests/{image_digest}", headers=accept)).is_success
    assert (await pulls_json(client, "team/multi"))["pulls"] == 2


async def test_an_inspection_tool_reading_a_manifest_is_not_a_pull(
    client: httpx.AsyncClient,
) -> None:
    await push_image(client, "team/app", "1")
    inspected = await client.get(
        "/v2/team/app/manifests/1",
        headers={**ACCEPT, "User-Agent": "skopeo/1.13.3"},
    )
    assert inspected.is_success
    assert (await pulls_json(client, "team/app"))["pulls"] == 0
    pulled = await client.get(
        "/v2/team/app/manifests/1",
        headers={**ACCEPT, "User-Agent": "docker/27.0 go/go1.22 os/linux arch/amd64"},
    )
    assert pulled.is_success
    assert (await pulls_json(client, "team/app"))["pulls"] == 1


async def test_the_pages_reading_manifests_are_not_pulls(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    digest, _ = await push_image(client, "team/app", "1")
    assert (await client.get("/r/team/app")).status_code == 200
    assert (await client.get("/r/team/app/-/tags/1")).status_code == 200
    assert (await client.get(f"/r/team/app/-/manifests/{digest}")).status_code == 200
    assert (await pulls_json(client, "team/app"))["pulls"] == 0


async def test_pulls_are_buffered_and_written_in_one_transaction(
    client: httpx.AsyncClient, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest, _ = await push_image(client, "team/app", "1")
    writes = 0
    original = registry.metadata.write

    async def counting_write(work: Any) -> Any:
        nonlocal writes
        writes += 1
        return await original(work)

    monkeypatch.setattr(registry.metadata, "write", counting_write)
    for _ in range(50):
        assert (await client.get("/v2/team/app/manifests/1", headers=ACCEPT)).is_success
    assert writes == 0
    assert await registry.pulls.flush() == 3  # the tag's, the digest's and the total's rows
    assert writes == 1
    assert await registry.pulls.flush() == 0

    # Stored: a fresh counter (another process, or after a restart) reads the same.
    fresh = await PullCounter(registry.metadata).repository("team/app")
    assert fresh.total.pulls == 50
    assert fresh.tags["1"].pulls == 50
    assert fresh.digests[digest].pulls == 50
    # Later pulls add to the stored counts.
    assert (await client.get(f"/v2/team/app/manifests/{digest}", headers=ACCEPT)).is_success
    await registry.pulls.flush()
    again = await PullCounter(registry.metadata).repository("team/app")
    assert (again.total.pulls, again.tags["1"].pulls, again.digests[digest].pulls) == (51, 50, 51)
    later, earlier = again.digests[digest].last_pulled_at, fresh.digests[digest].last_pulled_at
    assert later is not None and earlier is not None and later >= earlier


async def test_a_failed_flush_keeps_its_counts_for_the_next(
    client: httpx.AsyncClient, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await push_image(client, "team/app", "1")
    assert (await client.get("/v2/team/app/manifests/1", headers=ACCEPT)).is_success
    original = registry.metadata.write

    async def failing_write(work: Any) -> Any:
        raise OSError("database is away")

    monkeypatch.setattr(registry.metadata, "write", failing_write)
    with pytest.raises(OSError):
        await registry.pulls.flush()
    monkeypatch.setattr(registry.metadata, "write", original)
    assert (await client.get("/v2/team/app/manifests/1", headers=ACCEPT)).is_success
    await registry.pulls.flush()
    stored = await PullCounter(registry.metadata).repository("team/app")
    assert stored.total.pulls == 2


async def test_counts_of_a_deleted_repository_are_dropped(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    await push_image(client, "team/gone", "1")
    assert (await client.get("/v2/team/gone/manifests/1", headers=ACCEPT)).is_success
    await registry.delete_repository("team/gone")
    assert await registry.pulls.flush() == 0


async def test_pulls_of_an_unknown_repository_are_name_unknown(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/repositories/no/such/pulls")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NAME_UNKNOWN"


async def test_stopping_the_server_writes_the_buffered_counts(
    data_dir: Any, database_url: str
) -> None:
    from cangku.app import create_app
    from cangku.config import Settings
    from cangku.storage.filesystem import FilesystemStorage

    metadata = MetadataStore.open(database_url)
    registry = Registry(FilesystemStorage(data_dir), metadata)
    app = create_app(Settings(data=data_dir, auth={"open": True}), registry)
    started: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not started:
            started.append({})
            return {"type": "lifespan.startup"}
        return {"type": "lifespan.shutdown"}

    async def send(message: Any) -> None:
        if message["type"] == "lifespan.startup.complete":
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://registry.test"
            ) as client:
                await push_image(client, "team/app", "1")
                assert (await client.get("/v2/team/app/manifests/1", headers=ACCEPT)).is_success

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    reopened = MetadataStore.open(database_url)
    try:
        assert (await PullCounter(reopened).repository("team/app")).total.pulls == 1
    finally:
        await reopened.close()


async def test_a_get_the_accept_header_refuses_is_not_a_pull(client: httpx.AsyncClient) -> None:
    await push_image(client, "team/app", "1")
    refused = await client.get("/v2/team/app/manifests/1", headers={"Accept": OCI_INDEX})
    assert refused.status_code == 404
    assert (await pulls_json(client, "team/app"))["pulls"] == 0


async def test_an_index_is_parsed_once_however_often_it_is_pulled(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its children (for the "index then image is one pull" rule) are remembered by digest,
    which names immutable content: no JSON parse per GET."""
    image_digest, image = await push_image(client, "team/multi")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": image_digest, "size": len(image)}],
    }
    put = await client.put(
        "/v2/team/multi/manifests/1",
        content=json.dumps(index).encode(),
        headers={"Content-Type": OCI_INDEX},
    )
    assert put.status_code == 201, put.text
    parsed: list[bytes] = []

    class CountingJson:
        @staticmethod
        def loads(content: bytes) -> Any:
            parsed.append(content)
            return json.loads(content)

    monkeypatch.setattr("cangku.registry.pulls.json", CountingJson)
    accept = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}
    for _ in range(3):
        assert (await client.get("/v2/team/multi/manifests/1", headers=accept)).is_success
        got = await client.get(f"/v2/team/multi/manifests/{image_digest}", headers=accept)
        assert got.is_success
    assert len(parsed) == 1
    stats = await pulls_json(client, "team/multi")
    # Each index GET and the image GET after it are one pull, as before.
    assert stats["pulls"] == 3 and stats["manifests"][image_digest]["pulls"] == 3
