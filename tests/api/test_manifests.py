"""Manifest PUT/GET/HEAD/DELETE for every accepted media type; refusals with the spec's codes."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import update

from cangku.content.errors import TooManyTags
from cangku.metadata.schema import manifests
from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS
from cangku.registry.service import MAX_TAGS_PER_PUSH
from tests.api.helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_code,
    push_blob,
    push_image,
    put_manifest,
    sha256,
)


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
async def test_manifest_round_trips_byte_for_byte(
    client: httpx.AsyncClient, media_type: str
) -> None:
    digest, content = await push_image(client, "jimo/app", "v1.1", media_type=media_type)
    for reference in ("v1.1", digest):
        response = await client.get(f"/v2/jimo/app/manifests/{reference}")
        assert response.status_code == 200
        assert response.content == content
        assert response.headers["Content-Type"] == media_type
        assert response.headers["Docker-Content-Digest"] == digest
        assert sha256(response.content) == digest


async def test_head_manifest_has_headers_and_no_body(client: httpx.AsyncClient) -> None:
    digest, content = await push_image(client, "jimo/app", "latest")
    response = await client.head("/v2/jimo/app/manifests/latest")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Length"] == str(len(content))
    assert response.headers["Docker-Content-Digest"] == digest


async def test_put_answers_location_and_digest(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "jimo/app", b"{}")
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [],
    }
    content = json.dumps(document).encode()
    response = await put_manifest(client, "jimo/app", "v1", document, OCI_MANIFEST)
    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == sha256(content)
    assert response.headers["Location"] == f"/v2/jimo/app/manifests/{sha256(content)}"


@pytest.mark.parametrize(
    ("index_type", "child_type"), [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)]
)
async def test_multi_platform_index_needs_its_children(
    client: httpx.AsyncClient, index_type: str, child_type: str
) -> None:
    children = []
    for arch in ("amd64", "arm64"):
        _, content = await push_image(
            client, "jimo/multi", media_type=child_type, architecture=arch
        )
        children.append(
            descriptor(child_type, content, platform={"architecture": arch, "os": "linux"})
        )
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": children}
    response = await put_manifest(client, "jimo/multi", "1.0", index, index_type)
    assert response.status_code == 201
    fetched = await client.get("/v2/jimo/multi/manifests/1.0")
    assert fetched.headers["Content-Type"] == index_type
    assert json.loads(fetched.content)["manifests"] == children

    missing = {**index, "manifests": [*children, descriptor(child_type, b"not pushed")]}
    response = await put_manifest(client, "jimo/multi", "broken", missing, index_type)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


async def test_manifest_referencing_an_unknown_blob_is_refused(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "jimo/app", b"{}")
    layer_elsewhere = await push_blob(client, "other/app", b"layer")
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_elsewhere, "size": 5}],
    }
    response = await put_manifest(client, "jimo/app", "v1", document, OCI_MANIFEST)
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"
    assert response.json()["errors"][0]["detail"] == layer_elsewhere
    assert (await client.get("/v2/jimo/app/manifests/v1")).status_code == 404


async def test_non_distributable_layers_need_not_be_pushed(client: httpx.AsyncClient) -> None:
    config = await push_blob(client, "jimo/win", b"{}")
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": sha256(b"windows base"),
        "size": 12,
        "urls": ["https://example.invalid/layer"],
    }
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": config,
            "size": 2,
        },
        "layers": [foreign],
    }
    assert (
        await put_manifest(client, "jimo/win", "ltsc", document, DOCKER_MANIFEST)
    ).status_code == 201


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"blablabla", OCI_MANIFEST),
        (b"[1, 2]", OCI_MANIFEST),
        (b'{"schemaVersion": 1}', OCI_MANIFEST),
        (
            b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}',
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:1", "size": 1},'
            b' "layers": []}',
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "'
            + sha256(b"").encode()
            + b'", "size": -1}, "layers": []}',
            OCI_MANIFEST,
        ),
        (b'{"schemaVersion": 2, "manifests": "nope"}', OCI_INDEX),
        (b'{"schemaVersion": 2}', "application/vnd.docker.distribution.manifest.v1+prettyjws"),
        (b"\xff\xfe", OCI_MANIFEST),
    ],
)
async def test_invalid_manifest_is_400_manifest_invalid(
    client: httpx.AsyncClient, content: bytes, content_type: str
) -> None:
    response = await client.put(
        "/v2/jimo/app/manifests/v1", content=content, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"


async def test_manifest_over_4_mib_is_refused_before_reading_it_all(
    client: httpx.AsyncClient,
) -> None:
    big = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    response = await client.put(
        "/v2/jimo/app/manifests/big", content=big, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 413
    assert error_code(response) == "SIZE_INVALID"

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):
            yield b"x" * 65536

    response = await client.put(
        "/v2/jimo/app/manifests/big", content=endless(), headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 413


async def test_put_by_digest_must_match_the_content(client: httpx.AsyncClient) -> None:
    _, content = await push_image(client, "jimo/app", "v1")
    wrong = sha256(b"other")
    response = await client.put(
        f"/v2/jimo/app/manifests/{wrong}", content=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


async def test_put_by_digest_with_tag_parameters_tags_it(client: httpx.AsyncClient) -> None:
    digest, content = await push_image(client, "jimo/app")
    response = await client.put(
        f"/v2/jimo/app/manifests/{digest}?tag=a&tag=b",
        content=content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201
    assert response.headers.get_list("OCI-Tag") == ["a", "b"]
    tags = (await client.get("/v2/jimo/app/tags/list")).json()["tags"]
    assert tags == ["a", "b"]


async def test_invalid_tag_on_put_is_refused(client: httpx.AsyncClient) -> None:
    _, content = await push_image(client, "jimo/app", "v1")
    response = await client.put(
        "/v2/jimo/app/manifests/-bad", content=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 400


async def test_media_type_is_taken_from_the_body_when_the_header_is_missing(
    client: httpx.AsyncClient,
) -> None:
    _, content = await push_image(client, "jimo/app", "v1")
    response = await client.put("/v2/jimo/app/manifests/v2", content=content)
    assert response.status_code == 201
    assert (await client.get("/v2/jimo/app/manifests/v2")).headers["Content-Type"] == OCI_MANIFEST


async def test_content_type_that_contradicts_the_body_is_refused(client: httpx.AsyncClient) -> None:
    _, content = await push_image(client, "jimo/app", "v1")
    response = await client.put(
        "/v2/jimo/app/manifests/v2", content=content, headers={"Content-Type": DOCKER_MANIFEST}
    )
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"


async def test_accept_header_that_excludes_the_stored_type_is_404(
    client: httpx.AsyncClient,
) -> None:
    await push_image(client, "jimo/app", "v1")
    response = await client.get("/v2/jimo/app/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert response.status_code == 404
    assert error_code(response) == "MANIFEST_UNKNOWN"
    several = f"{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9"
    assert (
        await client.get("/v2/jimo/app/manifests/v1", headers={"Accept": several})
    ).status_code == 200
    assert (
        await client.get("/v2/jimo/app/manifests/v1", headers={"Accept": "*/*"})
    ).status_code == 200


async def test_unknown_manifest_and_repository(client: httpx.AsyncClient) -> None:
    await push_image(client, "jimo/app", "v1")
    for reference in ("v2", ".INVALID_MANIFEST_NAME", sha256(b"nothing")):
        response = await client.get(f"/v2/jimo/app/manifests/{reference}")
        assert response.status_code == 404
        assert error_code(response) == "MANIFEST_UNKNOWN"
        assert (await client.head(f"/v2/jimo/app/manifests/{reference}")).status_code == 404
    response = await client.get("/v2/nobody/here/manifests/v1")
    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


async def test_delete_by_tag_removes_only_the_tag(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "jimo/app", "v1")
    await client.put(
        f"/v2/jimo/app/manifests/{digest}?tag=v1-copy",
        content=(await client.get(f"/v2/jimo/app/manifests/{digest}")).content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    response = await client.delete("/v2/jimo/app/manifests/v1")
    assert response.status_code == 202
    assert (await client.get("/v2/jimo/app/manifests/v1")).status_code == 404
    assert (await client.get(f"/v2/jimo/app/manifests/{digest}")).status_code == 200
    assert (await client.get("/v2/jimo/app/manifests/v1-copy")).status_code == 200


async def test_delete_by_digest_removes_the_manifest_and_all_its_tags(
    client: httpx.AsyncClient,
) -> None:
    digest, content = await push_image(client, "jimo/app", "v1")
    for tag in ("v2", "latest"):
        await client.put(
            f"/v2/jimo/app/manifests/{tag}", content=content, headers={"Content-Type": OCI_MANIFEST}
        )
    response = await client.delete(f"/v2/jimo/app/manifests/{digest}")
    assert response.status_code == 202
    assert (await client.head(f"/v2/jimo/app/manifests/{digest}")).status_code == 404
    listing = await client.get("/v2/jimo/app/tags/list")
    assert listing.status_code == 200
    assert listing.json()["tags"] == []
    again = await client.delete(f"/v2/jimo/app/manifests/{digest}")
    assert again.status_code == 404
    assert error_code(again) == "MANIFEST_UNKNOWN"


async def test_same_manifest_in_two_repositories_is_independent(client: httpx.AsyncClient) -> None:
    _, content = await push_image(client, "jimo/a", "v1")
    # The same bytes in another repository need that repository's own blobs.
    response = await client.put(
        "/v2/jimo/b/manifests/v1", content=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


async def test_artifact_manifest_with_subject_answers_oci_subject(
    client: httpx.AsyncClient,
) -> None:
    subject_digest, subject = await push_image(client, "jimo/app", "v1")
    empty = await push_blob(client, "jimo/app", b"{}")
    signature = os.urandom(64)
    await push_blob(client, "jimo/app", signature)
    artifact = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [descriptor("application/vnd.example.signature", signature)],
        "subject": descriptor(OCI_MANIFEST, subject),
    }
    response = await put_manifest(
        client, "jimo/app", sha256(json.dumps(artifact).encode()), artifact, OCI_MANIFEST
    )
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject_digest


async def test_accept_sent_as_several_headers_is_read_whole(client: httpx.AsyncClient) -> None:
    await push_image(client, "jimo/app", "v1", media_type=DOCKER_MANIFEST)
    # docker and skopeo send one Accept header per media type, in any order.
    headers = [("Accept", OCI_INDEX), ("Accept", "application/json"), ("Accept", DOCKER_MANIFEST)]
    for method in ("GET", "HEAD"):
        response = await client.request(method, "/v2/jimo/app/manifests/v1", headers=headers)
        assert response.status_code == 200


async def test_ambiguous_manifest_without_media_type_is_refused(client: httpx.AsyncClient) -> None:
    _, content = await push_image(client, "jimo/app", "v1")
    document = json.loads(content)
    del document["mediaType"]
    document["manifests"] = []
    response = await client.put("/v2/jimo/app/manifests/v2", content=json.dumps(document).encode())
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"
    assert (await client.get("/v2/jimo/app/manifests/v2")).status_code == 404


async def test_same_bytes_cannot_be_pushed_as_oci_and_as_docker(client: httpx.AsyncClient) -> None:
    _, content = await push_image(client, "jimo/app", "v1")
    document = json.loads(content)
    del document["mediaType"]
    untyped = json.dumps(document).encode()
    as_oci = await client.put(
        "/v2/jimo/app/manifests/oci", content=untyped, headers={"Content-Type": OCI_MANIFEST}
    )
    assert as_oci.status_code == 201
    as_docker = await client.put(
        "/v2/jimo/app/manifests/docker", content=untyped, headers={"Content-Type": DOCKER_MANIFEST}
    )
    assert as_docker.status_code == 400
    assert error_code(as_docker) == "MANIFEST_INVALID"
    assert (await client.get("/v2/jimo/app/manifests/docker")).status_code == 404
    served = await client.get("/v2/jimo/app/manifests/oci", headers={"Accept": OCI_MANIFEST})
    assert served.headers["Content-Type"] == OCI_MANIFEST


async def test_push_that_contradicts_the_stored_media_type_is_refused(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    """A manifest stored under earlier rules keeps its one type: no tag gets another."""
    _, content = await push_image(client, "jimo/app", "v1")
    document = json.loads(content)
    del document["mediaType"]
    untyped = json.dumps(document).encode()
    assert (
        await client.put(
            "/v2/jimo/app/manifests/old", content=untyped, headers={"Content-Type": OCI_MANIFEST}
        )
    ).status_code == 201
    await registry.metadata.write(
        lambda c: c.execute(
            update(manifests)
            .where(manifests.c.digest == sha256(untyped))
            .values(media_type=DOCKER_MANIFEST)
        )
    )
    response = await client.put(
        "/v2/jimo/app/manifests/new", content=untyped, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 400
    assert "stored as" in response.json()["errors"][0]["message"]
    assert (await client.get("/v2/jimo/app/manifests/new")).status_code == 404


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_manifest_get_and_head_carry_docker_content_digest(
    client: httpx.AsyncClient, method: str, by: str
) -> None:
    digest, _ = await push_image(client, "jimo/app", "v1")
    reference = "v1" if by == "tag" else digest
    response = await client.request(method, f"/v2/jimo/app/manifests/{reference}")
    assert response.status_code == 200
    assert response.headers["Docker-Content-Digest"] == digest


async def test_multi_tag_push_answers_one_oci_tag_per_tag(client: httpx.AsyncClient) -> None:
    digest, content = await push_image(client, "jimo/app")
    names = [f"t{i}" for i in range(MAX_TAGS_PER_PUSH - 2)]
    response = await client.put(
        f"/v2/jimo/app/manifests/{digest}",
        params=[("tag", name) for name in [*names, "t0", "t1"]],
        content=content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201
    assert response.headers.get_list("OCI-Tag") == names  # each once, in order
    listed = (await client.get("/v2/jimo/app/tags/list")).json()["tags"]
    assert sorted(listed) == sorted(names)


async def test_more_tags_than_the_limit_is_414_and_tags_nothing(client: httpx.AsyncClient) -> None:
    digest, content = await push_image(client, "jimo/app", "v1")
    response = await client.put(
        f"/v2/jimo/app/manifests/{digest}",
        params=[("tag", f"t{i}") for i in range(MAX_TAGS_PER_PUSH + 1)],
        content=content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 414
    assert error_code(response) == "UNSUPPORTED"
    assert (await client.get("/v2/jimo/app/tags/list")).json()["tags"] == ["v1"]


async def test_too_many_tags_are_refused_by_the_registry_itself(registry: Registry) -> None:
    with pytest.raises(TooManyTags):
        await registry.repository("jimo/app").manifests.put(
            "v1", b"{}", OCI_MANIFEST, IN_PROCESS, extra_tags=["a"] * (MAX_TAGS_PER_PUSH + 1)
        )
