"""The referrers API (OCI 1.1): subjects, artifactType filter, dangling subjects."""

from __future__ import annotations

import json

import httpx

from tests.api.helpers import OCI_INDEX, OCI_MANIFEST, descriptor, push_blob, push_image, sha256

EMPTY = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


async def push_artifact(
    client: httpx.AsyncClient,
    name: str,
    subject: bytes,
    artifact_type: str,
    *,
    in_config: bool = False,
    annotations: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    await push_blob(client, name, EMPTY)
    payload = f"payload of {artifact_type}".encode()
    await push_blob(client, name, payload)
    document: dict[str, object] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}
    if in_config:
        document["config"] = descriptor(artifact_type, payload)
        document["layers"] = [descriptor(EMPTY_TYPE, EMPTY)]
    else:
        document["artifactType"] = artifact_type
        document["config"] = descriptor(EMPTY_TYPE, EMPTY)
        document["layers"] = [descriptor(artifact_type, payload)]
    document["subject"] = descriptor(OCI_MANIFEST, subject)
    if annotations:
        document["annotations"] = annotations
    content = json.dumps(document, indent="\t").encode()
    response = await client.put(
        f"/v2/{name}/manifests/{sha256(content)}",
        content=content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == sha256(subject)
    return sha256(content), content


async def test_unknown_subject_has_an_empty_index(client: httpx.AsyncClient) -> None:
    await push_image(client, "jimo/app", "v1")
    response = await client.get(f"/v2/jimo/app/referrers/{sha256(b'nothing')}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


async def test_referrers_are_listed_with_type_size_and_annotations(
    client: httpx.AsyncClient,
) -> None:
    _, subject = await push_image(client, "jimo/app", "v1")
    sbom_digest, sbom = await push_artifact(
        client, "jimo/app", subject, "application/spdx+json", annotations={"k": "sbom"}
    )
    sig_digest, sig = await push_artifact(
        client,
        "jimo/app",
        subject,
        "application/vnd.example.sig",
        in_config=True,
        annotations={"k": "sig"},
    )
    response = await client.get(f"/v2/jimo/app/referrers/{sha256(subject)}")
    manifests = response.json()["manifests"]
    assert sorted(manifests, key=lambda d: d["digest"]) == sorted(
        [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sbom_digest,
                "size": len(sbom),
                "artifactType": "application/spdx+json",
                "annotations": {"k": "sbom"},
            },
            {
                "mediaType": OCI_MANIFEST,
                "digest": sig_digest,
                "size": len(sig),
                "artifactType": "application/vnd.example.sig",
                "annotations": {"k": "sig"},
            },
        ],
        key=lambda d: d["digest"],
    )
    assert "OCI-Filters-Applied" not in response.headers


async def test_artifact_type_filter_is_applied_and_announced(client: httpx.AsyncClient) -> None:
    _, subject = await push_image(client, "jimo/app", "v1")
    await push_artifact(client, "jimo/app", subject, "application/spdx+json")
    wanted, _ = await push_artifact(client, "jimo/app", subject, "application/vnd.example.sig")
    response = await client.get(
        f"/v2/jimo/app/referrers/{sha256(subject)}",
        params={"artifactType": "application/vnd.example.sig"},
    )
    assert response.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in response.json()["manifests"]] == [wanted]


async def test_referrer_pushed_before_its_subject_is_listed(client: httpx.AsyncClient) -> None:
    future_subject = b'{"not": "pushed yet"}'
    digest, _ = await push_artifact(client, "jimo/app", future_subject, "application/spdx+json")
    response = await client.get(f"/v2/jimo/app/referrers/{sha256(future_subject)}")
    assert [d["digest"] for d in response.json()["manifests"]] == [digest]


async def test_deleted_referrer_is_no_longer_listed(client: httpx.AsyncClient) -> None:
    _, subject = await push_image(client, "jimo/app", "v1")
    digest, _ = await push_artifact(client, "jimo/app", subject, "application/spdx+json")
    assert (await client.delete(f"/v2/jimo/app/manifests/{digest}")).status_code == 202
    response = await client.get(f"/v2/jimo/app/referrers/{sha256(subject)}")
    assert response.json()["manifests"] == []


async def test_index_with_subject_is_a_referrer(client: httpx.AsyncClient) -> None:
    _, subject = await push_image(client, "jimo/app", "v1")
    child_digest, child = await push_artifact(client, "jimo/app", subject, "application/spdx+json")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": "application/vnd.food.stand",
        "manifests": [descriptor(OCI_MANIFEST, child)],
        "subject": descriptor(OCI_MANIFEST, subject),
    }
    content = json.dumps(index).encode()
    response = await client.put(
        f"/v2/jimo/app/manifests/{sha256(content)}",
        content=content,
        headers={"Content-Type": OCI_INDEX},
    )
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == sha256(subject)
    listed = (await client.get(f"/v2/jimo/app/referrers/{sha256(subject)}")).json()["manifests"]
    assert {d["digest"]: d.get("artifactType") for d in listed} == {
        child_digest: "application/spdx+json",
        sha256(content): "application/vnd.food.stand",
    }
