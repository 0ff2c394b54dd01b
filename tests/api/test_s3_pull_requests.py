"""Issue 15: what a blob pull costs the object store. Its CPU per MiB pulled is 3x the
registry's (docs/performance.md, "S3 pulls: the object store's CPU"), so a blob GET makes
one request of it: a ranged GetObject; with redirects, the HeadObject that checks the bytes
are there, then a pre-signed URL, which is no request. A HEAD makes none: the size is in the
database. On the real Ceph RGW (tests/s3.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cangku.storage.s3 import S3Storage
from tests.api.helpers import open_registry_client, push_blob
from tests.s3 import s3_storage

NAME = "jimo/app"


@pytest.fixture(params=[False, True], ids=["s3", "s3-redirect"])
def storage(request: pytest.FixtureRequest) -> Iterator[S3Storage]:
    with s3_storage(redirect=request.param) as storage:
        yield storage


@pytest.fixture
async def client(
    storage: S3Storage, database_url: str, data_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with open_registry_client(storage, database_url, data_dir) as client:
        yield client


async def test_a_blob_pull_asks_the_object_store_once_and_a_head_not_at_all(
    client: httpx.AsyncClient, storage: S3Storage
) -> None:
    digest = await push_blob(client, NAME, b"layer" * 1000)
    operations: list[str] = []

    def record(model: object, **_: object) -> None:
        operations.append(getattr(model, "name", "?"))

    storage.client.meta.events.register("before-call.s3", record)
    try:
        assert (await client.head(f"/v2/{NAME}/blobs/{digest}")).status_code == 200
        assert operations == []
        response = await client.get(f"/v2/{NAME}/blobs/{digest}")
    finally:
        storage.client.meta.events.unregister("before-call.s3", record)

    assert response.status_code == (307 if storage.redirect else 200)
    assert operations == (["HeadObject"] if storage.redirect else ["GetObject"])
