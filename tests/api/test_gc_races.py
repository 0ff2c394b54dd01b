"""Garbage collection racing pushes, with the interleavings forced step by step.

Each test stops a push at a chosen point (after its bytes are stored, before they are
recorded), runs a collection there, lets the push finish, and checks that the outcome is one
of the two the design allows: the push succeeds and what it needs is kept, or it fails
cleanly (MANIFEST_BLOB_UNKNOWN, BLOB_UPLOAD_INVALID) with nothing recorded and the retry
succeeds. Never a recorded blob without its file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from cangku.content.digest import Digest
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.registry.gc import GarbageCollector
from cangku.registry.repository import Repository
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    blob_files,
    descriptor,
    error_code,
    pull_image,
    push_blob,
    put_manifest,
    recorded_blobs,
    sha256,
)
from tests.databases import same_database


class Pause:
    """Stops an async storage method after it ran, until the test says go."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: object, method: str) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()
        original: Callable[..., Awaitable[Any]] = getattr(target, method)

        async def paused(*args: Any, **kwargs: Any) -> Any:
            result = await original(*args, **kwargs)
            self.reached.set()
            await self.go.wait()
            return result

        monkeypatch.setattr(target, method, paused)


def image(layer: bytes, config: bytes) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }


async def assert_every_recorded_blob_has_its_file(registry: Registry, data_dir: Path) -> None:
    assert await recorded_blobs(registry) <= blob_files(data_dir)


# -- manifest PUT against the sweep ------------------------------------------------------------
async def test_manifest_put_after_its_blob_was_collected_fails_cleanly_and_the_retry_succeeds(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    layer, config = os.urandom(700), b'{"architecture":"amd64","os":"linux"}'
    await push_blob(client, "jimo/app", layer)
    await push_blob(client, "jimo/app", config)
    # The client checked its blobs (HEAD 200) and is about to put the manifest...
    assert (await client.head(f"/v2/jimo/app/blobs/{sha256(layer)}")).status_code == 200
    # ...when a collection with no grace period finds them unreferenced.
    assert len((await collector.collect()).blobs) == 2

    refused = await put_manifest(client, "jimo/app", "v1", image(layer, config), OCI_MANIFEST)
    assert refused.status_code == 400
    assert error_code(refused) == "MANIFEST_BLOB_UNKNOWN"
    assert (await client.get("/v2/jimo/app/tags/list")).json()["tags"] in (None, [])

    # The retry: HEAD says 404, so the client uploads again, then puts the manifest.
    assert (await client.head(f"/v2/jimo/app/blobs/{sha256(layer)}")).status_code == 404
    await push_blob(client, "jimo/app", layer)
    await push_blob(client, "jimo/app", config)
    retried = await put_manifest(client, "jimo/app", "v1", image(layer, config), OCI_MANIFEST)
    assert retried.status_code == 201
    assert (await collector.collect()).blobs == []
    await pull_image(client, "jimo/app", "v1")


async def test_manifest_put_before_the_collection_keeps_its_blobs(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    layer, config = os.urandom(700), b'{"architecture":"arm64","os":"linux"}'
    await push_blob(client, "jimo/app", layer)
    await push_blob(client, "jimo/app", config)
    pushed = await put_manifest(client, "jimo/app", "v1", image(layer, config), OCI_MANIFEST)
    assert pushed.status_code == 201

    assert (await collector.collect()).blobs == []
    await pull_image(client, "jimo/app", "v1")


async def test_manifest_put_waiting_for_the_sweep_transaction_sees_its_outcome(
    client: httpx.AsyncClient,
    registry: Registry,
    collector: GarbageCollector,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The PUT arrives while the sweep's transaction is deleting files: it waits, then fails."""
    layer, config = os.urandom(700), b'{"architecture":"s390x","os":"linux"}'
    await push_blob(client, "jimo/app", layer)
    await push_blob(client, "jimo/app", config)
    loop = asyncio.get_running_loop()
    put_started: list[concurrent.futures.Future[httpx.Response]] = []
    original_delete = registry.storage.delete_blocking

    def delete_while_a_put_arrives(digest: Digest) -> None:
        # Runs in the database's writer thread, inside the sweep's transaction.
        if not put_started:
            put = put_manifest(client, "jimo/app", "v1", image(layer, config), OCI_MANIFEST)
            put_started.append(asyncio.run_coroutine_threadsafe(put, loop))
            time.sleep(0.05)  # the PUT runs up to its write transaction and waits there
            assert not put_started[0].done()
        original_delete(digest)

    monkeypatch.setattr(registry.storage, "delete_blocking", delete_while_a_put_arrives)
    await collector.collect()

    response = await asyncio.wrap_future(put_started[0])
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"
    await assert_every_recorded_blob_has_its_file(registry, data_dir)


async def test_index_put_after_its_child_was_collected_fails_cleanly(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    strict = GarbageCollector(
        collector.storage, collector.metadata, replace(collector.policy, delete_untagged_after=0)
    )
    layer, config = os.urandom(700), b'{"architecture":"riscv64","os":"linux"}'
    await push_blob(client, "jimo/multi", layer)
    await push_blob(client, "jimo/multi", config)
    child_document = image(layer, config)
    child = sha256(json.dumps(child_document).encode())
    assert (
        await put_manifest(client, "jimo/multi", child, child_document, OCI_MANIFEST)
    ).status_code == 201
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": 1}],
    }

    assert [m.digest for m in (await strict.collect()).manifests] == [child]

    refused = await put_manifest(client, "jimo/multi", "v1", index, OCI_INDEX)
    assert error_code(refused) == "MANIFEST_BLOB_UNKNOWN"
    # The retry pushes the child (and its blobs) again, then the index.
    await push_blob(client, "jimo/multi", layer)
    await push_blob(client, "jimo/multi", config)
    await put_manifest(client, "jimo/multi", child, child_document, OCI_MANIFEST)
    assert (await put_manifest(client, "jimo/multi", "v1", index, OCI_INDEX)).status_code == 201
    await pull_image(client, "jimo/multi", "v1")


# -- blob uploads against the sweep -------------------------------------------------------------
async def test_monolithic_upload_whose_existing_file_is_collected_before_it_records_fails_cleanly(
    client: httpx.AsyncClient,
    registry: Registry,
    collector: GarbageCollector,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storage found the file already there and kept it (no rename); GC then deletes it."""
    data = os.urandom(900)
    digest = await push_blob(client, "jimo/app", data)  # stored, unreferenced: garbage at once
    pause = Pause(monkeypatch, registry.storage, "write_blob")
    upload = asyncio.create_task(
        client.post("/v2/jimo/app/blobs/uploads/", params={"digest": digest}, content=data)
    )
    await pause.reached.wait()

    assert [b.digest for b in (await collector.collect()).blobs] == [digest]
    pause.go.set()
    response = await upload

    assert response.status_code == 400
    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    assert digest not in await recorded_blobs(registry)
    assert digest not in blob_files(data_dir)
    # The retry uploads the bytes again and succeeds.
    monkeypatch.undo()
    assert await push_blob(client, "jimo/app", data) == digest
    assert (await client.get(f"/v2/jimo/app/blobs/{digest}")).content == data


async def test_chunked_upload_collected_between_commit_and_record_fails_cleanly(
    client: httpx.AsyncClient,
    registry: Registry,
    collector: GarbageCollector,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session's bytes were just renamed into place, unrecorded: an orphan file for GC."""
    data = os.urandom(900)
    started = await client.post("/v2/jimo/app/blobs/uploads/")
    location = started.headers["Location"]
    await client.patch(location, content=data)
    pause = Pause(monkeypatch, registry.storage, "commit_upload")
    finish = asyncio.create_task(client.put(location, params={"digest": sha256(data)}))
    await pause.reached.wait()

    report = await collector.collect(now=time.time() + 1)
    assert [(b.digest, b.orphan) for b in report.blobs] == [(sha256(data), True)]
    pause.go.set()
    response = await finish

    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    await assert_every_recorded_blob_has_its_file(registry, data_dir)
    assert (await client.get(location)).status_code == 404  # the session is over
    monkeypatch.undo()
    await push_blob(client, "jimo/app", data)
    assert (await client.get(f"/v2/jimo/app/blobs/{sha256(data)}")).content == data


async def test_upload_that_records_before_the_collection_is_kept(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    """Recorded first: the upload restarted the grace period, so the collection keeps it."""
    patient = GarbageCollector(
        collector.storage, collector.metadata, replace(collector.policy, grace=60)
    )
    data = os.urandom(900)
    digest = await push_blob(client, "jimo/app", data)
    first_upload_done = time.time()
    await asyncio.sleep(0.01)
    await push_blob(client, "jimo/app", data)

    # 60 s after the first upload: garbage by that one, kept by the second.
    report = await patient.collect(now=first_upload_done + 60)
    assert report.blobs == []
    assert digest in blob_files(data_dir) and digest in await recorded_blobs(registry)


async def test_collection_in_another_process_serializes_with_the_recording_transaction(
    client: httpx.AsyncClient,
    registry: Registry,
    collector: GarbageCollector,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As `cangku gc` beside the server: its own database connections and storage object.

    While its sweep transaction deletes the file, the server's upload tries to record the
    blob: SQLite makes it wait for the sweep to commit, and it then finds no file.
    """
    data = os.urandom(900)
    digest = await push_blob(client, "jimo/app", data)
    other_metadata = MetadataStore.open(same_database(registry.metadata))
    other_storage = FilesystemStorage(data_dir)
    other = GarbageCollector(other_storage, other_metadata, collector.policy)
    pause = Pause(monkeypatch, registry.storage, "write_blob")
    upload = asyncio.create_task(
        client.post("/v2/jimo/app/blobs/uploads/", params={"digest": digest}, content=data)
    )
    await pause.reached.wait()
    original_delete = other_storage.delete_blocking
    loop = asyncio.get_running_loop()

    def delete_while_the_upload_records(target: Digest) -> None:
        # Runs in the other store's writer thread, inside its sweep transaction.
        loop.call_soon_threadsafe(pause.go.set)
        time.sleep(0.2)  # the upload reaches BEGIN IMMEDIATE and waits for us
        assert not upload.done()
        original_delete(target)

    monkeypatch.setattr(other_storage, "delete_blocking", delete_while_the_upload_records)
    try:
        report = await other.collect()
    finally:
        await other_metadata.close()
    response = await upload

    assert [b.digest for b in report.blobs] == [digest]
    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    await assert_every_recorded_blob_has_its_file(registry, data_dir)


async def test_mount_of_a_collected_blob_falls_back_to_an_upload(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    data = os.urandom(400)
    digest = await push_blob(client, "jimo/source", data)
    await collector.collect()

    response = await client.post(
        "/v2/jimo/target/blobs/uploads/", params={"mount": digest, "from": "jimo/source"}
    )
    assert response.status_code == 202  # a normal upload session instead of 201 Created
    finished = await client.put(
        response.headers["Location"], params={"digest": digest}, content=data
    )
    assert finished.status_code == 201


async def test_a_pull_by_tag_is_never_broken_by_a_collection(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    layer, config = os.urandom(700), b'{"architecture":"ppc64le","os":"linux"}'
    await push_blob(client, "jimo/app", layer)
    await push_blob(client, "jimo/app", config)
    await put_manifest(client, "jimo/app", "v1", image(layer, config), OCI_MANIFEST)

    async def pulls() -> None:
        for _ in range(20):
            await pull_image(client, "jimo/app", "v1")
            await asyncio.sleep(0)

    async def collections() -> None:
        for _ in range(20):
            await collector.collect()
            await asyncio.sleep(0)

    await asyncio.gather(pulls(), collections())


async def test_a_blob_collected_between_lookup_and_read_answers_404_not_a_broken_body(
    client: httpx.AsyncClient,
    registry: Registry,
    collector: GarbageCollector,
) -> None:
    digest = await push_blob(client, "jimo/app", os.urandom(900))  # unreferenced

    def collect_after_stat(handle: Repository) -> Repository:
        inner = handle.blobs

        class StatThenCollect:
            def __getattr__(self, attribute: str) -> Any:
                return getattr(inner, attribute)

            async def stat(self, wanted: str) -> tuple[Digest, int]:
                found = await inner.stat(wanted)
                await collector.collect()
                return found

        return replace(handle, blobs=StatThenCollect())

    registry.wrap = collect_after_stat
    response = await client.get(f"/v2/jimo/app/blobs/{digest}")

    assert response.status_code == 404
    assert error_code(response) == "BLOB_UNKNOWN"
