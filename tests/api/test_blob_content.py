"""Blob GETs render whatever the storage answers (`Registry.open_blob`): an open local file
(tests/api/test_zero_copy_server.py), a stream of chunks, or a redirect to a pre-signed URL."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cangku.content.digest import Digest
from cangku.storage.base import BlobStorage
from cangku.storage.memory import MemoryStorage
from cangku.storage.s3 import S3Storage
from tests.api.helpers import error_code, open_registry_client, push_blob
from tests.s3 import s3_storage

NAME = "jimo/app"
DATA = os.urandom(3000)


@pytest.fixture(params=["memory", "s3", "s3-redirect"])
def storage(request: pytest.FixtureRequest) -> Iterator[BlobStorage]:
    if request.param == "memory":
        yield MemoryStorage()
        return
    with s3_storage(redirect=request.param == "s3-redirect") as storage:
        yield storage


@pytest.fixture
async def client(
    storage: BlobStorage, database_url: str, data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with open_registry_client(storage, database_url, data_dir) as client:
        yield client


async def fetch(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> httpx.Response:
    """GET, following a redirect to the object store as a registry client does."""
    response = await client.get(path, headers=headers)
    if response.status_code != 307:
        return response
    assert response.content == b""
    assert response.headers["Cache-Control"] == "no-store"
    async with httpx.AsyncClient() as store:
        return await store.get(response.headers["Location"], headers=headers)


@pytest.mark.parametrize(
    ("range_header", "status", "expected"),
    [(None, 200, DATA), ("bytes=100-199", 206, DATA[100:200]), ("bytes=-10", 206, DATA[-10:])],
    ids=["whole", "range", "suffix"],
)
async def test_get_blob_answers_its_bytes_whatever_the_storage_answers(
    client: httpx.AsyncClient,
    storage: BlobStorage,
    range_header: str | None,
    status: int,
    expected: bytes,
) -> None:
    digest = await push_blob(client, NAME, DATA)
    headers = {} if range_header is None else {"Range": range_header}

    response = await fetch(client, f"/v2/{NAME}/blobs/{digest}", headers)

    assert response.status_code == status
    assert response.content == expected


async def test_redirecting_storage_answers_307_to_a_presigned_url(
    client: httpx.AsyncClient, storage: BlobStorage
) -> None:
    digest = await push_blob(client, NAME, DATA)

    response = await client.get(f"/v2/{NAME}/blobs/{digest}")

    if isinstance(storage, S3Storage) and storage.redirect:
        assert response.status_code == 307
        location = response.headers["Location"]
        assert "X-Amz-Signature=" in location and "X-Amz-Expires=300" in location
    else:
        assert response.status_code == 200
        assert response.content == DATA


async def test_head_blob_never_redirects(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, NAME, DATA)

    response = await client.head(f"/v2/{NAME}/blobs/{digest}")

    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(DATA))


async def test_blob_whose_bytes_are_gone_answers_blob_unknown_before_any_body(
    client: httpx.AsyncClient, storage: BlobStorage
) -> None:
    digest = await push_blob(client, NAME, DATA)
    await storage.delete(Digest.parse(digest))  # Damaged storage: the database still has it.

    response = await client.get(f"/v2/{NAME}/blobs/{digest}")

    assert response.status_code == 404
    assert error_code(response) == "BLOB_UNKNOWN"
