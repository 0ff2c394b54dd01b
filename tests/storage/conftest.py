"""Every storage driver, built fresh for each test; the shared suite runs against each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cangku.storage import filesystem
from cangku.storage.base import BlobStorage
from cangku.storage.filesystem import FilesystemStorage
from cangku.storage.memory import MemoryStorage
from cangku.storage.s3 import S3Storage
from tests.s3 import s3_storage


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kilobyte batches and read chunks, so a few KiB of test data crosses many boundaries and
    # a stream that fails midway has already written part of itself to disk.
    monkeypatch.setattr(filesystem, "WRITE_BATCH", 1024)
    monkeypatch.setattr(filesystem, "READ_CHUNK", 1000)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def filesystem_storage(data_root: Path, small_batches: None) -> FilesystemStorage:
    return FilesystemStorage(data_root)


@pytest.fixture(params=["filesystem", "memory", "s3", "s3-redirect"])
def storage(
    request: pytest.FixtureRequest, data_root: Path, small_batches: None
) -> Iterator[BlobStorage]:
    if request.param == "filesystem":
        yield FilesystemStorage(data_root)
    elif request.param == "memory":
        yield MemoryStorage()
    else:
        with s3_storage(redirect=request.param == "s3-redirect") as storage:
            yield storage


@pytest.fixture
def s3(small_batches: None) -> Iterator[S3Storage]:
    with s3_storage() as storage:
        yield storage
