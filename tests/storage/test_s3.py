"""What only the S3 driver does, on the real Ceph RGW (tests/s3.py): multipart parts, tails
staged in the store, commits on another process, the purge of abandoned multipart uploads,
and its settings. The shared contract is tests/storage/test_drivers.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio.to_thread
import pytest

from cangku.config import Settings
from cangku.content.digest import Digest
from cangku.content.errors import BlobUploadUnknown, DigestInvalid
from cangku.storage import open_storage, s3
from cangku.storage.base import Stream
from cangku.storage.s3 import READ_CHUNK, STREAM_AHEAD, S3Storage, _pumped
from tests.s3 import remove_everything, s3_settings
from tests.storage.test_drivers import (
    ClientDisconnected,
    breaking_stream,
    new_upload,
    new_upload_id,
    opened_bytes,
    split,
    stream,
    upload_ids,
)

MiB = 1024 * 1024
PART = 5 * MiB  # The smallest part S3 (and Ceph) accepts, to keep the data small.
BIG = os.urandom(2 * PART + 12345)


@pytest.fixture(autouse=True)
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "PART_SIZE", PART)


def another_process(storage: S3Storage) -> S3Storage:
    """The same store seen by another replica: nothing of this process's memory."""
    return S3Storage(storage.client, storage.bucket, storage.prefix)


def keys(storage: S3Storage) -> list[str]:
    page = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix)
    return sorted(entry["Key"][len(storage.prefix) :] for entry in page.get("Contents", []))


def multipart_uploads(storage: S3Storage) -> list[str]:
    page = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.prefix)
    return [upload["Key"] for upload in page.get("Uploads", [])]


def state(storage: S3Storage, upload_id: str) -> dict[str, object]:
    key = f"{storage.prefix}uploads/{upload_id}/state"
    body = storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"]
    loaded: dict[str, object] = json.loads(body.read())
    return loaded


async def test_chunked_upload_becomes_whole_parts_and_a_tail_in_the_store(s3: S3Storage) -> None:
    upload_id = await new_upload(s3, *split(BIG, 3 * MiB + 1))  # Chunks that straddle parts.

    session = state(s3, upload_id)
    assert session["size"] == len(BIG)
    assert len(session["parts"]) == 2  # type: ignore[arg-type]
    assert session["tail_size"] == 12345
    assert len(multipart_uploads(s3)) == 1
    tails = [key for key in keys(s3) if "/tail-" in key]
    assert len(tails) == 1  # Only the current tail: replaced ones are deleted.

    digest = Digest.of(BIG)
    assert await s3.commit_upload(upload_id, digest) == len(BIG)
    assert await opened_bytes(s3, digest, 0, len(BIG)) == BIG
    assert keys(s3) == [f"blobs/sha256/{digest.hex[:2]}/{digest.hex}"]
    assert multipart_uploads(s3) == []


async def test_small_patches_are_staged_in_the_store_and_continue_on_another_process(
    s3: S3Storage,
) -> None:
    upload_id = await new_upload(s3, BIG[:1000])  # Far less than a part.
    elsewhere = another_process(s3)

    assert await elsewhere.upload_size(upload_id) == 1000
    for chunk in split(BIG[1000:], 4 * MiB):
        await elsewhere.append_upload(upload_id, stream(chunk), len(chunk))
    digest = Digest.of(BIG)
    # The first process never saw most of the bytes: its commit re-hashes from the store.
    assert await s3.commit_upload(upload_id, digest) == len(BIG)

    assert await opened_bytes(s3, digest, PART - 10, PART + 10) == BIG[PART - 10 : PART + 10]


async def test_commit_on_another_process_refuses_a_wrong_digest_and_publishes_nothing(
    s3: S3Storage,
) -> None:
    upload_id = await new_upload(s3, *split(BIG, 2 * MiB))
    claimed = Digest.of(BIG[:-1])

    with pytest.raises(DigestInvalid):
        await another_process(s3).commit_upload(upload_id, claimed)

    assert await s3.stat(claimed) is None
    assert await s3.stat(Digest.of(BIG)) is None
    assert not [key for key in keys(s3) if key.startswith("blobs/")]
    assert multipart_uploads(s3) == []


async def test_a_running_hash_is_not_trusted_after_another_replica_rewrote_the_session(
    s3: S3Storage,
) -> None:
    # Two replicas take PATCHes of one session at the same moment: both read the same state,
    # both append as many bytes, and the other's state is written last. This process's
    # running hash matches the size but not the bytes: the commit must re-hash and refuse.
    upload_id = await new_upload(s3)
    key = f"{s3.prefix}uploads/{upload_id}/state"
    before = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    ours, theirs = os.urandom(3000), os.urandom(3000)
    await s3.append_upload(upload_id, stream(ours), len(ours))
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=before)  # what the other one read
    await another_process(s3).append_upload(upload_id, stream(theirs), len(theirs))

    with pytest.raises(DigestInvalid):
        await s3.commit_upload(upload_id, Digest.of(ours))
    assert await s3.stat(Digest.of(ours)) is None


async def test_commit_with_the_running_hash_refuses_a_wrong_digest_and_keeps_the_session(
    s3: S3Storage,
) -> None:
    upload_id = await new_upload(s3, *split(BIG, 2 * MiB))

    with pytest.raises(DigestInvalid):
        await s3.commit_upload(upload_id, Digest.of(b"other"))

    assert await s3.upload_size(upload_id) == len(BIG)
    assert await s3.commit_upload(upload_id, Digest.of(BIG)) == len(BIG)


async def test_append_that_breaks_after_writing_a_part_changes_nothing(s3: S3Storage) -> None:
    upload_id = await new_upload(s3, BIG[:1000])

    with pytest.raises(ClientDisconnected):
        await s3.append_upload(upload_id, breaking_stream(*split(BIG[1000:], MiB)), None)

    assert await s3.upload_size(upload_id) == 1000
    assert multipart_uploads(s3) == []  # The part it wrote went with its multipart upload.
    rest = BIG[1000:]
    await s3.append_upload(upload_id, stream(rest), len(rest), expected_offset=1000)
    assert await s3.commit_upload(upload_id, Digest.of(BIG)) == len(BIG)


async def test_parts_of_a_broken_append_are_replaced_by_the_next_one(s3: S3Storage) -> None:
    first = BIG[: PART + 100]  # One whole part and a tail.
    upload_id = await new_upload(s3, first)
    stray = os.urandom(2 * PART)

    with pytest.raises(ClientDisconnected):  # Writes part 2 (and maybe 3) of wrong bytes.
        await s3.append_upload(upload_id, breaking_stream(*split(stray, MiB)), None)

    assert await s3.upload_size(upload_id) == len(first)
    rest = BIG[len(first) :]
    await another_process(s3).append_upload(upload_id, stream(*split(rest, MiB)), len(rest))
    assert await s3.commit_upload(upload_id, Digest.of(BIG)) == len(BIG)
    assert await opened_bytes(s3, Digest.of(BIG), 0, len(BIG)) == BIG


async def test_write_blob_streams_large_blobs_as_multipart_and_leaves_nothing_behind(
    s3: S3Storage,
) -> None:
    digest = Digest.of(BIG)

    assert await s3.write_blob(stream(*split(BIG, MiB)), digest, len(BIG)) == len(BIG)
    with pytest.raises(DigestInvalid):
        await s3.write_blob(stream(*split(BIG, MiB)), Digest.of(b"other"), len(BIG))

    assert keys(s3) == [f"blobs/sha256/{digest.hex[:2]}/{digest.hex}"]
    assert multipart_uploads(s3) == []
    assert await opened_bytes(s3, digest, 0, len(BIG)) == BIG


async def test_upload_purge_aborts_abandoned_multipart_uploads(s3: S3Storage) -> None:
    # A replica died mid-PATCH (or mid `write_blob`): a multipart upload and no state object.
    abandoned = "ab" * 32
    key = f"{s3.prefix}uploads/{abandoned}/data"
    upload = s3.client.create_multipart_upload(Bucket=s3.bucket, Key=key)["UploadId"]
    s3.client.upload_part(Bucket=s3.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x")
    live = await new_upload(s3, *split(BIG, 3 * MiB))

    assert await upload_ids(s3) == {abandoned, live}
    for session in await upload_ids(s3):  # What garbage collection does with idle ones.
        await s3.delete_upload(session)

    assert multipart_uploads(s3) == []
    assert keys(s3) == []


async def test_requests_for_unknown_sessions_leave_no_state_behind(s3: S3Storage) -> None:
    for _ in range(20):
        with pytest.raises(BlobUploadUnknown):
            await s3.append_upload(new_upload_id(), stream(b"abc"), 3)
        with pytest.raises(BlobUploadUnknown):
            await s3.commit_upload(new_upload_id(), Digest.of(b""))
    finished = await new_upload(s3, b"abc")
    await s3.commit_upload(finished, Digest.of(b"abc"))

    assert s3._locks == {} and s3._hashers == {}


@pytest.mark.parametrize("upload_id", ["../" + "a" * 62, "a" * 63 + "/", "A" * 64, ""])
async def test_session_names_that_are_not_hex_are_refused(s3: S3Storage, upload_id: str) -> None:
    with pytest.raises(BlobUploadUnknown):
        await s3.create_upload(upload_id)
    with pytest.raises(BlobUploadUnknown):
        await s3.append_upload(upload_id, stream(b"x"), 1)
    assert keys(s3) == []


async def test_credentials_come_from_the_standard_aws_environment_when_not_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configured = s3_settings()
    assert configured.secret_access_key is not None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", configured.access_key_id or "")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", configured.secret_access_key.get_secret_value())
    settings = configured.model_copy(update={"access_key_id": None, "secret_access_key": None})
    storage = S3Storage.from_settings(settings)
    try:
        digest = Digest.of(b"from the environment")
        await storage.write_blob(stream(b"from the environment"), digest, None)
        assert await storage.stat(digest) == len(b"from the environment")
    finally:
        remove_everything(storage)


def test_settings_in_issue_15_shape_from_yaml_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CANGKU_STORAGE__DRIVER", "s3")
    monkeypatch.setenv("CANGKU_STORAGE__S3__BUCKET", "registry")
    monkeypatch.setenv("CANGKU_STORAGE__S3__PREFIX", "cangku")
    monkeypatch.setenv("CANGKU_STORAGE__S3__ENDPOINT", "http://127.0.0.1:7480")
    monkeypatch.setenv("CANGKU_STORAGE__S3__PATH_STYLE", "true")
    monkeypatch.setenv("CANGKU_STORAGE__S3__REDIRECT", "true")

    settings = Settings()

    assert settings.storage.s3 is not None
    assert settings.storage.s3.prefix == "cangku/"
    storage = open_storage(settings.storage, settings.data)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.redirect) == ("registry", "cangku/", True)


@pytest.mark.parametrize(
    "storage",
    [
        {"driver": "s3"},
        {"driver": "s3", "s3": {"bucket": "registry", "access_key_id": "only-half"}},
        {"driver": "s3", "s3": {"bucket": "registry", "prefix": "/absolute"}},
        {"driver": "s3", "s3": {"bucket": "registry", "endpoint": "127.0.0.1:7480"}},
        {"driver": "s3", "s3": {"bucket": "registry", "bukket": "typo"}},
        {"driver": "azure"},
    ],
)
def test_incomplete_or_wrong_s3_settings_are_refused(storage: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="storage"):
        Settings(storage=storage)


class RecordedBody:
    """A GetObject body that records which thread each read ran on, and its closing."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.threads: list[str] = []
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        self.threads.append(threading.current_thread().name)
        data: bytes = self.body.read(size)
        return data

    def close(self) -> None:
        self.closed = True
        self.body.close()


def recorded_bodies(storage: S3Storage, monkeypatch: pytest.MonkeyPatch) -> list[RecordedBody]:
    bodies: list[RecordedBody] = []
    get = storage._get

    async def recorded(key: str, start: int = 0, end: int | None = None) -> Any:
        body = RecordedBody(await get(key, start, end))
        bodies.append(body)
        return body

    monkeypatch.setattr(storage, "_get", recorded)
    return bodies


def read_threads_end(deadline: float = 5.0) -> bool:
    until = time.monotonic() + deadline
    while any(t.name == "cangku-s3-read" for t in threading.enumerate()):
        if time.monotonic() > until:
            return False
        time.sleep(0.01)
    return True


async def test_a_large_blob_is_read_by_one_thread_of_its_own_a_few_chunks_ahead(
    s3: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker-thread call per MiB cost a quarter of an S3 pull's CPU (docs/performance.md
    # "Scale-out"): the body is read by one thread from start to end, bounded ahead.
    digest = Digest.of(BIG)
    await s3.write_blob(stream(BIG), digest, len(BIG))
    bodies = recorded_bodies(s3, monkeypatch)

    content = await s3.open(digest, 0, len(BIG))
    assert isinstance(content, Stream)
    chunks = aiter(content.chunks)
    received = [await anext(chunks)]
    await asyncio.sleep(0.3)  # a slow client: the thread reads ahead, but only so far
    assert len(bodies[0].threads) <= 1 + STREAM_AHEAD + 1
    received += [chunk async for chunk in chunks]

    assert b"".join(received) == BIG
    assert set(bodies[0].threads) == {"cangku-s3-read"}
    assert len(bodies[0].threads) > 2  # several chunks, one thread
    assert read_threads_end() and bodies[0].closed


async def test_a_client_that_stops_reading_stops_the_read_thread_and_closes_the_body(
    s3: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = Digest.of(BIG)
    await s3.write_blob(stream(BIG), digest, len(BIG))
    bodies = recorded_bodies(s3, monkeypatch)

    content = await s3.open(digest, 0, len(BIG))
    assert isinstance(content, Stream)
    chunks = aiter(content.chunks)
    assert await anext(chunks) == BIG[:READ_CHUNK]
    await asyncio.sleep(0.2)  # the thread waits for room now
    await chunks.aclose()  # type: ignore[attr-defined]

    assert read_threads_end()
    assert bodies[0].closed
    assert len(bodies[0].threads) <= 1 + STREAM_AHEAD + 1


class BreakingBody:
    def __init__(self) -> None:
        self.reads = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 2:
            raise ConnectionResetError("the store went away")
        return b"x" * size

    def close(self) -> None:
        self.closed = True


async def test_a_read_that_fails_in_the_read_thread_fails_the_stream() -> None:
    body = BreakingBody()
    received = 0
    with pytest.raises(ConnectionResetError):
        async for chunk in _pumped(body):
            received += len(chunk)
    assert received == 2 * READ_CHUNK
    assert read_threads_end() and body.closed


async def test_a_reader_that_stops_stops_the_read_thread_at_once(
    s3: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `read` wraps the body's stream: closing it must close that stream then and there
    # (not when the garbage collector gets to it, a loop iteration or more later).
    digest = Digest.of(BIG)
    await s3.write_blob(stream(BIG), digest, len(BIG))
    bodies = recorded_bodies(s3, monkeypatch)

    chunks = s3.read(digest)
    assert await anext(chunks) == BIG[:READ_CHUNK]
    await chunks.aclose()  # type: ignore[attr-defined]

    assert read_threads_end()  # blocks the event loop: no finalizer runs meanwhile
    assert bodies[0].closed


async def _stalled_after(*parts: bytes) -> AsyncIterator[bytes]:
    """The parts, then a body that never goes on (the client stalls)."""
    for part in parts:
        yield part
    await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("parts", "cancellations"),
    [(1, 2), (2, 1)],  # Waiting for the body, cancelled twice; waiting for the part before.
    ids=["waiting-for-the-body-cancelled-twice", "waiting-for-a-part-upload"],
)
async def test_a_cancelled_append_aborts_only_once_its_part_upload_stopped(
    monkeypatch: pytest.MonkeyPatch, parts: int, cancellations: int
) -> None:
    # Aborting the multipart upload while a part still uploads in its thread may leave that
    # part behind in the store (S3: "you might need to abort again"). No store needed here.
    storage = S3Storage(cast(Any, None), "bucket")
    release, uploading = threading.Event(), threading.Event()
    in_flight: list[int] = []
    aborted_while_uploading: list[bool] = []

    def upload_blocking() -> None:
        in_flight.append(1)
        uploading.set()
        release.wait(10)
        in_flight.pop()

    async def upload_part(directory: str, session: s3._Session, part: bytes) -> None:
        session.multipart = "upload-id"
        await anyio.to_thread.run_sync(upload_blocking)

    async def abort(key: str, upload: str) -> None:
        aborted_while_uploading.append(bool(in_flight))

    monkeypatch.setattr(storage, "_upload_part", upload_part)
    monkeypatch.setattr(storage, "_abort", abort)
    body = _stalled_after(*[bytes(PART)] * parts)
    task = asyncio.create_task(
        storage._append_parts("d/", s3._Session(), b"", body, hashlib.sha256(), None)
    )
    assert await asyncio.to_thread(uploading.wait, 10)
    for _ in range(cancellations):
        task.cancel()
        await asyncio.sleep(0.05)
    returned_while_uploading = task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not returned_while_uploading
    assert aborted_while_uploading == [False]
