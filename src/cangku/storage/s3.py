"""The S3 driver: blobs in an S3-compatible object store (AWS S3, Ceph RGW, MinIO, ...).

Layout under the bucket's `prefix`:

    blobs/<algorithm>/<first two hex digits>/<hex>   verified blobs, content-addressed
    uploads/<session name>/state                     JSON: size, multipart upload, parts, tail
    uploads/<session name>/data                      the multipart upload's key (never a blob)
    uploads/<session name>/tail-<random>             bytes after the last whole part
    uploads/<random 64 hex>/...                      one-shot `write_blob` uploads

The client is boto3, called in worker threads (docs/scale-out.md has the measurement that
chose it). Every call is blocking inside the thread and the event loop never waits on S3.

Upload sessions. A PATCH streams its body into multipart parts of exactly `PART_SIZE` bytes
(S3 wants ≥ 5 MiB for every part but the last); what is left over (less than a part) is
written as a small `tail` object, so a session's bytes always live in the object store, never
in one process's memory, and the next PATCH (on any process) starts by reading that tail back.
The `state` object is written last: it is the commit point of an append (all of it or none of
it), and any part or tail written by an append that failed is simply not referenced (and
overwritten, or deleted with the session).

Running digests. hashlib state cannot be serialised, so each process keeps the running hash
of the sessions it appended to, valid only for the exact `state` it wrote: every saved state
carries a fresh random `generation`, and a hash is used only while the stored state still has
the generation it was made for (a size alone could match bytes another replica wrote from
the same offset at the same moment). A commit on a process without it (the PATCH went
elsewhere, or a restart) re-hashes the assembled object by reading it back from the store.
That costs one read of the blob only in that case, and needs no shared state beyond the store.

A commit completes the multipart upload under `uploads/<session>/data`, verifies the digest,
and only then copies it to `blobs/...`: a blob key never holds unverified bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from cangku.content.digest import HEX_LENGTHS, Digest
from cangku.content.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    SizeInvalid,
    UploadOutOfOrder,
)
from cangku.storage.base import BlobContent, Redirect, Stream, UploadAborted, outwait
from cangku.storage.filesystem import SESSION_NAME

if TYPE_CHECKING:
    from hashlib import _Hash

    from mypy_boto3_s3 import S3Client

    from cangku.config import S3Settings

T = TypeVar("T")

# Every multipart part but the last is exactly this long (S3's minimum is 5 MiB). A PATCH holds
# at most one part (plus one network chunk) in memory.
PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
# Chunks of a GetObject body read ahead of the client (memory per stream: this many
# READ_CHUNKs at most, plus the one being sent). Two: the thread reads the next chunk while
# the server sends one; more only costs memory per concurrent pull.
STREAM_AHEAD = 2
# Pre-signed GETs live this long: long enough for the client to follow the redirect, short
# enough that a leaked URL soon stops working (Distribution's default is 20 minutes).
PRESIGNED_SECONDS = 300
# CopyObject copies up to 5 GiB in one request; larger blobs are copied part by part.
COPY_IN_ONE_REQUEST = 5 * 1024**3


@dataclass
class _Session:
    """An upload session's `state` object."""

    size: int = 0
    multipart: str | None = None  # the S3 UploadId, once the first whole part was written
    parts: list[tuple[int, str]] = field(default_factory=list)  # (part number, ETag)
    tail: str | None = None  # key of the bytes after the last part
    tail_size: int = 0
    # Random, new with every saved state: which running hash (if any) describes these bytes.
    generation: str = ""

    def dump(self) -> bytes:
        return json.dumps(
            {
                "generation": self.generation,
                "size": self.size,
                "multipart": self.multipart,
                "parts": self.parts,
                "tail": self.tail,
                "tail_size": self.tail_size,
            }
        ).encode()

    @classmethod
    def load(cls, data: bytes) -> _Session:
        raw = json.loads(data)
        return cls(
            size=int(raw["size"]),
            multipart=raw["multipart"],
            parts=[(int(number), str(etag)) for number, etag in raw["parts"]],
            tail=raw["tail"],
            tail_size=int(raw["tail_size"]),
            generation=str(raw.get("generation", "")),  # none in states saved before it
        )


def client_from_settings(settings: S3Settings) -> S3Client:
    """A boto3 S3 client; credentials and region not given fall back to the standard AWS
    environment variables and config files (boto3's usual chain)."""
    secret = settings.secret_access_key
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=None if secret is None else secret.get_secret_value(),
        region_name=settings.region,
    )
    config = Config(
        s3={"addressing_style": "path" if settings.path_style else "auto"},
        signature_version="s3v4",
        max_pool_connections=64,
        retries={"max_attempts": 4, "mode": "standard"},
        connect_timeout=10,
        read_timeout=120,
    )
    return session.client("s3", endpoint_url=settings.endpoint, config=config)


class S3Storage:
    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "", *, redirect: bool = False
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.redirect = redirect
        # Running hash per session, with the generation of the state it describes.
        self._hashers: dict[str, tuple[str, _Hash]] = {}
        self._locks: dict[str, anyio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: S3Settings) -> S3Storage:
        return cls(
            client_from_settings(settings),
            settings.bucket,
            settings.prefix,
            redirect=settings.redirect,
        )

    # -- keys --------------------------------------------------------------------------------
    def blob_key(self, digest: Digest) -> str:
        return f"{self.prefix}blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"

    def _session_dir(self, upload_id: str) -> str:
        # Names become keys: only the registry's hex names, so none reaches another's keys.
        if not SESSION_NAME.fullmatch(upload_id):
            raise BlobUploadUnknown("unknown upload")
        return f"{self.prefix}uploads/{upload_id}/"

    async def _call(self, function: Callable[..., T], **arguments: Any) -> T:
        return await anyio.to_thread.run_sync(partial(function, **arguments))

    # -- blobs -------------------------------------------------------------------------------
    async def stat(self, digest: Digest) -> int | None:
        return await anyio.to_thread.run_sync(self.stat_blocking, digest)

    def stat_blocking(self, digest: Digest) -> int | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.blob_key(digest))
        except ClientError as error:
            if _not_found(error):
                return None
            raise
        return answer["ContentLength"]

    async def open(self, digest: Digest, start: int, end: int) -> BlobContent:
        if self.redirect or end <= start:
            if await self.stat(digest) is None:
                raise BlobUnknown("blob unknown to registry", str(digest))
            if end <= start:
                return Stream(_nothing())
            url = await self._call(
                self.client.generate_presigned_url,
                ClientMethod="get_object",
                Params={"Bucket": self.bucket, "Key": self.blob_key(digest)},
                ExpiresIn=PRESIGNED_SECONDS,
            )
            return Redirect(url)
        body = await self._get(self.blob_key(digest), start, end)
        if body is None:
            raise BlobUnknown("blob unknown to registry", str(digest))
        return Stream(self._stream(body, end - start))

    async def read(
        self, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return
        body = await self._get(self.blob_key(digest), start, end)
        if body is None:
            raise BlobUnknown("blob unknown to registry", str(digest))
        length = None if end is None else end - start
        async with contextlib.aclosing(self._stream(body, length)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _get(self, key: str, start: int = 0, end: int | None = None) -> Any | None:
        """The streaming body of bytes [start, end) of `key`; None when there is no such
        object. A range starting at or after the end answers an empty body."""
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start > 0 or end is not None:
            arguments["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            answer = await self._call(self.client.get_object, **arguments)
        except ClientError as error:
            if _not_found(error):
                return None
            if error.response.get("Error", {}).get("Code") == "InvalidRange":
                return _EmptyBody()
            raise
        return answer["Body"]

    async def _stream(self, body: Any, length: int | None) -> AsyncGenerator[bytes, None]:
        """The chunks (<= READ_CHUNK bytes) of a GetObject `body` of about `length` bytes
        (None: unknown); closes it. botocore's `read` raises when the body ends before its
        Content-Length."""
        if length is not None and length <= READ_CHUNK:
            try:
                while data := await anyio.to_thread.run_sync(body.read, READ_CHUNK):
                    yield data
            finally:
                body.close()
            return
        # aclosing: a consumer that stops closes the pump now (stopping its thread), not
        # whenever the garbage collector finalizes it.
        async with contextlib.aclosing(_pumped(body)) as chunks:
            async for data in chunks:
                yield data

    async def delete(self, digest: Digest) -> None:
        await anyio.to_thread.run_sync(self.delete_blocking, digest)

    def delete_blocking(self, digest: Digest) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.blob_key(digest))

    async def iterate(self) -> AsyncIterator[tuple[Digest, int, float]]:
        for algorithm in HEX_LENGTHS:
            base = f"{self.prefix}blobs/{algorithm}/"
            async for entry in self._list(base):
                try:
                    digest = Digest.parse(f"{algorithm}:{entry['Key'].rsplit('/', 1)[-1]}")
                except (ValueError, DigestInvalid):
                    continue
                yield digest, entry["Size"], entry["LastModified"].timestamp()

    async def _list(self, prefix: str) -> AsyncIterator[Any]:
        token: str | None = None
        while True:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token is not None:
                arguments["ContinuationToken"] = token
            page = await self._call(self.client.list_objects_v2, **arguments)
            for entry in page.get("Contents", []):
                yield entry
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or token is None:
                return

    async def write_blob(
        self, chunks: AsyncIterable[bytes], digest: Digest, expected_length: int | None
    ) -> int:
        # A one-shot session of its own, so that a crash mid-way leaves only what the upload
        # purge removes (listed by `iterate_uploads` though it has no `state`).
        directory = self._session_dir(uuid.uuid4().hex * 2)
        hasher = digest.hasher()
        try:
            session = await self._append_parts(
                directory, _Session(), b"", chunks, hasher, expected_length
            )
            if hasher.hexdigest() != digest.hex:
                raise DigestInvalid("the content does not match the digest", str(digest))
            source = await self._assemble(directory, session)
            await self._publish(source, session.size, digest)
            return session.size
        finally:
            with anyio.CancelScope(shield=True):
                await self._remove_session(directory)

    async def _publish(self, source: str, size: int, digest: Digest) -> None:
        """Copy verified bytes to the blob's key. Always copied, even when the blob exists:
        that restarts its age, which garbage collection reads for unrecorded blobs."""
        target = self.blob_key(digest)
        if size <= COPY_IN_ONE_REQUEST:
            await self._call(
                self.client.copy_object,
                Bucket=self.bucket,
                Key=target,
                CopySource={"Bucket": self.bucket, "Key": source},
            )
        else:
            await self._call(
                self.client.copy,
                CopySource={"Bucket": self.bucket, "Key": source},
                Bucket=self.bucket,
                Key=target,
                Config=TransferConfig(multipart_chunksize=256 * 1024 * 1024),
            )

    async def delete_stale_temporary(self, older_than: float) -> int:
        """Nothing to do here: a one-shot write is an upload session of its own in this driver
        (`write_blob`), so the upload purge removes what a crash left of it."""
        return 0

    async def check_writable(self) -> None:
        """Put and delete a small probe object (the readiness check): an unreachable store,
        a missing bucket or refused credentials raise here."""
        key = f"{self.prefix}probes/ready-{uuid.uuid4().hex}"
        await self._call(self.client.put_object, Bucket=self.bucket, Key=key, Body=b"ready")
        await self._call(self.client.delete_object, Bucket=self.bucket, Key=key)

    # -- upload sessions ---------------------------------------------------------------------
    async def create_upload(self, upload_id: str, algorithm: str = "sha256") -> None:
        directory = self._session_dir(upload_id)
        session = _Session()
        await self._save(directory, session)
        self._hashers[upload_id] = (session.generation, hashlib.new(algorithm))

    async def _load(self, directory: str) -> _Session | None:
        body = await self._get(directory + "state")
        if body is None:
            return None
        try:
            data = await anyio.to_thread.run_sync(body.read)
        finally:
            body.close()
        return _Session.load(data)

    async def _save(self, directory: str, session: _Session) -> None:
        session.generation = uuid.uuid4().hex
        await self._call(
            self.client.put_object,
            Bucket=self.bucket,
            Key=directory + "state",
            Body=session.dump(),
            ContentType="application/json",
        )

    async def upload_size(self, upload_id: str) -> int | None:
        session = await self._load(self._session_dir(upload_id))
        return None if session is None else session.size

    async def append_upload(
        self,
        upload_id: str,
        chunks: AsyncIterable[bytes],
        expected_length: int | None,
        expected_offset: int | None = None,
        *,
        before_save: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        directory = self._session_dir(upload_id)
        async with self._lock(upload_id):
            session = await self._load(directory)
            if session is None:
                self._forget(upload_id)  # Else every made-up id would leave a lock behind.
                raise BlobUploadUnknown("unknown upload")
            if expected_offset is not None and expected_offset != session.size:
                raise UploadOutOfOrder(
                    f"chunk starts at {expected_offset} but the upload has {session.size} bytes",
                    session.size,
                )
            running = self._running_hash(upload_id, session)
            tail = await self._read_tail(session)
            updated = await self._append_parts(
                directory, session, tail, chunks, running, expected_length
            )
            if before_save is not None:
                try:
                    await before_save()
                except BaseException:
                    # Nothing of this call is recorded: its new tail and a multipart upload
                    # it started are nobody's.
                    with anyio.CancelScope(shield=True):
                        await self._delete_keys([updated.tail] if updated.tail else [])
                        if session.multipart is None and updated.multipart is not None:
                            await self._abort(directory + "data", updated.multipart)
                    raise
            try:
                await self._save(directory, updated)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._delete_keys([updated.tail] if updated.tail else [])
                raise
            if session.tail is not None and session.tail != updated.tail:
                await self._delete_keys([session.tail])
            if isinstance(running, _NullHasher):
                self._hashers.pop(upload_id, None)
            else:
                self._hashers[upload_id] = (updated.generation, running)
            return updated.size

    async def _read_tail(self, session: _Session) -> bytes:
        if session.tail is None:
            return b""
        body = await self._get(session.tail)
        if body is None:
            raise BlobUploadUnknown("unknown upload")  # Purged or committed meanwhile.
        try:
            return await anyio.to_thread.run_sync(body.read)
        finally:
            body.close()

    async def _append_parts(
        self,
        directory: str,
        session: _Session,
        tail: bytes,
        chunks: AsyncIterable[bytes],
        hasher: _Hash | _NullHasher,
        expected_length: int | None,
    ) -> _Session:
        """`session` grown by `chunks`: whole parts uploaded, the rest as a new tail object.
        `tail` (the session's current tail bytes) goes first. Nothing is saved; on any
        error (UploadAborted, SizeInvalid, the stream's) a multipart upload this call
        started is aborted and no tail is written."""
        updated = _Session(
            size=session.size, multipart=session.multipart, parts=list(session.parts)
        )
        buffer = bytearray(tail)
        # One part uploads while the next one arrives and is hashed (as the filesystem driver
        # overlaps its writes): at most two parts and the buffer are in memory.
        pending: asyncio.Future[None] | None = None
        try:
            async for chunk in chunks:
                buffer += chunk
                updated.size += len(chunk)
                while len(buffer) >= PART_SIZE:
                    part = bytes(buffer[:PART_SIZE])
                    del buffer[:PART_SIZE]
                    await anyio.to_thread.run_sync(hasher.update, part[len(tail) :])
                    tail = b""
                    if pending is not None:
                        # Parts are numbered in order: one at a time. Shielded: a cancellation
                        # must not end `pending` while its thread uploads on (base.outwait).
                        await asyncio.shield(pending)
                    pending = asyncio.ensure_future(self._upload_part(directory, updated, part))
            if pending is not None:
                await asyncio.shield(pending)
            _check_length(updated.size - session.size, expected_length)
            await anyio.to_thread.run_sync(hasher.update, bytes(buffer[len(tail) :]))
            if buffer:
                updated.tail = f"{directory}tail-{uuid.uuid4().hex}"
                updated.tail_size = len(buffer)
                await self._call(
                    self.client.put_object,
                    Bucket=self.bucket,
                    Key=updated.tail,
                    Body=bytes(buffer),
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                if pending is not None:
                    # Never leave a part upload running behind the caller's back.
                    with contextlib.suppress(asyncio.CancelledError):
                        await outwait(pending)
                if session.multipart is None and updated.multipart is not None:
                    await self._abort(directory + "data", updated.multipart)
            raise
        return updated

    async def _upload_part(self, directory: str, session: _Session, part: bytes) -> None:
        if session.multipart is None:
            answer = await self._call(
                self.client.create_multipart_upload, Bucket=self.bucket, Key=directory + "data"
            )
            session.multipart = answer["UploadId"]
        number = len(session.parts) + 1
        uploaded = await self._call(
            self.client.upload_part,
            Bucket=self.bucket,
            Key=directory + "data",
            UploadId=session.multipart,
            PartNumber=number,
            Body=part,
        )
        session.parts.append((number, uploaded["ETag"]))

    async def _assemble(self, directory: str, session: _Session) -> str:
        """The key holding all of the session's bytes: its tail alone, or the multipart
        upload completed (the tail as its last part)."""
        if session.multipart is None:
            if session.tail is not None:
                return session.tail
            empty = directory + "empty"
            await self._call(self.client.put_object, Bucket=self.bucket, Key=empty, Body=b"")
            return empty
        parts = list(session.parts)
        if session.tail is not None:
            number = len(parts) + 1
            copied = await self._call(
                self.client.upload_part_copy,
                Bucket=self.bucket,
                Key=directory + "data",
                UploadId=session.multipart,
                PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": session.tail},
            )
            parts.append((number, copied["CopyPartResult"]["ETag"]))
        await self._call(
            self.client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=directory + "data",
            UploadId=session.multipart,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]},
        )
        return directory + "data"

    async def commit_upload(self, upload_id: str, digest: Digest) -> int:
        directory = self._session_dir(upload_id)
        async with self._lock(upload_id):
            session = await self._load(directory)
            if session is None:
                self._forget(upload_id)
                raise BlobUploadUnknown("unknown upload")
            hasher = self._running_hash(upload_id, session)
            known = digest.algorithm == hasher.name
            if known and hasher.hexdigest() != digest.hex:
                # Refused before assembling: the session stays as it was.
                raise DigestInvalid("the uploaded content does not match the digest", str(digest))
            source = await self._assemble(directory, session)
            if not known and await self._hash_object(source, digest.algorithm) != digest.hex:
                # The multipart upload is complete now: the session cannot take more
                # bytes, so it ends here (the client starts over, as after any failed PUT).
                await self._remove_session(directory)
                self._forget(upload_id)
                raise DigestInvalid("the uploaded content does not match the digest", str(digest))
            await self._publish(source, session.size, digest)
            await self._remove_session(directory)
            self._forget(upload_id)
            return session.size

    async def _hash_object(self, key: str, algorithm: str) -> str:
        hasher = hashlib.new(algorithm)
        body = await self._get(key)
        if body is None:
            raise BlobUploadUnknown("unknown upload")
        async for chunk in self._stream(body, None):
            await anyio.to_thread.run_sync(hasher.update, chunk)
        return hasher.hexdigest()

    def _running_hash(self, upload_id: str, session: _Session) -> _Hash | _NullHasher:
        """A copy of this process's running hash of the session's bytes, if it has one for
        exactly the stored state; else a stand-in (the commit then re-hashes)."""
        generation, hasher = self._hashers.get(upload_id, ("", None))
        if hasher is None or not session.generation or generation != session.generation:
            return _NullHasher()
        return hasher.copy()

    def _lock(self, upload_id: str) -> anyio.Lock:
        # One request at a time per session in this process; across replicas the registry
        # holds the session's lease row while a request runs (registry/upload_leases.py).
        return self._locks.setdefault(upload_id, anyio.Lock())

    def _forget(self, upload_id: str) -> None:
        self._hashers.pop(upload_id, None)
        self._locks.pop(upload_id, None)

    async def delete_upload(self, upload_id: str) -> None:
        directory = self._session_dir(upload_id)
        async with self._lock(upload_id):
            await self._remove_session(directory)
            self._forget(upload_id)

    async def _remove_session(self, directory: str) -> None:
        """Abort every multipart upload and delete every object under the session's keys."""
        async for key, upload, _ in self._multipart_uploads(directory):
            await self._abort(key, upload)
        keys = [entry["Key"] async for entry in self._list(directory)]
        await self._delete_keys(keys)

    async def _abort(self, key: str, upload: str) -> None:
        with contextlib.suppress(ClientError):  # Already completed or aborted.
            await self._call(
                self.client.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload
            )

    async def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000 keys.
            batch = keys[start : start + 1000]
            await self._call(
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )

    async def _multipart_uploads(self, prefix: str) -> AsyncIterator[tuple[str, str, float]]:
        key_marker: str | None = None
        upload_marker: str | None = None
        while True:
            arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if key_marker is not None:
                arguments["KeyMarker"] = key_marker
                arguments["UploadIdMarker"] = upload_marker or ""
            page = await self._call(self.client.list_multipart_uploads, **arguments)
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"], upload["Initiated"].timestamp()
            if not page.get("IsTruncated"):
                return
            key_marker = page.get("NextKeyMarker")
            upload_marker = page.get("NextUploadIdMarker")

    async def iterate_uploads(self) -> AsyncIterator[tuple[str, float]]:
        """Every session as (name, last activity): sessions by their objects, and also
        multipart uploads with no object at all (an append or `write_blob` that died), so
        the upload purge aborts them too."""
        base = f"{self.prefix}uploads/"
        latest: dict[str, float] = {}
        async for entry in self._list(base):
            name = entry["Key"][len(base) :].split("/", 1)[0]
            stamp = entry["LastModified"].timestamp()
            latest[name] = max(stamp, latest.get(name, stamp))
        async for key, _, initiated in self._multipart_uploads(base):
            name = key[len(base) :].split("/", 1)[0]
            latest[name] = max(initiated, latest.get(name, initiated))
        for name, stamp in sorted(latest.items()):
            if SESSION_NAME.fullmatch(name):
                yield name, stamp


class _EmptyBody:
    """The body of a range that starts at the end of the object."""

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _NullHasher:
    """Stands in when the running hash is unknown (another process appended); commit
    re-hashes."""

    name = "none"

    def update(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def copy(self) -> _NullHasher:
        return self

    def hexdigest(self) -> str:
        return ""


async def _pumped(body: Any) -> AsyncGenerator[bytes, None]:
    """The chunks of `body` (a GetObject body), read by one thread of its own from start to
    end and handed to the event loop as they come, at most STREAM_AHEAD ahead of the
    consumer; closes the body.

    Why: one worker-thread call per chunk (anyio.to_thread, the earlier way) cost a round
    trip through anyio's worker queue and two wake-ups per MiB: ~25 % of the server's CPU
    per MiB of an S3 pull (docs/performance.md "Scale-out"). A thread of its own, rather
    than one of anyio's: it lives as long as the client reads, and slow clients must not
    take the worker threads every other request needs. A consumer that stops (the client
    went away) stops the thread after its current read."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
    room = threading.Semaphore(STREAM_AHEAD)
    stop = threading.Event()

    def hand_over(item: bytes | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is left to read
            loop.call_soon_threadsafe(chunks.put_nowait, item)

    def pump() -> None:
        try:
            while True:
                room.acquire()
                if stop.is_set():
                    return
                data = body.read(READ_CHUNK)
                hand_over(data)
                if not data:
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            hand_over(error)
        finally:
            body.close()

    threading.Thread(target=pump, name="cangku-s3-read", daemon=True).start()
    try:
        while True:
            item = await chunks.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            room.release()
            yield item
    finally:
        stop.set()
        room.release()  # wakes the thread if it waits for room


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


def _not_found(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code")
    return code in {"404", "NoSuchKey", "NotFound"}


def _check_length(actual: int, expected: int | None) -> None:
    if expected is not None and actual != expected:
        if actual < expected:
            raise UploadAborted(f"body ended after {actual} of {expected} bytes")
        raise SizeInvalid(f"body is {actual} bytes, Content-Length said {expected}")
