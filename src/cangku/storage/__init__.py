"""Blob bytes by digest, behind a small driver interface. Knows nothing of repositories."""

from cangku.storage.base import BlobStorage, UploadAborted
from cangku.storage.filesystem import FilesystemStorage
from cangku.storage.memory import MemoryStorage

__all__ = ["BlobStorage", "FilesystemStorage", "MemoryStorage", "UploadAborted"]
