"""The spec's newer rules over a real `cangku serve` (uvicorn, real sockets): HEAD answers,
upload and range headers, multi-tag pushes and referrers paging (issue 12, items 2, 4-8)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import httpx
import pytest

from .conftest import RegistryServer, http_client, server_kind, sha256_digest

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


@pytest.fixture(autouse=True)
def cangku_only() -> None:
    if server_kind() != "cangku":
        pytest.skip("cangku's answers to the spec's newer rules")


def push_blob(client: httpx.Client, name: str, data: bytes) -> str:
    digest = sha256_digest(data)
    response = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    return digest


def push_manifest(
    client: httpx.Client, name: str, reference: str | None, document: dict[str, object]
) -> tuple[str, httpx.Response]:
    content = json.dumps(document).encode()
    digest = sha256_digest(content)
    response = client.put(
        f"/v2/{name}/manifests/{reference or digest}",
        content=content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201, response.text
    return digest, response


def artifact(subject: tuple[str, int] | None = None, **annotations: str) -> dict[str, object]:
    descriptor = {"mediaType": EMPTY_TYPE, "digest": sha256_digest(EMPTY), "size": len(EMPTY)}
    document: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.note",
        "config": descriptor,
        "layers": [descriptor],
    }
    if subject:
        document["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]}
    if annotations:
        document["annotations"] = annotations
    return document


def test_head_and_upload_headers_over_a_real_server(registry: RegistryServer) -> None:
    name = f"jimo/proto-{uuid.uuid4().hex[:8]}"
    with http_client(base_url=registry.url) as client:
        head = client.head("/v2/")
        assert (head.status_code, head.content) == (200, b"")

        started = client.post(f"/v2/{name}/blobs/uploads/", params={"digest-algorithm": "sha512"})
        assert started.status_code == 202
        assert int(started.headers["OCI-Chunk-Min-Length"]) >= 1
        location = started.headers["Location"]
        data = os.urandom(5000)
        first = client.patch(location, content=data[:3000], headers={"Content-Range": "0-2999"})
        assert first.status_code == 202
        garbled = client.patch(location, content=b"x", headers={"Content-Range": "bytes=zz"})
        assert (garbled.status_code, garbled.headers["Range"]) == (416, "0-2999")
        digest = "sha512:" + hashlib.sha512(data).hexdigest()
        done = client.put(
            location,
            params={"digest": digest},
            content=data[3000:],
            headers={"Content-Range": "3000-4999"},
        )
        assert done.status_code == 201, done.text

        beyond = client.get(f"/v2/{name}/blobs/{digest}", headers={"Range": "bytes=9000-"})
        assert beyond.status_code == 416
        assert beyond.json()["errors"][0]["code"] == "SIZE_INVALID"
        assert beyond.headers["Content-Range"] == "bytes */5000"

        push_blob(client, name, EMPTY)
        manifest_digest, _ = push_manifest(client, name, "v1", artifact())
        for path in (f"/v2/{name}/tags/list", f"/v2/{name}/manifests/v1"):
            got, head = client.get(path), client.head(path)
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["Content-Length"] == str(len(got.content))
        assert client.head(f"/v2/{name}/manifests/v1").headers["Docker-Content-Digest"] == (
            manifest_digest
        )


def test_multi_tag_push_and_its_limit_over_a_real_server(registry: RegistryServer) -> None:
    name = f"jimo/tags-{uuid.uuid4().hex[:8]}"
    with http_client(base_url=registry.url) as client:
        push_blob(client, name, EMPTY)
        content = json.dumps(artifact()).encode()
        digest = sha256_digest(content)
        url = f"/v2/{name}/manifests/{digest}"
        headers = {"Content-Type": OCI_MANIFEST}
        many = {"tag": [f"t{i}" for i in range(101)]}
        assert client.put(url, params=many, content=content, headers=headers).status_code == 414
        ten = [f"v{i}" for i in range(10)]
        pushed = client.put(url, params={"tag": ten}, content=content, headers=headers)
        assert pushed.status_code == 201
        assert pushed.headers.get_list("OCI-Tag") == ten
        assert sorted(client.get(f"/v2/{name}/tags/list").json()["tags"]) == sorted(ten)


def test_referrers_over_4_mib_are_paged_over_a_real_server(registry: RegistryServer) -> None:
    name = f"jimo/refs-{uuid.uuid4().hex[:8]}"
    with http_client(base_url=registry.url) as client:
        push_blob(client, name, EMPTY)
        subject, _ = push_manifest(client, name, "v1", artifact())
        size = len(json.dumps(artifact()).encode())
        pushed = {
            push_manifest(
                client, name, None, artifact((subject, size), note=f"{i}" + "x" * 200_000)
            )[0]
            for i in range(24)
        }
        seen: list[str] = []
        url: str | None = f"/v2/{name}/referrers/{subject}"
        while url:
            response = client.get(url)
            assert response.status_code == 200
            assert response.headers["Content-Type"] == OCI_INDEX
            assert len(response.content) <= 4 * 1024 * 1024
            seen += [d["digest"] for d in response.json()["manifests"]]
            link = response.headers.get("Link")
            url = link[1 : link.index(">")] if link else None
        assert len(seen) == len(set(seen)) == 24
        assert set(seen) == pushed
