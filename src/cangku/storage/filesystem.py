"""The filesystem driver: the embedded default.

Layout under the data directory's `root`:

    blobs/<algorithm>/<first two hex digits>/<hex>   verified blobs, content-addressed
    uploads/<session name>                           bytes of an upload session so far
    tmp/<random>                                     one-shot uploads before verification

A blob file appears only by `os.replace` of a fully written and verified file, so a crash
(even SIGKILL) at any moment leaves either the whole blob or none of it. Session names and
digests are validated here (hex only), and every path is built from those validated parts,
so nothing can reach outside `root`.

Several processes may share the data directory (replicas on a shared filesystem, the CLI):
an append, a commit or a cancel holds an exclusive `flock` on the session's file for its
whole duration, so requests for one session never interleave even on different processes;
after waiting, it checks that the path still names the file it locked (a commit renames the
session's file into `blobs/`). NFS: Linux maps `flock` to NFS byte-range locks.

fsync policy: with `fsync=True` a blob's bytes and its directory entry are flushed before the
blob is recorded, so a power loss cannot leave a recorded blob with missing bytes. A killed
process never needs it: the page cache survives the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import anyio.to_thread

from cangku.asgi import ReceivedBody
from cangku.content.digest import HEX_LENGTHS, Digest
from cangku.content.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    SizeInvalid,
    UploadOutOfOrder,
)
from cangku.storage.base import LocalFile, UploadAborted, outwait

if TYPE_CHECKING:
    from hashlib import _Hash

# Hash and write in batches this large, off the event loop (hashlib releases the GIL): a
# thread hop per batch, ~55 us of CPU each on the project's machine (docs/performance.md).
WRITE_BATCH = 4 * 1024 * 1024
# Chunks from this size on that the writer may keep (bytes, the server's ReceivedBody) join a
# batch as they are; smaller ones are copied together.
KEEP_CHUNK = 64 * 1024
# Bytes one write() call hands the kernel. The page cache allocates a new folio as large as
# the write (ext4 and XFS large folios, Linux >= 6.16). A VM with free page reporting gives
# the host free blocks of 2 MiB and more (page_reporting_order 9), and a page the host took
# back costs a fault on the host when first touched again. Folios up to 32 KiB (order 3,
# the kernel's PAGE_ALLOC_COSTLY_ORDER) are served from the per-CPU lists and small free
# fragments, which the machine's own churn (socket buffers, above all) keeps warm; larger
# ones split those big blocks. On the project's machine, in the same minutes: 2.0-2.9 ms of
# system time per MB pushed with 256 KiB writes, 0.3-0.7 with 32 KiB writes
# (docs/performance.md, "Cold memory"). The reference registry writes 32 KiB at a time.
FILE_WRITE = 32 * 1024
READ_CHUNK = 1024 * 1024
# registry/sessions.py: upload id + repository key. Bare 32-digit ids are sessions from
# before migration 0005; they are still listed so that garbage collection expires them.
SESSION_NAME = re.compile(r"[a-f0-9]{32}(?:[a-f0-9]{32})?")


class FilesystemStorage:
    def __init__(self, root: Path, *, fsync: bool = False) -> None:
        self.root = root
        self.fsync = fsync
        self.blobs_dir = root / "blobs"
        self.uploads_dir = root / "uploads"
        self.tmp_dir = root / "tmp"
        # The same directories as str, for the paths built per request (below).
        self._blobs = str(self.blobs_dir)
        self._uploads = str(self.uploads_dir)
        self._tmp = str(self.tmp_dir)
        for directory in (self.blobs_dir, self.uploads_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        # Running sha256 per upload session, valid while it matches the file's size (appends
        # only grow a session, one at a time under its lock). Another process (or a restart)
        # simply rehashes the file at commit.
        self._upload_hashers: dict[str, tuple[int, _Hash]] = {}
        # One request at a time per upload in this process (then the file lock, across them):
        # two overlapping PATCHes must not interleave bytes.
        self._upload_locks: dict[str, asyncio.Lock] = {}

    async def check_writable(self) -> None:
        await anyio.to_thread.run_sync(self._check_writable)

    def _check_writable(self) -> None:
        # Where blobs are first written: a full or read-only disk fails here.
        probe = self.tmp_dir / f"ready-{uuid.uuid4().hex}"
        try:
            with probe.open("xb") as file:
                file.write(b"ready")
        finally:
            probe.unlink(missing_ok=True)

    # -- paths -----------------------------------------------------------------------------
    # Built as str: a Path join costs ~100 bytecode instructions; as Paths, the PUT that
    # finishes a small blob's upload ran ~1,150 more of them on the event loop, of ~15,200
    # (`benchmarks/request_cost.py --opcodes`).
    def blob_path(self, digest: Digest) -> Path:
        return Path(self._blob_file(digest))

    def _blob_file(self, digest: Digest) -> str:
        return f"{self._blobs}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def _upload_path(self, upload_id: str) -> str:
        if not SESSION_NAME.fullmatch(upload_id):
            raise BlobUploadUnknown("unknown upload")
        return f"{self._uploads}/{upload_id}"

    # -- blobs -----------------------------------------------------------------------------
    async def stat(self, digest: Digest) -> int | None:
        return self.stat_blocking(digest)

    def stat_blocking(self, digest: Digest) -> int | None:
        try:
            return os.stat(self._blob_file(digest)).st_size
        except FileNotFoundError:
            return None

    async def open(self, digest: Digest, start: int, end: int) -> LocalFile:
        try:
            file = open(self._blob_file(digest), "rb")  # noqa: SIM115 - the receiver closes it
        except FileNotFoundError:
            raise BlobUnknown("blob unknown to registry", str(digest)) from None
        return LocalFile(file, start, end - start)

    async def read(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            file = open(self._blob_file(digest), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise BlobUnknown("blob unknown to registry", str(digest)) from None
        with file:
            file.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                data = await anyio.to_thread.run_sync(file.read, size)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data

    async def delete(self, digest: Digest) -> None:
        self.delete_blocking(digest)

    def delete_blocking(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._blob_file(digest))

    async def iterate(self) -> AsyncIterator[tuple[Digest, int, float]]:
        for algorithm in HEX_LENGTHS:
            base = self.blobs_dir / algorithm
            if not base.is_dir():
                continue
            for prefix in sorted(base.iterdir()):
                for path in sorted(prefix.iterdir()):
                    try:
                        digest = Digest.parse(f"{algorithm}:{path.name}")
                        info = path.stat()
                    except (FileNotFoundError, ValueError, DigestInvalid):
                        continue
                    yield digest, info.st_size, info.st_mtime

    async def write_blob(
        self, chunks: AsyncIterable[bytes], digest: Digest, expected_length: int | None
    ) -> int:
        temp = f"{self._tmp}/{uuid.uuid4().hex}"
        try:
            with open(temp, "wb") as file:
                hasher = digest.hasher()
                size = await _write_hashed(chunks, file, hasher)
                _check_length(size, expected_length)
                if hasher.hexdigest() != digest.hex:
                    raise DigestInvalid("the content does not match the digest", str(digest))
                await self._publish(temp, digest, file)
            return size
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    async def _publish(self, source: str, digest: Digest, file: BinaryIO) -> None:
        target = self._blob_file(digest)
        if self.fsync:
            await anyio.to_thread.run_sync(os.fsync, file.fileno())
        try:
            # Already stored (verified when it was written): keep it, never rewrite shared
            # bytes, but restart its age, which garbage collection reads for unrecorded files.
            os.utime(target)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source)
            return
        except FileNotFoundError:
            pass  # Not stored, or garbage collection deleted it a moment ago.
        made: list[Path] = []
        try:
            os.replace(source, target)
        except FileNotFoundError:
            # The first blob of its fan-out directory. Made only then: a mkdir that finds
            # the directory (it locks the parent for a create) cost more system time than
            # the rename, once per blob (docs/performance.md, "Image pushers after the page
            # cache has grown"). `source` is this request's own file: the directory lacks.
            made = _make_directories(Path(target).parent)
            os.replace(source, target)
        if self.fsync:
            # The blob's entry, then (innermost first) the entry of each directory made for
            # it: a crash must not lose a blob the database already records.
            for directory in [Path(target).parent, *(made_one.parent for made_one in made)]:
                await anyio.to_thread.run_sync(_fsync_directory, directory)

    # -- upload sessions -------------------------------------------------------------------
    async def create_upload(self, upload_id: str, algorithm: str = "sha256") -> None:
        os.close(os.open(self._upload_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        self._upload_hashers[upload_id] = (0, hashlib.new(algorithm))

    async def upload_size(self, upload_id: str) -> int | None:
        try:
            return os.stat(self._upload_path(upload_id)).st_size
        except FileNotFoundError:
            return None

    async def append_upload(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        expected_offset: int | None = None,
        *,
        before_save: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        path = self._upload_path(upload_id)
        async with self._session_locked(upload_id, path, "r+b") as file:
            start = file.seek(0, os.SEEK_END)
            if expected_offset is not None and expected_offset != start:
                raise UploadOutOfOrder(
                    f"chunk starts at {expected_offset} but the upload has {start} bytes", start
                )
            hashed_size, hasher = self._upload_hashers.get(upload_id, (-1, hashlib.sha256()))
            running = hasher.copy() if hashed_size == start else _NullHasher()
            try:
                written = await _write_hashed(chunks, file, running)
                _check_length(written, expected_length)
                if before_save is not None:
                    await before_save()
            except BaseException:
                # All of the chunk or none of it: the client retries from the old offset.
                file.truncate(start)
                raise
            end = start + written
            if isinstance(running, _NullHasher):
                self._upload_hashers.pop(upload_id, None)
            else:
                self._upload_hashers[upload_id] = (end, running)
            return end

    async def commit_upload(self, upload_id: str, digest: Digest) -> int:
        path = self._upload_path(upload_id)
        async with self._session_locked(upload_id, path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            hashed_size, hasher = self._upload_hashers.get(upload_id, (-1, hashlib.sha256()))
            if hashed_size != size or digest.algorithm != hasher.name:
                hasher = await anyio.to_thread.run_sync(_hash_file, path, digest.algorithm)
            if hasher.hexdigest() != digest.hex:
                raise DigestInvalid("the uploaded content does not match the digest", str(digest))
            await self._publish(path, digest, file)
            self._forget_upload(upload_id)
            return size

    def _upload_lock(self, upload_id: str) -> asyncio.Lock:
        return self._upload_locks.setdefault(upload_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _session_locked(
        self, upload_id: str, path: str, mode: str
    ) -> AsyncIterator[BinaryIO]:
        """The session's file, opened in `mode` and locked against every other request for
        it, of this process and of others; BlobUploadUnknown, leaving no lock behind, if
        there is no such session (else every request with a made-up id would leave one)."""
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            # Only these: another error (EACCES, EIO, ESTALE on NFS) is the server's, and a
            # 404 would make the client give up an upload that exists.
            raise BlobUploadUnknown("unknown upload") from None
        async with self._upload_lock(upload_id):
            try:
                file = cast(BinaryIO, open(path, mode))  # noqa: SIM115 - closed below
            except FileNotFoundError:  # Finished or cancelled while we waited.
                self._forget_upload(upload_id)
                raise BlobUploadUnknown("unknown upload") from None
            with file:
                try:
                    # Free (the usual case): taken here, without a thread hop (~50 µs of CPU,
                    # twice per finishing PUT).
                    fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    # In a thread: another process may hold it for a whole PATCH.
                    await anyio.to_thread.run_sync(fcntl.flock, file.fileno(), fcntl.LOCK_EX)
                if not _names(path, file):  # Committed or cancelled elsewhere meanwhile.
                    self._forget_upload(upload_id)
                    raise BlobUploadUnknown("unknown upload")
                yield file

    def _forget_upload(self, upload_id: str) -> None:
        self._upload_hashers.pop(upload_id, None)
        self._upload_locks.pop(upload_id, None)

    async def delete_upload(self, upload_id: str) -> None:
        path = self._upload_path(upload_id)
        try:
            async with self._session_locked(upload_id, path, "rb"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        except BlobUploadUnknown:
            pass  # Gone already.
        self._forget_upload(upload_id)

    async def iterate_uploads(self) -> AsyncIterator[tuple[str, float]]:
        for path in self.uploads_dir.iterdir():
            if SESSION_NAME.fullmatch(path.name):
                try:
                    yield path.name, path.stat().st_mtime
                except FileNotFoundError:
                    continue

    async def delete_stale_temporary(self, older_than: float) -> int:
        # A write in progress touches its file with every batch, so an old one is abandoned.
        deleted = 0
        for path in self.tmp_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    deleted += 1
        return deleted


class _NullHasher:
    """Stands in when the running hash is unknown (another process wrote); commit rehashes."""

    name = "none"

    def update(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def copy(self) -> _NullHasher:
        return self

    def hexdigest(self) -> str:
        return ""


async def _write_hashed(
    chunks: AsyncIterable[bytes], file: BinaryIO, hasher: _Hash | _NullHasher
) -> int:
    """Stream chunks to `file`, hashing the same buffers; returns the bytes written.

    Batches of WRITE_BATCH bytes are hashed and written in a worker thread while the event
    loop keeps receiving the next batch (hashlib and file writes release the GIL), so the
    network, the hash and the disk overlap instead of taking turns. A batch is a list of
    the chunks as they came where the writer may keep them (bytes, the server's
    ReceivedBody), copies of the others: at most two batches are in memory.
    """
    batch: list[bytes | bytearray] = []
    batched = 0
    copied = bytearray()  # Small or borrowed chunks, gathered into one piece of the batch.
    written = 0
    pending: asyncio.Future[None] | None = None

    def flush(pieces: list[bytes | bytearray]) -> None:
        for piece in pieces:
            hasher.update(piece)
            view = memoryview(piece)
            for start in range(0, len(view), FILE_WRITE):
                file.write(view[start : start + FILE_WRITE])

    try:
        async for chunk in chunks:
            if len(chunk) >= KEEP_CHUNK and isinstance(chunk, bytes | ReceivedBody):
                # Kept as it is. Only bytes or the server's own buffers: a producer may
                # reuse a plain bytearray while the thread still reads it.
                if copied:
                    batch.append(copied)
                    copied = bytearray()
                batch.append(chunk)
            else:
                copied += chunk
            batched += len(chunk)
            if batched < WRITE_BATCH:
                continue
            if copied:
                batch.append(copied)
                copied = bytearray()
            if pending is not None:
                # Shielded: a cancellation must not end `pending` while its thread writes on
                # (anyio's run_sync returns at once when its task is cancelled).
                await asyncio.shield(pending)
            pending = asyncio.ensure_future(anyio.to_thread.run_sync(flush, batch))
            written += batched
            batch, batched = [], 0
        if copied:
            batch.append(copied)
        if batch:
            # In a thread as well: a write can block on the disk (dirty-page throttling when
            # the machine writes a lot), and the event loop serves every other request
            # meanwhile.
            if pending is not None:
                await asyncio.shield(pending)
            pending = asyncio.ensure_future(anyio.to_thread.run_sync(flush, batch))
            await asyncio.shield(pending)
            written += batched
    finally:
        # Never leave a write running behind the caller's back (e.g. a truncate on failure).
        if pending is not None:
            await outwait(pending)
    return written


def _names(path: str, file: BinaryIO) -> bool:
    """Whether `path` still names the open `file` (not renamed or unlinked since)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(file.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _check_length(actual: int, expected: int | None) -> None:
    if expected is not None and actual != expected:
        if actual < expected:
            raise UploadAborted(f"body ended after {actual} of {expected} bytes")
        raise SizeInvalid(f"body is {actual} bytes, Content-Length said {expected}")


def _hash_file(path: str, algorithm: str) -> _Hash:
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as file:
        while data := file.read(READ_CHUNK * 4):
            hasher.update(data)
    return hasher


def _make_directories(directory: Path) -> list[Path]:
    """Make `directory` and its missing parents, as `mkdir(parents=True, exist_ok=True)`;
    the ones this call made, innermost first. Another request making one meanwhile is fine
    (that request flushes its entry)."""
    missing: list[Path] = []
    while directory != directory.parent and not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    made: list[Path] = []
    for one in reversed(missing):
        try:
            one.mkdir()
            made.append(one)
        except FileExistsError:
            pass
    return made[::-1]


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
