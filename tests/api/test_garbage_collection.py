"""Garbage collection: what is kept, what is collected, when, and what it frees."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

from cangku.metadata.schema import blobs, manifests
from cangku.registry import Registry
from cangku.registry.gc import CollectionPolicy, GarbageCollector
from tests.api.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    blob_files,
    descriptor,
    pull_image,
    push_blob,
    push_image,
    push_manifest_of,
    put_manifest,
    random_config,
    recorded_blobs,
    sha256,
)

HOUR = 3600.0


# -- helpers -----------------------------------------------------------------------------------
def with_policy(collector: GarbageCollector, **changes: Any) -> GarbageCollector:
    return GarbageCollector(
        collector.storage, collector.metadata, replace(collector.policy, **changes)
    )


async def put_index(
    client: httpx.AsyncClient, name: str, reference: str, children: list[str]
) -> str:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1} for digest in children
        ],
    }
    response = await put_manifest(client, name, reference, document, OCI_INDEX)
    assert response.status_code == 201, response.text
    return sha256(json.dumps(document).encode())


async def manifest_exists(client: httpx.AsyncClient, name: str, digest: str) -> bool:
    response = await client.head(
        f"/v2/{name}/manifests/{digest}", headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
    )
    return response.status_code == 200


# -- blobs -------------------------------------------------------------------------------------
async def test_blobs_of_a_deleted_image_are_collected_and_shared_ones_stay(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    shared, only_old, only_new = os.urandom(1000), os.urandom(2000), os.urandom(3000)
    old_config, new_config = random_config(), random_config()
    old = await push_manifest_of(client, "jimo/app", "old", old_config, [shared, only_old])
    await push_manifest_of(client, "jimo/app", "new", new_config, [shared, only_new])
    assert (await client.delete(f"/v2/jimo/app/manifests/{old}")).status_code == 202

    report = await collector.collect()

    assert {blob.digest for blob in report.blobs} == {sha256(old_config), sha256(only_old)}
    assert report.freed_bytes == len(old_config) + len(only_old)
    assert blob_files(data_dir) == await recorded_blobs(registry)
    assert blob_files(data_dir) == {sha256(b) for b in (shared, only_new, new_config)}
    await pull_image(client, "jimo/app", "new")


async def test_a_blob_referenced_from_another_repository_is_kept(
    client: httpx.AsyncClient, collector: GarbageCollector, data_dir: Path
) -> None:
    layer, config = os.urandom(500), random_config()
    await push_manifest_of(client, "jimo/one", "v1", config, [layer])
    digest = await push_manifest_of(client, "jimo/two", "v1", config, [layer])
    await client.delete(f"/v2/jimo/two/manifests/{digest}")

    report = await collector.collect()

    assert report.blobs == []
    assert sha256(layer) in blob_files(data_dir)
    # jimo/two no longer needs it: its link goes, so it no longer counts there.
    assert report.unlinked == 2
    assert (await client.head(f"/v2/jimo/two/blobs/{sha256(layer)}")).status_code == 404
    await pull_image(client, "jimo/one", "v1")


async def test_an_unreferenced_blob_is_kept_for_the_grace_period(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector
) -> None:
    digest = await push_blob(client, "jimo/app", os.urandom(100))
    patient = with_policy(collector, grace=HOUR)

    assert (await patient.collect()).blobs == []
    assert (await patient.collect(now=time.time() + HOUR / 2)).blobs == []
    assert [b.digest for b in (await patient.collect(now=time.time() + 2 * HOUR)).blobs] == [digest]
    assert digest not in await recorded_blobs(registry)


async def test_uploading_or_mounting_a_blob_again_restarts_its_grace_period(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector
) -> None:
    data = os.urandom(100)
    digest = await push_blob(client, "jimo/app", data)
    patient = with_policy(collector, grace=HOUR)

    async def make_old() -> None:
        await registry.metadata.write(
            lambda c: c.execute(update(blobs).values(created_at=time.time() - 2 * HOUR))
        )

    await make_old()
    await push_blob(client, "jimo/app", data)
    assert (await patient.collect()).blobs == []

    await make_old()
    mounted = await client.post(
        "/v2/jimo/other/blobs/uploads/", params={"mount": digest, "from": "jimo/app"}
    )
    assert mounted.status_code == 201
    assert (await patient.collect()).blobs == []

    await make_old()
    assert [b.digest for b in (await patient.collect()).blobs] == [digest]


async def test_a_file_nobody_recorded_is_collected_after_the_grace_period(
    registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    data = os.urandom(300)
    digest = sha256(data)
    path = data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]
    path.parent.mkdir(parents=True)
    path.write_bytes(data)

    assert (await with_policy(collector, grace=HOUR).collect()).blobs == []
    report = await collector.collect(now=time.time() + 1)
    assert [(b.digest, b.size, b.orphan) for b in report.blobs] == [(digest, 300, True)]
    assert not path.exists()


async def test_a_dry_run_reports_exactly_what_a_collection_then_does(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    kept = await push_manifest_of(client, "jimo/app", "kept", random_config(), [os.urandom(10)])
    gone = await push_manifest_of(client, "jimo/app", "gone", random_config(), [os.urandom(20)])
    await client.delete(f"/v2/jimo/app/manifests/{gone}")
    await push_blob(client, "jimo/app", os.urandom(30))
    files_before = blob_files(data_dir)

    rehearsal = await collector.collect(dry_run=True)
    assert rehearsal.dry_run
    assert len(rehearsal.blobs) == 3
    assert blob_files(data_dir) == files_before
    assert await recorded_blobs(registry) == files_before

    report = await collector.collect()
    assert sorted(report.blobs, key=lambda b: b.digest) == sorted(
        rehearsal.blobs, key=lambda b: b.digest
    )
    assert report.freed_bytes == rehearsal.freed_bytes
    await pull_image(client, "jimo/app", kept)


async def test_deleting_a_known_image_frees_exactly_the_bytes_unique_to_it(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector
) -> None:
    base, middle = os.urandom(4000), os.urandom(3000)
    unique_layer, unique_config = os.urandom(5000), random_config()
    await push_manifest_of(client, "jimo/base", "1", random_config(), [base])
    await push_manifest_of(client, "jimo/app", "1", random_config(), [base, middle])
    doomed = await push_manifest_of(
        client, "jimo/app", "2", unique_config, [base, middle, unique_layer]
    )
    doomed_size = len((await client.get(f"/v2/jimo/app/manifests/{doomed}")).content)
    before = await registry.usage()

    await client.delete(f"/v2/jimo/app/manifests/{doomed}")
    rehearsal = await collector.collect(dry_run=True)
    report = await collector.collect()
    after = await registry.usage()

    unique = len(unique_layer) + len(unique_config)
    assert rehearsal.freed_bytes == report.freed_bytes == unique
    assert before.deduplicated_bytes - after.deduplicated_bytes == unique + doomed_size
    assert before.blob_store_bytes - after.blob_store_bytes == unique
    await pull_image(client, "jimo/app", "1")
    await pull_image(client, "jimo/base", "1")


# -- manifests: the mark phase -----------------------------------------------------------------
async def test_untagged_manifests_are_kept_by_default(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    digest = await push_manifest_of(client, "jimo/app", None, random_config(), [os.urandom(10)])

    report = await collector.collect(now=time.time() + 365 * 86400)

    assert report.manifests == [] and report.blobs == []
    await pull_image(client, "jimo/app", digest)


async def test_delete_after_collects_untagged_manifests_once_untagged_that_long(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    strict = with_policy(collector, delete_untagged_after=HOUR)
    layer = os.urandom(10)
    tagged = await push_manifest_of(client, "jimo/app", "v1", random_config(), [layer])
    untagged = await push_manifest_of(client, "jimo/app", None, random_config(), [layer])
    start = time.time()

    # First seen untagged now: stamped, not deleted; its blobs are still needed.
    first = await strict.collect(now=start)
    assert first.manifests == [] and first.blobs == []
    assert (await strict.collect(now=start + HOUR / 2)).manifests == []

    later = await strict.collect(now=start + HOUR + 1)
    assert [(m.repository, m.digest) for m in later.manifests] == [("jimo/app", untagged)]
    assert len(later.blobs) == 1  # its config; the shared layer stays for v1
    assert not await manifest_exists(client, "jimo/app", untagged)
    await pull_image(client, "jimo/app", tagged)


async def test_tagging_a_manifest_again_restarts_its_untagged_clock(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector
) -> None:
    strict = with_policy(collector, delete_untagged_after=HOUR)
    config, layer = random_config(), os.urandom(10)
    digest = await push_manifest_of(client, "jimo/app", "v1", config, [layer])
    await client.delete("/v2/jimo/app/manifests/v1")
    start = time.time()
    await strict.collect(now=start)  # stamped

    await push_manifest_of(client, "jimo/app", "v1", config, [layer])  # tagged again
    stamps = await registry.metadata.read(
        lambda c: c.scalars(select(manifests.c.untagged_since)).all()
    )
    assert stamps == [None]
    await client.delete("/v2/jimo/app/manifests/v1")

    assert (await strict.collect(now=start + HOUR + 1)).manifests == []
    assert [m.digest for m in (await strict.collect(now=start + 3 * HOUR)).manifests] == [digest]


async def test_the_grace_period_protects_a_manifest_pushed_a_moment_ago(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    immediate = with_policy(collector, delete_untagged_after=0.0, grace=HOUR)
    digest = await push_manifest_of(client, "jimo/app", None, random_config(), [os.urandom(10)])

    assert (await immediate.collect()).manifests == []
    assert [m.digest for m in (await immediate.collect(now=time.time() + 2 * HOUR)).manifests] == [
        digest
    ]


async def test_children_of_a_tagged_index_are_kept(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    strict = with_policy(collector, delete_untagged_after=0.0)
    amd64 = await push_manifest_of(client, "jimo/multi", None, random_config(), [os.urandom(9)])
    arm64 = await push_manifest_of(client, "jimo/multi", None, random_config(), [os.urandom(9)])
    stray = await push_manifest_of(client, "jimo/multi", None, random_config(), [os.urandom(9)])
    await put_index(client, "jimo/multi", "v1", [amd64, arm64])

    report = await strict.collect()

    assert [m.digest for m in report.manifests] == [stray]
    await pull_image(client, "jimo/multi", "v1")


async def test_an_untagged_index_goes_with_the_children_only_it_needed(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    strict = with_policy(collector, delete_untagged_after=0.0)
    shared = await push_manifest_of(client, "jimo/multi", "shared", random_config(), [b"s"])
    own = await push_manifest_of(client, "jimo/multi", None, random_config(), [b"o"])
    index = await put_index(client, "jimo/multi", "v1", [shared, own])
    await client.delete("/v2/jimo/multi/manifests/v1")

    report = await strict.collect()

    assert {m.digest for m in report.manifests} == {index, own}
    await pull_image(client, "jimo/multi", "shared")


async def test_referrers_of_a_kept_manifest_are_kept_and_follow_it_when_it_goes(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    strict = with_policy(collector, delete_untagged_after=0.0)
    image = await push_manifest_of(client, "jimo/app", "v1", random_config(), [os.urandom(9)])
    image_size = len((await client.get(f"/v2/jimo/app/manifests/{image}")).content)
    subject = {"mediaType": OCI_MANIFEST, "digest": image, "size": image_size}
    signature = await push_manifest_of(
        client, "jimo/app", None, random_config(), [os.urandom(9)], subject=subject
    )

    assert (await strict.collect()).manifests == []
    await pull_image(client, "jimo/app", signature)

    await client.delete("/v2/jimo/app/manifests/v1")
    report = await strict.collect()
    assert {m.digest for m in report.manifests} == {image, signature}


async def test_a_tagged_referrer_keeps_its_subject(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    strict = with_policy(collector, delete_untagged_after=0.0)
    image = await push_manifest_of(client, "jimo/app", None, random_config(), [os.urandom(9)])
    image_size = len((await client.get(f"/v2/jimo/app/manifests/{image}")).content)
    subject = {"mediaType": OCI_MANIFEST, "digest": image, "size": image_size}
    await push_manifest_of(
        client, "jimo/app", "sbom", random_config(), [os.urandom(9)], subject=subject
    )

    assert (await strict.collect()).manifests == []
    await pull_image(client, "jimo/app", image)


async def test_same_digest_in_two_repositories_is_marked_per_repository(
    client: httpx.AsyncClient, collector: GarbageCollector
) -> None:
    strict = with_policy(collector, delete_untagged_after=0.0)
    config, layer = random_config(), os.urandom(9)
    digest = await push_manifest_of(client, "jimo/one", "v1", config, [layer])
    assert await push_manifest_of(client, "jimo/two", None, config, [layer]) == digest

    report = await strict.collect()

    assert [(m.repository, m.digest) for m in report.manifests] == [("jimo/two", digest)]
    await pull_image(client, "jimo/one", "v1")


# -- upload sessions -------------------------------------------------------------------------
async def test_idle_upload_sessions_are_purged_after_the_expiry(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    started = await client.post("/v2/jimo/app/blobs/uploads/")
    location = started.headers["Location"]
    upload_id = location.rsplit("/", 1)[1]
    await client.patch(location, content=b"some bytes")
    stray_file = data_dir / "uploads" / ("f" * 64)  # a session whose client never came back
    stray_file.write_bytes(b"left by a crash")

    assert (await collector.collect()).uploads == []
    assert len(list((data_dir / "uploads").iterdir())) == 2
    report = await collector.collect(now=time.time() + 86400 + 1)

    assert report.uploads == sorted([upload_id, "f" * 32])
    assert list((data_dir / "uploads").iterdir()) == []
    assert (await client.get(location)).status_code == 404


async def test_a_partial_one_shot_upload_left_in_tmp_by_a_crash_is_purged(
    collector: GarbageCollector, data_dir: Path
) -> None:
    crashed = data_dir / "tmp" / ("a" * 32)  # a monolithic upload's file when the process died
    crashed.write_bytes(b"half of a blob")
    long_ago = time.time() - 2 * 86400
    os.utime(crashed, (long_ago, long_ago))
    receiving = data_dir / "tmp" / ("b" * 32)  # an upload still arriving now
    receiving.write_bytes(b"the first bytes")

    await collector.collect(dry_run=True)
    assert crashed.exists()
    await collector.collect()

    assert not crashed.exists()
    assert receiving.exists()


async def test_an_upload_session_still_receiving_chunks_is_not_purged(
    client: httpx.AsyncClient, collector: GarbageCollector, data_dir: Path
) -> None:
    started = await client.post("/v2/jimo/app/blobs/uploads/")
    location = started.headers["Location"]
    # Opened long ago, but its last chunk arrived just now.
    (session_file,) = (data_dir / "uploads").iterdir()
    long_ago = time.time() - 2 * 86400
    os.utime(session_file, (long_ago, long_ago))
    await client.patch(location, content=b"fresh chunk")

    assert (await collector.collect()).uploads == []
    data = b"fresh chunk"
    finished = await client.put(location, params={"digest": sha256(data)})
    assert finished.status_code == 201


def test_collection_policy_defaults_match_the_settings() -> None:
    from cangku.config import Settings

    settings = Settings()
    policy = CollectionPolicy()
    assert policy.grace == settings.gc.grace
    assert policy.delete_untagged_after == settings.gc.delete_untagged_after
    assert policy.upload_expiry == settings.uploads.expire


async def test_a_blob_with_the_bytes_of_a_child_manifest_is_not_held_by_the_index(
    client: httpx.AsyncClient, registry: Registry, collector: GarbageCollector, data_dir: Path
) -> None:
    """An index references its children as manifests (their rows hold their bytes), not as
    blobs: a blob upload of the same bytes is held by nothing once unlinked by collection,
    as the usage report already counted it (one definition, metadata/blobs.py)."""
    child, content = await push_image(client, "jimo/app")
    assert await push_blob(client, "jimo/app", content) == child
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, content)],
    }
    response = await put_manifest(client, "jimo/app", "multi", index, OCI_INDEX)
    assert response.status_code == 201, response.text

    report = await collector.collect()

    assert child in {blob.digest for blob in report.blobs}
    assert child not in await recorded_blobs(registry)
    assert blob_files(data_dir) == await recorded_blobs(registry)
    await pull_image(client, "jimo/app", "multi")
