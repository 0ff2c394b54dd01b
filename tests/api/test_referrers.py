"""The referrers API (OCI 1.1): subjects, artifactType filter, dangling subjects."""

from __future__ import annotations

import json

import httpx

from cangku.registry import Registry
from tests.api.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    error_code,
    push_blob,
    push_image,
    sha256,
)

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
        key=lambda d: str(d["digest"]),
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


async def test_referrers_are_paged_so_no_response_exceeds_4_mib(
    client: httpx.AsyncClient,
) -> None:
    """24 referrers with 200 KiB of annotations each: 4.8 MiB in one index without paging."""
    _, subject = await push_image(client, "jimo/app", "v1")
    pushed = set()
    for i in range(24):
        big = {"org.example.note": f"{i}-" + "x" * (200 * 1024)}
        digest, _ = await push_artifact(
            client, "jimo/app", subject, f"application/vnd.example.{i}", annotations=big
        )
        pushed.add(digest)
    seen: list[str] = []
    url: str | None = f"/v2/jimo/app/referrers/{sha256(subject)}"
    pages = 0
    while url is not None:
        response = await client.get(url)
        assert response.status_code == 200
        assert len(response.content) <= 4 * 1024 * 1024
        assert response.headers["Content-Type"] == OCI_INDEX
        for item in response.json()["manifests"]:
            assert len(item["annotations"]["org.example.note"]) > 200 * 1024
            seen.append(item["digest"])
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
        pages += 1
    assert pages >= 2
    assert sorted(seen) == seen  # digest order, each page continuing the last
    assert set(seen) == pushed and len(seen) == len(pushed)


async def test_paged_referrers_keep_the_artifact_type_filter(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    _, subject = await push_image(client, "jimo/app", "v1")
    wanted = set()
    for i in range(6):
        artifact_type = "application/vnd.example.sig" if i % 2 else "application/vnd.example.sbom"
        digest, _ = await push_artifact(
            client, "jimo/app", subject, artifact_type, annotations={"i": str(i) * 50}
        )
        if i % 2:
            wanted.add(digest)
    first = await registry.repository("jimo/app").referrers.page(
        sha256(subject), "application/vnd.example.sig", max_bytes=400
    )
    assert first.next_last is not None and 0 < len(first.referrers) < 3
    rest = await registry.repository("jimo/app").referrers.page(
        sha256(subject), "application/vnd.example.sig", last=first.next_last, max_bytes=10_000
    )
    assert rest.next_last is None
    assert {r.digest for r in [*first.referrers, *rest.referrers]} == wanted
    response = await client.get(
        f"/v2/jimo/app/referrers/{sha256(subject)}",
        params={"artifactType": "application/vnd.example.sig", "last": first.next_last},
    )
    assert {d["digest"] for d in response.json()["manifests"]} == {r.digest for r in rest.referrers}


async def test_referrer_larger_than_a_page_is_listed_without_its_annotations(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    _, subject = await push_image(client, "jimo/app", "v1")
    digest, _ = await push_artifact(
        client, "jimo/app", subject, "application/vnd.example", annotations={"a": "x" * 1000}
    )
    page = await registry.repository("jimo/app").referrers.page(
        sha256(subject), None, max_bytes=500
    )
    assert [r.digest for r in page.referrers] == [digest]
    assert page.referrers[0].annotations is None
    assert page.trimmed == [digest]
    assert page.next_last is None


async def test_hostile_last_parameter_is_400(client: httpx.AsyncClient) -> None:
    _, subject = await push_image(client, "jimo/app", "v1")
    response = await client.get(
        f"/v2/jimo/app/referrers/{sha256(subject)}", params={"last": "' OR 1=1 --"}
    )
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
