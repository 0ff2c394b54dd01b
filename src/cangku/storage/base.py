"""The storage driver protocol every driver implements (and `tests/storage/` checks).

A blob becomes visible under its digest only after its bytes were verified against that
digest; upload sessions append to a private staging area until then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cangku.content.digest import Digest
from cangku.content.errors import BlobUploadInvalid


class UploadAborted(BlobUploadInvalid):
    """The request body ended before the promised length; nothing of it was kept."""


@dataclass(frozen=True)
class LocalFile:
    """`length` bytes of an open file from `offset`, for zero-copy sending (`sendfile`).

    The receiver owns `file` and closes it. Being open, the bytes stay readable even if
    garbage collection unlinks the blob meanwhile.
    """

    file: BinaryIO
    offset: int
    length: int


@dataclass(frozen=True)
class Redirect:
    """Where the client fetches the bytes itself (an S3 pre-signed GET): answered with 307."""

    url: str


@contextlib.asynccontextmanager
async def closing_chunks(chunks: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """`chunks` (e.g. a driver's `read`), closed on leaving when it can be (an async
    generator: `aclose`). A generator that re-yields another's chunks must close the inner
    one itself when it is closed: otherwise that one (an open file, an S3 body with its read
    thread) stays open until the garbage collector finalizes it, a loop iteration or more
    later."""
    try:
        yield chunks
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


@dataclass(frozen=True)
class Stream:
    """The bytes as an async iterator; the receiver iterates it to the end or closes it."""

    chunks: AsyncIterator[bytes]

    async def aclose(self) -> None:
        close = getattr(self.chunks, "aclose", None)
        if close is not None:
            await close()


# What `BlobStorage.open` answers: the HTTP layer renders each kind and never sees a path.
BlobContent = LocalFile | Redirect | Stream


class BlobStorage(Protocol):
    async def stat(self, digest: Digest) -> int | None:
        """The stored blob's size, or None."""

    async def open(self, digest: Digest, start: int, end: int) -> BlobContent:
        """Bytes [start, end) of a stored blob, in the form the driver serves best.

        The blob is opened (or its existence checked) before this returns, so a missing
        blob raises BlobUnknown here rather than mid-response.
        """

    def read(self, digest: Digest, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes [start, end) of a stored blob; BlobUnknown (on the first iteration)
        when there is none."""

    async def delete(self, digest: Digest) -> None: ...

    # Metadata write transactions run in a worker thread and must see and delete blob files
    # from there, without waiting for the event loop (which may be busy with request bodies).
    def stat_blocking(self, digest: Digest) -> int | None:
        """`stat`, for a worker thread."""

    def delete_blocking(self, digest: Digest) -> None:
        """`delete`, for a worker thread."""

    def iterate(self) -> AsyncIterator[tuple[Digest, int, float]]:
        """Every stored blob as (digest, size, modification time)."""

    async def write_blob(
        self, chunks: AsyncIterable[bytes], digest: Digest, expected_length: int | None
    ) -> int:
        """Store a whole blob in one go, verified against `digest`; returns its size."""

    # Upload sessions are named by the registry (`registry/sessions.py`); the filesystem
    # driver refuses names that are not hex digits (BlobUploadUnknown): they become paths.
    async def create_upload(self, upload_id: str, algorithm: str = "sha256") -> None:
        """Start an empty session whose bytes are hashed with `algorithm` as they arrive
        (a commit under another algorithm still works: it rehashes)."""

    async def upload_size(self, upload_id: str) -> int | None:
        """Bytes received so far, or None when there is no such upload."""

    async def append_upload(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        expected_offset: int | None = None,
        *,
        before_save: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Append a chunk; all of it or (UploadAborted, errors) none of it. Returns the new size.

        With `expected_offset`, the chunk must start where the upload ends (UploadOutOfOrder).
        Appends to one upload never interleave. `before_save` is awaited after the whole
        chunk arrived and right before the new size is recorded; what it raises aborts the
        append as a failing body does (registry/upload_leases.py: the lease still held).
        """

    async def commit_upload(self, upload_id: str, digest: Digest) -> int:
        """Verify the upload against `digest` and make it the blob; returns its size."""

    async def delete_upload(self, upload_id: str) -> None: ...

    def iterate_uploads(self) -> AsyncIterator[tuple[str, float]]:
        """Every upload session as (upload id, modification time)."""

    async def check_writable(self) -> None:
        """Raise (OSError, or the driver's error) unless a blob could be written now: the
        readiness check (`/readyz`). Leaves nothing behind."""

    async def delete_stale_temporary(self, older_than: float) -> int:
        """Delete the driver's temporary files (a one-shot upload a crash cut short) last
        written before `older_than` (Unix seconds); returns how many went."""


async def outwait(pending: asyncio.Future[None]) -> None:
    """Wait until `pending` (a worker thread's write or upload) is done, whatever happens
    meanwhile: a cancellation, or a second one (which cuts `asyncio.shield` short), is
    re-raised only then, so that the caller's cleanup (a truncate, an aborted multipart
    upload) never runs beside the thread. `pending`'s own error is for the caller's `await`
    to raise; here it is only retrieved. (anyio's `to_thread.run_sync` does not wait for its
    thread when its task is cancelled the asyncio way.)"""
    cancelled: asyncio.CancelledError | None = None
    while not pending.done():
        try:
            await asyncio.wait((pending,))
        except asyncio.CancelledError as error:
            cancelled = error
    if not pending.cancelled():
        pending.exception()  # Retrieved: no "exception was never retrieved" warning.
    if cancelled is not None:
        raise cancelled
