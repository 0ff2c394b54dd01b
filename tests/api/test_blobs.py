"""Blob HEAD/GET/DELETE, ranges and repository isolation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp

from tests.api.conftest import raw_request
from tests.api.helpers import OCI_CONFIG, OCI_MANIFEST, error_code, push_blob, sha256

UNKNOWN = sha256(b"never pushed")


async def test_api_version_check_answers_200_with_header(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


async def test_head_version_check_answers_like_get(client: httpx.AsyncClient) -> None:
    response = await client.head("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert response.content == b""


async def test_every_v2_answer_carries_the_api_version_once(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    # The router adds the header to whatever a handler answered: success, upload, error;
    # and so does a blob GET that answers an error in place of the blob (its file is gone).
    started = await client.post("/v2/jimo/app/blobs/uploads/")
    vanished = await push_blob(client, "jimo/app", b"its file is deleted")
    next((data_dir / "blobs").rglob(vanished.removeprefix("sha256:"))).unlink()
    answers = [
        await client.get("/v2/"),
        started,
        await client.get(started.headers["Location"]),
        await client.get(f"/v2/jimo/app/blobs/{UNKNOWN}"),
        await client.get("/v2/jimo/nothing/tags/list"),
        await client.delete("/v2/"),
        await client.get(f"/v2/jimo/app/blobs/{vanished}"),
    ]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200, 202, 204, 404, 404, 405, 404]
    for answer in answers:
        assert answer.headers.get_list("Docker-Distribution-API-Version") == ["registry/2.0"]


@pytest.mark.parametrize(
    "path", ["/v2/", "/v2/_catalog", "/v2/jimo/app/tags/list", "/v2/jimo/app/referrers/{digest}"]
)
async def test_every_get_resource_answers_head_without_a_body(
    client: httpx.AsyncClient, path: str
) -> None:
    digest = await push_blob(client, "jimo/app", b"config")
    await client.put(
        "/v2/jimo/app/manifests/v1",
        content=json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": digest, "size": 6},
                "layers": [],
            }
        ).encode(),
        headers={"Content-Type": OCI_MANIFEST},
    )
    url = path.format(digest=digest)
    got = await client.get(url)
    head = await client.head(url)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["Content-Length"] == str(len(got.content)) != "0"
    assert head.headers["Content-Type"] == got.headers["Content-Type"]


async def test_head_blob_reports_size_and_digest_without_body(client: httpx.AsyncClient) -> None:
    data = os.urandom(1000)
    digest = await push_blob(client, "jimo/app", data)
    response = await client.head(f"/v2/jimo/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "1000"
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.content == b""


async def test_get_blob_returns_exact_bytes(client: httpx.AsyncClient) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = await push_blob(client, "jimo/app", data)
    response = await client.get(f"/v2/jimo/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Docker-Content-Digest"] == digest


async def test_unknown_blob_is_404_blob_unknown(client: httpx.AsyncClient) -> None:
    for method in ("GET", "HEAD"):
        response = await client.request(method, f"/v2/jimo/app/blobs/{UNKNOWN}")
        assert response.status_code == 404
    response = await client.get(f"/v2/jimo/app/blobs/{UNKNOWN}")
    assert error_code(response) == "BLOB_UNKNOWN"


async def test_blob_of_another_repository_is_not_served(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "jimo/private", b"secret layer")
    response = await client.get(f"/v2/other/app/blobs/{digest}")
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UNKNOWN"


@pytest.mark.parametrize(
    ("header", "status", "expected", "content_range"),
    [
        ("bytes=0-9", 206, slice(0, 10), "bytes 0-9/100"),
        ("bytes=90-", 206, slice(90, 100), "bytes 90-99/100"),
        ("bytes=-5", 206, slice(95, 100), "bytes 95-99/100"),
        ("bytes=50-5000", 206, slice(50, 100), "bytes 50-99/100"),
        ("bytes=0-0", 206, slice(0, 1), "bytes 0-0/100"),
        ("lines=1-2", 200, slice(0, 100), None),
        ("bytes=1-2,4-5", 200, slice(0, 100), None),
    ],
)
async def test_range_requests(
    client: httpx.AsyncClient,
    header: str,
    status: int,
    expected: slice,
    content_range: str | None,
) -> None:
    data = bytes(range(100))
    digest = await push_blob(client, "jimo/app", data)
    response = await client.get(f"/v2/jimo/app/blobs/{digest}", headers={"Range": header})
    assert response.status_code == status
    assert response.content == data[expected]
    assert response.headers.get("Content-Range") == content_range
    assert response.headers["Content-Length"] == str(len(data[expected]))


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=500-600", "bytes=50-10", "bytes=-0"])
async def test_unsatisfiable_range_is_416_with_size(client: httpx.AsyncClient, header: str) -> None:
    digest = await push_blob(client, "jimo/app", bytes(100))
    response = await client.get(f"/v2/jimo/app/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */100"
    # The blob exists: the error must not say BLOB_UNKNOWN.
    assert error_code(response) == "SIZE_INVALID"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", "bytes=-"])
async def test_range_we_do_not_serve_is_ignored_with_a_warning(
    client: httpx.AsyncClient, header: str
) -> None:
    data = os.urandom(100)
    digest = await push_blob(client, "jimo/app", data)
    response = await client.get(f"/v2/jimo/app/blobs/{digest}", headers={"Range": header})
    assert (response.status_code, response.content) == (200, data)
    assert response.headers["Warning"].startswith('299 - "Range ignored')
    plain = await client.get(f"/v2/jimo/app/blobs/{digest}")
    assert "Warning" not in plain.headers


async def test_delete_blob_unlinks_it_from_the_repository(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "jimo/app", b"to delete")
    await push_blob(client, "jimo/keep", b"to delete")
    response = await client.delete(f"/v2/jimo/app/blobs/{digest}")
    assert response.status_code == 202
    assert (await client.head(f"/v2/jimo/app/blobs/{digest}")).status_code == 404
    # Content-addressed and shared: the other repository still serves it.
    assert (await client.get(f"/v2/jimo/keep/blobs/{digest}")).content == b"to delete"
    again = await client.delete(f"/v2/jimo/app/blobs/{digest}")
    assert again.status_code == 404
    assert error_code(again) == "BLOB_UNKNOWN"


async def test_identical_content_is_stored_once(client: httpx.AsyncClient, data_dir: Path) -> None:
    data = os.urandom(4096)
    digest = await push_blob(client, "jimo/one", data)
    await push_blob(client, "jimo/two", data)
    await push_blob(client, "team/three", data)
    files = [path for path in (data_dir / "blobs").rglob("*") if path.is_file()]
    assert [path.name for path in files] == [digest.split(":")[1]]


@pytest.mark.parametrize(
    "digest",
    ["sha256:xyz", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256", "sha256:" + "a" * 63],
)
async def test_malformed_digest_is_400_digest_invalid(
    client: httpx.AsyncClient, digest: str
) -> None:
    response = await client.get(f"/v2/jimo/app/blobs/{digest}")
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


@pytest.mark.parametrize(
    "name", ["Jimo/app", "jimo//app", "jimo/app-", "-jimo", "jimo/.app", "a" * 256, "jimo/app_"]
)
async def test_invalid_repository_name_is_400_name_invalid(
    client: httpx.AsyncClient, name: str
) -> None:
    response = await client.get(f"/v2/{name}/blobs/{UNKNOWN}")
    assert response.status_code == 400
    assert error_code(response) == "NAME_INVALID"


async def test_unsupported_method_is_405_unsupported(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/v2/jimo/app/blobs/{UNKNOWN}")
    assert response.status_code == 405
    assert error_code(response) == "UNSUPPORTED"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/../../etc/blobs/" + UNKNOWN,
        "/v2/jimo/../../cangku.db/blobs/" + UNKNOWN,
        "/v2/jimo/app/blobs/sha256:../../../cangku.db",
        "/v2/jimo/app/blobs/uploads/../../../cangku.db",
        "/v2/jimo/app/manifests/../../blobs",
    ],
)
async def test_traversal_attempts_never_reach_the_data_directory(app: ASGIApp, path: str) -> None:
    for method in ("GET", "HEAD", "DELETE", "PUT", "PATCH"):
        status, body = await raw_request(app, method, path)
        assert status in (400, 404, 405), (method, path, status)
        assert b"SQLite" not in body
