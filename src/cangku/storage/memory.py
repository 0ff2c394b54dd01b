"""An in-memory driver for fast tests; same contract as the filesystem driver."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from cangku.content.digest import Digest
from cangku.content.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    SizeInvalid,
    UploadOutOfOrder,
)
from cangku.storage.base import Stream, UploadAborted


class MemoryStorage:
    def __init__(self) -> None:
        self.blobs: dict[Digest, tuple[bytes, float]] = {}
        self.uploads: dict[str, tuple[bytearray, float]] = {}

    async def stat(self, digest: Digest) -> int | None:
        return self.stat_blocking(digest)

    def stat_blocking(self, digest: Digest) -> int | None:
        entry = self.blobs.get(digest)
        return None if entry is None else len(entry[0])

    async def open(self, digest: Digest, start: int, end: int) -> Stream:
        entry = self.blobs.get(digest)
        if entry is None:
            raise BlobUnknown("blob unknown to registry", str(digest))
        return Stream(_once(entry[0][start:end]))

    async def read(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        entry = self.blobs.get(digest)
        if entry is None:
            raise BlobUnknown("blob unknown to registry", str(digest))
        yield entry[0][start:end]

    async def delete(self, digest: Digest) -> None:
        self.delete_blocking(digest)

    def delete_blocking(self, digest: Digest) -> None:
        self.blobs.pop(digest, None)

    async def iterate(self) -> AsyncIterator[tuple[Digest, int, float]]:
        for digest, (data, mtime) in list(self.blobs.items()):
            yield digest, len(data), mtime

    async def write_blob(
        self, chunks: AsyncIterable[bytes], digest: Digest, expected_length: int | None
    ) -> int:
        data = await _collect(chunks, expected_length)
        if hashlib.new(digest.algorithm, data).hexdigest() != digest.hex:
            raise DigestInvalid("the content does not match the digest", str(digest))
        self.blobs[digest] = (bytes(data), time.time())
        return len(data)

    async def create_upload(self, upload_id: str, algorithm: str = "sha256") -> None:
        self.uploads[upload_id] = (bytearray(), time.time())

    async def upload_size(self, upload_id: str) -> int | None:
        entry = self.uploads.get(upload_id)
        return None if entry is None else len(entry[0])

    async def append_upload(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        expected_offset: int | None = None,
        *,
        before_save: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        if upload_id not in self.uploads:
            raise BlobUploadUnknown("unknown upload")
        buffer = self.uploads[upload_id][0]
        if expected_offset is not None and expected_offset != len(buffer):
            raise UploadOutOfOrder(
                f"chunk starts at {expected_offset} but the upload has {len(buffer)} bytes",
                len(buffer),
            )
        data = await _collect(chunks, expected_length)
        if before_save is not None:
            await before_save()
        buffer += data
        self.uploads[upload_id] = (buffer, time.time())
        return len(buffer)

    async def commit_upload(self, upload_id: str, digest: Digest) -> int:
        if upload_id not in self.uploads:
            raise BlobUploadUnknown("unknown upload")
        data = self.uploads[upload_id][0]
        if hashlib.new(digest.algorithm, data).hexdigest() != digest.hex:
            raise DigestInvalid("the uploaded content does not match the digest", str(digest))
        self.blobs[digest] = (bytes(data), time.time())
        del self.uploads[upload_id]
        return len(data)

    async def delete_upload(self, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)

    async def check_writable(self) -> None:
        return None  # Memory is always writable.

    async def iterate_uploads(self) -> AsyncIterator[tuple[str, float]]:
        for upload_id, (_, mtime) in list(self.uploads.items()):
            yield upload_id, mtime

    async def delete_stale_temporary(self, older_than: float) -> int:
        return 0  # One-shot uploads stay in memory until verified; a crash leaves nothing.


async def _collect(chunks: AsyncIterable[bytes], expected_length: int | None) -> bytearray:
    data = bytearray()
    async for chunk in chunks:
        data += chunk
    if expected_length is not None and len(data) != expected_length:
        if len(data) < expected_length:
            raise UploadAborted(f"body ended after {len(data)} of {expected_length} bytes")
        raise SizeInvalid(f"body is {len(data)} bytes, Content-Length said {expected_length}")
    return data


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
