"""Blob bytes by digest, behind a small driver interface. Knows nothing of repositories."""

from cangku.storage.base import BlobContent, BlobStorage, LocalFile, Redirect, Stream, UploadAborted
from cangku.storage.filesystem import FilesystemStorage
from cangku.storage.memory import MemoryStorage

__all__ = [
    "BlobContent",
    "BlobStorage",
    "FilesystemStorage",
    "LocalFile",
    "MemoryStorage",
    "Redirect",
    "Stream",
    "UploadAborted",
]
