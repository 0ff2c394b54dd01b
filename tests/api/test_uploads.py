"""Blob uploads: monolithic, chunked, streamed, status, cancel, mount; hostile input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from cangku.registry import Registry
from cangku.storage import filesystem
from tests.api.helpers import error_code, push_blob, sha256


async def start(client: httpx.AsyncClient, name: str = "jimo/app") -> str:
    response = await client.post(f"/v2/{name}/blobs/uploads/")
    assert response.status_code == 202
    assert response.headers["Range"] == "0-0"
    assert response.headers["Docker-Upload-UUID"]
    location: str = response.headers["Location"]
    assert location.startswith(f"/v2/{name}/blobs/uploads/")
    return location


async def test_monolithic_post_with_digest_creates_the_blob(client: httpx.AsyncClient) -> None:
    data = os.urandom(2048)
    digest = sha256(data)
    response = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"digest": digest}, content=data
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/jimo/app/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert (await client.get(response.headers["Location"])).content == data


async def test_post_then_put_with_body_creates_the_blob(client: httpx.AsyncClient) -> None:
    data = os.urandom(5000)
    location = await start(client)
    response = await client.put(location, params={"digest": sha256(data)}, content=data)
    assert response.status_code == 201
    assert (await client.get(f"/v2/jimo/app/blobs/{sha256(data)}")).content == data


async def test_chunked_upload_with_content_range(client: httpx.AsyncClient) -> None:
    data = os.urandom(42)
    location = await start(client)
    first = await client.patch(
        location,
        content=data[:22],
        headers={"Content-Range": "0-21", "Content-Type": "application/octet-stream"},
    )
    assert first.status_code == 202
    assert first.headers["Range"] == "0-21"
    # The POST's location stays valid: the same range again is out of order.
    repeat = await client.patch(location, content=data[:22], headers={"Content-Range": "0-21"})
    assert repeat.status_code == 416
    assert repeat.headers["Range"] == "0-21"
    status = await client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-21"
    second = await client.patch(
        status.headers["Location"], content=data[22:], headers={"Content-Range": "22-41"}
    )
    assert second.status_code == 202
    assert second.headers["Range"] == "0-41"
    done = await client.put(second.headers["Location"], params={"digest": sha256(data)})
    assert done.status_code == 201
    assert (await client.get(f"/v2/jimo/app/blobs/{sha256(data)}")).content == data


async def test_out_of_order_first_chunk_is_416(client: httpx.AsyncClient) -> None:
    location = await start(client)
    response = await client.patch(location, content=b"x" * 20, headers={"Content-Range": "22-41"})
    assert response.status_code == 416
    assert response.headers["Range"] == "0-0"
    assert response.headers["Location"] == location
    assert error_code(response) == "BLOB_UPLOAD_INVALID"


async def test_streamed_patch_without_range_then_put_without_body(
    client: httpx.AsyncClient,
) -> None:
    data = os.urandom(10_000)
    location = await start(client)
    patched = await client.patch(location, content=data)
    assert patched.status_code == 202
    assert patched.headers["Range"] == f"0-{len(data) - 1}"
    done = await client.put(patched.headers["Location"], params={"digest": sha256(data)})
    assert done.status_code == 201


async def test_final_chunk_may_arrive_with_the_put(client: httpx.AsyncClient) -> None:
    data = os.urandom(100)
    location = await start(client)
    await client.patch(location, content=data[:60], headers={"Content-Range": "0-59"})
    done = await client.put(
        location,
        params={"digest": sha256(data)},
        content=data[60:],
        headers={"Content-Range": "60-99"},
    )
    assert done.status_code == 201
    assert (await client.get(f"/v2/jimo/app/blobs/{sha256(data)}")).content == data


async def test_sha512_digests_are_verified_and_served(client: httpx.AsyncClient) -> None:
    data = os.urandom(300)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    location = await start(client)
    await client.patch(location, content=data)
    done = await client.put(location, params={"digest": digest})
    assert done.status_code == 201
    response = await client.get(f"/v2/jimo/app/blobs/{digest}")
    assert response.content == data
    assert response.headers["Docker-Content-Digest"] == digest


async def test_digest_algorithm_sha512_session_is_hashed_as_it_arrives(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rehash(*args: object) -> None:
        raise AssertionError("the session was re-read at commit")

    monkeypatch.setattr(filesystem, "_hash_file", no_rehash)
    data = os.urandom(3000)
    started = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"digest-algorithm": "sha512"}
    )
    assert started.status_code == 202
    location = started.headers["Location"]
    await client.patch(location, content=data[:1000], headers={"Content-Range": "0-999"})
    await client.patch(location, content=data[1000:], headers={"Content-Range": "1000-2999"})
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    assert (await client.put(location, params={"digest": digest})).status_code == 201
    assert (await client.get(f"/v2/jimo/app/blobs/{digest}")).content == data


@pytest.mark.parametrize("algorithm", ["md5", "sha384", "SHA512", "sha256+x"])
async def test_digest_algorithm_we_cannot_verify_is_400(
    client: httpx.AsyncClient, algorithm: str
) -> None:
    response = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"digest-algorithm": algorithm}
    )
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


async def test_upload_session_announces_its_minimum_chunk_length(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/v2/jimo/app/blobs/uploads/")
    assert response.status_code == 202
    assert int(response.headers["OCI-Chunk-Min-Length"]) >= 1


async def test_wrong_digest_is_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    claimed = sha256(b"something else")
    response = await client.post(
        "/v2/jimo/app/blobs/uploads/", params={"digest": claimed}, content=b"actual bytes"
    )
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    location = await start(client)
    await client.patch(location, content=b"actual bytes")
    response = await client.put(location, params={"digest": claimed})
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert (await client.head(f"/v2/jimo/app/blobs/{claimed}")).status_code == 404
    assert not [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]
    assert not list((data_dir / "tmp").iterdir())


async def test_put_without_digest_is_400_digest_invalid(client: httpx.AsyncClient) -> None:
    location = await start(client)
    response = await client.put(location)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


async def test_body_shorter_than_content_length_keeps_nothing(client: httpx.AsyncClient) -> None:
    location = await start(client)
    await client.patch(location, content=b"a" * 10)
    # A client that promises 100 bytes and sends 30 (it hung up): none of the 30 is kept.
    response = await client.patch(location, content=b"b" * 30, headers={"Content-Length": "100"})
    assert response.status_code == 400
    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    assert (await client.get(location)).headers["Range"] == "0-9"


async def test_content_range_that_disagrees_with_length_is_refused(
    client: httpx.AsyncClient,
) -> None:
    location = await start(client)
    response = await client.patch(location, content=b"x" * 10, headers={"Content-Range": "0-99"})
    assert response.status_code == 400
    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    assert (await client.get(location)).headers["Range"] == "0-0"


@pytest.mark.parametrize("header", ["abc", "5-2", "-1-5", "0-99999999999999999999"])
@pytest.mark.parametrize("method", ["PATCH", "PUT"])
async def test_malformed_content_range_is_416_with_the_range_received(
    client: httpx.AsyncClient, header: str, method: str
) -> None:
    location = await start(client)
    await client.patch(location, content=b"abc", headers={"Content-Range": "0-2"})
    response = await client.request(
        method,
        location,
        params={"digest": sha256(b"abcx")} if method == "PUT" else None,
        content=b"x",
        headers={"Content-Range": header},
    )
    assert response.status_code == 416
    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    assert response.headers["Range"] == "0-2"
    assert response.headers["Location"] == location
    assert (await client.get(location)).headers["Range"] == "0-2"


@pytest.mark.parametrize("upload_id", ["0" * 32, "not-a-uuid", "A" * 32, "0" * 31 + "g", "0" * 33])
async def test_unknown_or_hostile_upload_id_is_404(
    client: httpx.AsyncClient, upload_id: str
) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = await client.request(
            method, f"/v2/jimo/app/blobs/uploads/{upload_id}", params={"digest": sha256(b"")}
        )
        assert response.status_code == 404, (method, response.status_code)
        assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"


async def test_upload_of_another_repository_is_unknown_here(client: httpx.AsyncClient) -> None:
    location = await start(client, "jimo/app")
    upload_id = location.rsplit("/", 1)[1]
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = await client.request(
            method,
            f"/v2/other/app/blobs/uploads/{upload_id}",
            params={"digest": sha256(b"x")},
            content=b"x",
        )
        assert response.status_code == 404, method
        assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"
    # Untouched in its own repository: exactly these bytes make the blob.
    finished = await client.put(location, params={"digest": sha256(b"x")}, content=b"x")
    assert finished.status_code == 201


async def test_cancelled_upload_is_gone(client: httpx.AsyncClient, data_dir: Path) -> None:
    location = await start(client)
    await client.patch(location, content=b"partial")
    assert (await client.delete(location)).status_code == 204
    response = await client.get(location)
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"
    assert not list((data_dir / "uploads").iterdir())


async def test_mount_from_a_repository_holding_the_blob_is_201(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "jimo/base", b"shared layer")
    response = await client.post(
        "/v2/team/app/blobs/uploads/", params={"mount": digest, "from": "jimo/base"}
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/team/app/blobs/{digest}"
    assert (await client.get(f"/v2/team/app/blobs/{digest}")).content == b"shared layer"


@pytest.mark.parametrize("source", [None, "jimo/empty", "jimo/base"])
async def test_mount_that_cannot_be_done_starts_a_normal_session(
    client: httpx.AsyncClient, source: str | None
) -> None:
    await push_blob(client, "jimo/base", b"layer")
    unknown = sha256(b"nowhere")
    params = {"mount": unknown if source == "jimo/base" else sha256(b"layer")}
    if source:
        params["from"] = source
    response = await client.post("/v2/team/app/blobs/uploads/", params=params)
    assert response.status_code == 202
    if source:
        assert response.headers["Warning"].startswith('299 - "blob sha256:')
    else:
        assert "Warning" not in response.headers
    assert response.headers["Location"].startswith("/v2/team/app/blobs/uploads/")


async def test_zero_byte_blob_can_be_pushed_and_pulled(client: httpx.AsyncClient) -> None:
    location = await start(client)
    done = await client.put(
        location, params={"digest": sha256(b"")}, headers={"Content-Length": "0"}
    )
    assert done.status_code == 201
    response = await client.get(f"/v2/jimo/app/blobs/{sha256(b'')}")
    assert response.status_code == 200
    assert response.content == b""


async def test_final_chunk_out_of_order_with_the_put_is_416(client: httpx.AsyncClient) -> None:
    data = os.urandom(100)
    location = await start(client)
    await client.patch(location, content=data[:60], headers={"Content-Range": "0-59"})
    response = await client.put(
        location,
        params={"digest": sha256(data)},
        content=data[70:],
        headers={"Content-Range": "70-99"},
    )
    assert response.status_code == 416
    assert response.headers["Range"] == "0-59"
    assert (await client.head(f"/v2/jimo/app/blobs/{sha256(data)}")).status_code == 404
    # The session is intact: the right final chunk still completes it.
    done = await client.put(
        location,
        params={"digest": sha256(data)},
        content=data[60:],
        headers={"Content-Range": "60-99"},
    )
    assert done.status_code == 201


async def test_automatic_mount_without_from_links_a_blob_held_elsewhere(
    client: httpx.AsyncClient, registry: Registry
) -> None:
    digest = await push_blob(client, "jimo/base", b"shared layer")
    off = await client.post("/v2/team/app/blobs/uploads/", params={"mount": digest})
    assert off.status_code == 202
    registry.automatic_mount = True
    response = await client.post("/v2/team/app/blobs/uploads/", params={"mount": digest})
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/team/app/blobs/{digest}"
    assert (await client.get(f"/v2/team/app/blobs/{digest}")).content == b"shared layer"
    nowhere = await client.post("/v2/team/app/blobs/uploads/", params={"mount": sha256(b"nowhere")})
    assert nowhere.status_code == 202
    assert "was not mounted" in nowhere.headers["Warning"]
