"""The per-resource services of `Registry.repository(name)`, called directly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from cangku.content.digest import Digest
from cangku.content.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    Denied,
    ManifestBlobUnknown,
    ManifestUnknown,
    NameUnknown,
    TooManyRequests,
)
from cangku.content.mediatypes import OCI_MANIFEST
from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS, RequestContext

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def store_blob(registry: Registry, name: str, data: bytes) -> str:
    digest = str(Digest.of(data))
    await registry.repository(name).blobs.upload(digest, chunks(data), len(data), IN_PROCESS)
    return digest


def manifest_of(config: bytes, *layers: bytes, **extra: object) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": str(Digest.of(config)), "size": 2},
        "layers": [
            {"mediaType": LAYER_TYPE, "digest": str(Digest.of(layer)), "size": len(layer)}
            for layer in layers
        ],
        **extra,
    }
    return json.dumps(document).encode()


async def test_a_blob_is_held_by_the_repository_it_was_pushed_to(registry: Registry) -> None:
    digest = await store_blob(registry, "jimo/app", b"layer")
    assert await registry.repository("jimo/app").blobs.stat(digest) == (Digest.parse(digest), 5)
    with pytest.raises(BlobUnknown):
        await registry.repository("jimo/other").blobs.stat(digest)
    await registry.repository("jimo/app").blobs.delete(digest, IN_PROCESS)
    with pytest.raises(BlobUnknown):
        await registry.repository("jimo/app").blobs.stat(digest)
    with pytest.raises(BlobUnknown):
        await registry.repository("jimo/app").blobs.delete(digest, IN_PROCESS)


async def test_a_mount_links_a_blob_only_from_a_repository_holding_it(registry: Registry) -> None:
    digest = await store_blob(registry, "jimo/app", b"shared layer")
    target = registry.repository("lee/app").blobs
    assert await target.mount(digest, "jimo/nothing", IN_PROCESS) is None
    assert await target.mount(digest, "jimo/app", IN_PROCESS) == Digest.parse(digest)
    assert (await target.stat(digest))[1] == len(b"shared layer")
    assert await registry.repositories_holding(digest) == ["jimo/app", "lee/app"]


async def test_a_chunked_upload_becomes_the_blob_and_its_session_ends(registry: Registry) -> None:
    uploads = registry.repository("jimo/app").uploads
    upload_id = await uploads.start(RequestContext(caller="jimo"))
    assert await uploads.append(upload_id, chunks(b"hello "), 6, (0, 5), IN_PROCESS) == 6
    assert await uploads.status(upload_id) == 6
    data = b"hello world"
    digest = await uploads.finish(
        upload_id, str(Digest.of(data)), chunks(b"world"), 5, None, IN_PROCESS
    )
    assert (await registry.repository("jimo/app").blobs.stat(str(digest)))[1] == len(data)
    with pytest.raises(BlobUploadUnknown):
        await uploads.status(upload_id)


async def test_open_sessions_count_against_the_contexts_owner(registry: Registry) -> None:
    registry.max_open_uploads = 2
    uploads = registry.repository("jimo/app").uploads
    anonymous = RequestContext(address="192.0.2.7")
    first = await uploads.start(anonymous)
    await uploads.start(anonymous)
    with pytest.raises(TooManyRequests):
        await uploads.start(anonymous)
    # Another owner, and in-process use (no owner), are not held back.
    await uploads.start(RequestContext(caller="jimo", address="192.0.2.7"))
    await uploads.start(IN_PROCESS)
    await uploads.cancel(first, anonymous)
    await uploads.start(anonymous)


async def test_a_manifest_needs_its_blobs_and_keeps_its_tags_in_order(registry: Registry) -> None:
    repository = registry.repository("jimo/app")
    config, layer = b"{}", b"layer bytes"
    content = manifest_of(config, layer)
    await store_blob(registry, "jimo/app", config)
    with pytest.raises(ManifestBlobUnknown):
        await repository.manifests.put("stable", content, OCI_MANIFEST, IN_PROCESS)
    await store_blob(registry, "jimo/app", layer)
    pushed = await repository.manifests.put(
        "stable", content, OCI_MANIFEST, RequestContext(caller="jimo"), extra_tags=["latest"]
    )
    assert pushed.tags == ["stable", "latest"]
    assert (await repository.manifests.get("latest")).content == content
    assert (await repository.tags.list(1, None)).items == ["latest"]
    assert (await repository.tags.list(None, "latest")).items == ["stable"]
    history = await repository.tags.history("stable")
    assert [(change.new_digest, change.actor) for change in history] == [(pushed.digest, "jimo")]

    await repository.manifests.delete(pushed.digest, RequestContext(caller="lee"))
    with pytest.raises(ManifestUnknown):
        await repository.manifests.get("latest")
    assert (await repository.tags.list(None, None)).items == []
    assert (await repository.tags.history("stable"))[0].actor == "lee"
    with pytest.raises(NameUnknown):
        await registry.repository("jimo/never").manifests.get("stable")


async def test_referrers_of_a_subject_are_listed_and_filtered(registry: Registry) -> None:
    repository = registry.repository("jimo/app")
    config = b"{}"
    await store_blob(registry, "jimo/app", config)
    subject = await repository.manifests.put("1", manifest_of(config), OCI_MANIFEST, IN_PROCESS)
    subject_descriptor = {
        "mediaType": OCI_MANIFEST,
        "digest": subject.digest,
        "size": len(manifest_of(config)),
    }
    signature = manifest_of(
        config,
        subject=subject_descriptor,
        artifactType="application/vnd.example.sig",
        annotations={"by": "jimo"},
    )
    pushed = await repository.manifests.put(
        str(Digest.of(signature)), signature, OCI_MANIFEST, IN_PROCESS
    )
    assert pushed.subject == subject.digest
    listed = await repository.referrers.list(subject.digest, None)
    assert [(r.digest, r.annotations) for r in listed] == [(pushed.digest, {"by": "jimo"})]
    assert await repository.referrers.list(subject.digest, "application/other") == []
    page = await repository.referrers.page(subject.digest, None, max_bytes=10_000)
    assert [r.digest for r in page.referrers] == [pushed.digest]
    assert page.next_last is None


async def test_a_quota_refuses_a_blob_beyond_it(registry: Registry) -> None:
    await registry.set_quota("jimo", 10)
    with pytest.raises(Denied):
        await store_blob(registry, "jimo/app", b"more than ten bytes")
    await store_blob(registry, "jimo/app", b"ten bytes!")
    usage = await registry.repository_usage("jimo/app")
    assert (usage.blobs, usage.deduplicated_bytes) == (1, 10)
