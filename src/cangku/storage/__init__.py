"""Blob bytes by digest, behind a small driver interface. Knows nothing of repositories."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cangku.storage.base import BlobContent, BlobStorage, LocalFile, Redirect, Stream, UploadAborted
from cangku.storage.filesystem import FilesystemStorage
from cangku.storage.memory import MemoryStorage

if TYPE_CHECKING:
    from cangku.config import StorageSettings

__all__ = [
    "BlobContent",
    "BlobStorage",
    "FilesystemStorage",
    "LocalFile",
    "MemoryStorage",
    "Redirect",
    "Stream",
    "UploadAborted",
    "open_storage",
]


def open_storage(settings: StorageSettings, data: Path) -> BlobStorage:
    """The driver `settings.driver` names: the data directory's `blobs/`, or S3."""
    if settings.driver == "s3":
        assert settings.s3 is not None  # StorageSettings checks it.
        # Imported here: boto3 takes a while to import and the embedded default never needs it.
        from cangku.storage.s3 import S3Storage

        return S3Storage.from_settings(settings.s3)
    return FilesystemStorage(data, fsync=settings.fsync)
