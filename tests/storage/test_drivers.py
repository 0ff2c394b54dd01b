"""The storage driver contract (`storage/base.py`), run against every driver.

Filesystem-only guarantees (paths, temp files, restarts) follow the shared suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from cangku.content.digest import Digest
from cangku.content.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    RegistryError,
    SizeInvalid,
    UploadOutOfOrder,
)
from cangku.registry.sessions import session_name
from cangku.storage import filesystem
from cangku.storage.base import BlobStorage, LocalFile, Redirect, UploadAborted
from cangku.storage.filesystem import FilesystemStorage

# A few KiB of non-repeating-looking bytes: several write batches and read chunks.
DATA = bytes((i * 7 + i // 256) % 256 for i in range(5000))


class ClientDisconnected(Exception):
    """Stands in for a request body that breaks off."""


async def stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def breaking_stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise ClientDisconnected


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def read_all(
    storage: BlobStorage, digest: Digest, start: int = 0, end: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in storage.read(digest, start, end)])


async def opened_bytes(storage: BlobStorage, digest: Digest, start: int, end: int) -> bytes:
    """What a client receives for `storage.open`, whichever kind of content it answers."""
    content = await storage.open(digest, start, end)
    if isinstance(content, LocalFile):
        with content.file:
            content.file.seek(content.offset)
            return content.file.read(content.length)
    if isinstance(content, Redirect):
        if end == start:
            return b""  # HTTP has no empty byte range; the server answers those itself.
        async with httpx.AsyncClient() as client:
            response = await client.get(content.url, headers={"Range": f"bytes={start}-{end - 1}"})
        assert response.status_code == 206, response.text
        return response.content
    try:
        return b"".join([chunk async for chunk in content.chunks])
    finally:
        await content.aclose()


async def stored_digests(storage: BlobStorage) -> list[Digest]:
    return [digest async for digest, _, _ in storage.iterate()]


async def upload_ids(storage: BlobStorage) -> set[str]:
    return {upload_id async for upload_id, _ in storage.iterate_uploads()}


def new_upload_id() -> str:
    """A session name as the registry makes them: upload id + repository key, 64 hex."""
    return session_name("jimo/app", uuid.uuid4().hex)


async def new_upload(storage: BlobStorage, *chunks: bytes) -> str:
    upload_id = new_upload_id()
    await storage.create_upload(upload_id)
    for chunk in chunks:
        await storage.append_upload(upload_id, stream(chunk), len(chunk))
    return upload_id


# -- whole blobs -----------------------------------------------------------------------------


async def test_write_blob_stores_verified_bytes_and_returns_their_size(
    storage: BlobStorage,
) -> None:
    digest = Digest.of(DATA)

    size = await storage.write_blob(stream(*split(DATA, 700)), digest, len(DATA))

    assert size == len(DATA)
    assert await storage.stat(digest) == len(DATA)
    assert await read_all(storage, digest) == DATA


async def test_write_blob_verifies_a_sha512_digest(storage: BlobStorage) -> None:
    digest = Digest.of(DATA, "sha512")

    assert await storage.write_blob(stream(DATA), digest, len(DATA)) == len(DATA)
    assert await read_all(storage, digest) == DATA
    assert await storage.stat(Digest.of(DATA)) is None


async def test_write_blob_without_expected_length_takes_any_length(storage: BlobStorage) -> None:
    digest = Digest.of(DATA)

    assert await storage.write_blob(stream(*split(DATA, 999)), digest, None) == len(DATA)
    assert await storage.stat(digest) == len(DATA)


async def test_write_blob_of_empty_content(storage: BlobStorage) -> None:
    digest = Digest.of(b"")

    assert await storage.write_blob(stream(), digest, 0) == 0
    assert await storage.stat(digest) == 0
    assert await read_all(storage, digest) == b""


async def test_write_blob_with_wrong_digest_raises_digest_invalid_and_stores_nothing(
    storage: BlobStorage,
) -> None:
    claimed = Digest.of(b"something else")

    with pytest.raises(DigestInvalid):
        await storage.write_blob(stream(DATA), claimed, len(DATA))

    assert await storage.stat(claimed) is None
    assert await storage.stat(Digest.of(DATA)) is None
    assert await stored_digests(storage) == []


async def test_write_blob_shorter_than_expected_raises_upload_aborted_and_stores_nothing(
    storage: BlobStorage,
) -> None:
    digest = Digest.of(DATA)

    with pytest.raises(UploadAborted):
        await storage.write_blob(stream(DATA), digest, len(DATA) + 1)

    assert await storage.stat(digest) is None
    assert await stored_digests(storage) == []


async def test_write_blob_longer_than_expected_raises_size_invalid_and_stores_nothing(
    storage: BlobStorage,
) -> None:
    digest = Digest.of(DATA)

    with pytest.raises(SizeInvalid):
        await storage.write_blob(stream(DATA), digest, len(DATA) - 1)

    assert await storage.stat(digest) is None
    assert await stored_digests(storage) == []


async def test_write_blob_whose_stream_breaks_stores_nothing(storage: BlobStorage) -> None:
    digest = Digest.of(DATA + DATA)

    with pytest.raises(ClientDisconnected):
        await storage.write_blob(breaking_stream(*split(DATA, 500)), digest, 2 * len(DATA))

    assert await storage.stat(digest) is None
    assert await stored_digests(storage) == []


async def test_temporary_files_of_writes_in_progress_are_never_purged(
    storage: BlobStorage,
) -> None:
    digest = Digest.of(DATA)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield DATA[:100]
        started.set()
        await release.wait()
        yield DATA[100:]

    writing = asyncio.create_task(storage.write_blob(slow(), digest, len(DATA)))
    await started.wait()
    # A purge with a cutoff before the write's last activity leaves it alone.
    assert await storage.delete_stale_temporary(time.time() - 3600) == 0
    release.set()
    assert await writing == len(DATA)
    # Afterwards nothing is left to purge, whatever the cutoff.
    assert await storage.delete_stale_temporary(time.time() + 3600) == 0


async def test_writing_the_same_blob_twice_keeps_one_copy(storage: BlobStorage) -> None:
    digest = Digest.of(DATA)

    await storage.write_blob(stream(DATA), digest, len(DATA))
    await storage.write_blob(stream(DATA), digest, len(DATA))

    assert await stored_digests(storage) == [digest]
    assert await read_all(storage, digest) == DATA


async def test_stat_of_unknown_blob_is_none(storage: BlobStorage) -> None:
    assert await storage.stat(Digest.of(b"never stored")) is None


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 1),
        (3, 7),
        (999, 1001),
        (1000, 3000),
        (2500, None),
        (0, len(DATA)),
        (len(DATA) - 1, len(DATA)),
        (4000, 100_000),
        (len(DATA), None),
    ],
)
async def test_read_returns_the_requested_byte_range(
    storage: BlobStorage, start: int, end: int | None
) -> None:
    digest = Digest.of(DATA)
    await storage.write_blob(stream(DATA), digest, len(DATA))

    assert await read_all(storage, digest, start, end) == DATA[start:end]


@pytest.mark.parametrize(
    ("start", "end"), [(0, len(DATA)), (0, 1), (999, 1001), (len(DATA) - 1, len(DATA)), (0, 0)]
)
async def test_open_answers_the_requested_byte_range(
    storage: BlobStorage, start: int, end: int
) -> None:
    digest = Digest.of(DATA)
    await storage.write_blob(stream(DATA), digest, len(DATA))

    assert await opened_bytes(storage, digest, start, end) == DATA[start:end]


async def test_open_of_unknown_blob_raises_blob_unknown(storage: BlobStorage) -> None:
    with pytest.raises(BlobUnknown):
        await storage.open(Digest.of(b"never stored"), 0, 1)


async def test_read_of_unknown_blob_raises_blob_unknown(storage: BlobStorage) -> None:
    with pytest.raises(BlobUnknown):
        await read_all(storage, Digest.of(b"never stored"))


async def test_blocking_stat_and_delete_act_like_their_async_forms(storage: BlobStorage) -> None:
    # Metadata transactions call these from a worker thread (storage/base.py).
    digest = Digest.of(DATA)
    await storage.write_blob(stream(DATA), digest, len(DATA))

    assert await asyncio.to_thread(storage.stat_blocking, digest) == len(DATA)
    await asyncio.to_thread(storage.delete_blocking, digest)
    assert await asyncio.to_thread(storage.stat_blocking, digest) is None
    assert await storage.stat(digest) is None
    await asyncio.to_thread(storage.delete_blocking, digest)  # a second delete is a no-op


async def test_delete_removes_the_blob(storage: BlobStorage) -> None:
    kept, deleted = Digest.of(b"kept"), Digest.of(DATA)
    await storage.write_blob(stream(b"kept"), kept, 4)
    await storage.write_blob(stream(DATA), deleted, len(DATA))

    await storage.delete(deleted)

    assert await storage.stat(deleted) is None
    assert await stored_digests(storage) == [kept]


async def test_delete_of_unknown_blob_is_a_no_op(storage: BlobStorage) -> None:
    await storage.delete(Digest.of(b"never stored"))

    assert await stored_digests(storage) == []


async def test_iterate_lists_every_blob_with_its_size_and_modification_time(
    storage: BlobStorage,
) -> None:
    before = time.time() - 5
    blobs = {
        Digest.of(DATA): DATA,
        Digest.of(b"abc", "sha512"): b"abc",
        Digest.of(b""): b"",
    }
    for digest, content in blobs.items():
        await storage.write_blob(stream(content), digest, len(content))

    listed = [item async for item in storage.iterate()]

    assert {digest: size for digest, size, _ in listed} == {
        digest: len(content) for digest, content in blobs.items()
    }
    assert len(listed) == len(blobs)
    assert all(before <= mtime <= time.time() + 5 for _, _, mtime in listed)


async def test_iterate_of_empty_storage_yields_nothing(storage: BlobStorage) -> None:
    assert await stored_digests(storage) == []


# -- upload sessions -------------------------------------------------------------------------


async def test_new_upload_is_empty_and_listed(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage)

    assert await storage.upload_size(upload_id) == 0
    assert await upload_ids(storage) == {upload_id}


async def test_upload_size_of_unknown_upload_is_none(storage: BlobStorage) -> None:
    assert await storage.upload_size(new_upload_id()) is None


async def test_appending_several_chunks_grows_the_upload(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage)
    sizes = []

    for chunk in split(DATA, 1500):
        sizes.append(await storage.append_upload(upload_id, stream(*split(chunk, 400)), None))

    assert sizes == [1500, 3000, 4500, 5000]
    assert await storage.upload_size(upload_id) == len(DATA)


async def test_append_at_another_offset_raises_upload_out_of_order_and_keeps_the_upload(
    storage: BlobStorage,
) -> None:
    upload_id = await new_upload(storage, DATA[:1000])

    for offset in (0, 999, 1001):
        with pytest.raises(UploadOutOfOrder):
            await storage.append_upload(upload_id, stream(DATA[1000:2000]), 1000, offset)

    assert await storage.upload_size(upload_id) == 1000
    assert await storage.append_upload(upload_id, stream(DATA[1000:]), None, 1000) == len(DATA)
    assert await storage.commit_upload(upload_id, Digest.of(DATA)) == len(DATA)


async def test_commit_verifies_the_upload_and_makes_it_the_blob(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage, *split(DATA, 1200))
    digest = Digest.of(DATA)

    size = await storage.commit_upload(upload_id, digest)

    assert size == len(DATA)
    assert await storage.stat(digest) == len(DATA)
    assert await read_all(storage, digest) == DATA
    assert await read_all(storage, digest, 1200, 2400) == DATA[1200:2400]


async def test_committed_upload_is_gone(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage, DATA)

    await storage.commit_upload(upload_id, Digest.of(DATA))

    assert await storage.upload_size(upload_id) is None
    assert await upload_ids(storage) == set()
    with pytest.raises(BlobUploadUnknown):
        await storage.append_upload(upload_id, stream(b"more"), 4)


async def test_commit_with_a_sha512_digest_verifies_with_sha512(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage, *split(DATA, 2000))
    digest = Digest.of(DATA, "sha512")

    assert await storage.commit_upload(upload_id, digest) == len(DATA)
    assert await read_all(storage, digest) == DATA


async def test_commit_of_an_empty_upload_stores_the_empty_blob(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage)

    assert await storage.commit_upload(upload_id, Digest.of(b"")) == 0
    assert await storage.stat(Digest.of(b"")) == 0


async def test_commit_with_wrong_digest_raises_digest_invalid_and_stores_nothing(
    storage: BlobStorage,
) -> None:
    upload_id = await new_upload(storage, DATA)
    claimed = Digest.of(DATA[:-1])

    with pytest.raises(DigestInvalid):
        await storage.commit_upload(upload_id, claimed)

    assert await storage.stat(claimed) is None
    assert await storage.stat(Digest.of(DATA)) is None
    assert await stored_digests(storage) == []


async def test_commit_with_a_digest_of_the_wrong_algorithm_is_refused(
    storage: BlobStorage,
) -> None:
    upload_id = await new_upload(storage, DATA)
    # The sha256 hex of the right bytes, labelled as sha512 (lengths differ, so build directly).
    mislabelled = Digest("sha512", Digest.of(DATA).hex)

    with pytest.raises(DigestInvalid):
        await storage.commit_upload(upload_id, mislabelled)

    assert await stored_digests(storage) == []


async def test_append_that_fails_midway_keeps_previous_size(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage, DATA[:1000])

    with pytest.raises(ClientDisconnected):
        await storage.append_upload(upload_id, breaking_stream(*split(b"x" * 3000, 600)), 4000)

    assert await storage.upload_size(upload_id) == 1000
    # The broken chunk left no bytes behind: resuming from 1000 yields exactly DATA.
    await storage.append_upload(upload_id, stream(DATA[1000:]), len(DATA) - 1000)
    assert await storage.commit_upload(upload_id, Digest.of(DATA)) == len(DATA)
    assert await read_all(storage, Digest.of(DATA)) == DATA


async def test_append_shorter_than_expected_raises_upload_aborted_and_keeps_previous_size(
    storage: BlobStorage,
) -> None:
    upload_id = await new_upload(storage, DATA[:1000])

    with pytest.raises(UploadAborted):
        await storage.append_upload(upload_id, stream(b"y" * 2500), 4000)

    assert await storage.upload_size(upload_id) == 1000
    await storage.append_upload(upload_id, stream(DATA[1000:]), None)
    assert await storage.commit_upload(upload_id, Digest.of(DATA)) == len(DATA)


async def test_append_longer_than_expected_raises_size_invalid_and_keeps_previous_size(
    storage: BlobStorage,
) -> None:
    upload_id = await new_upload(storage, DATA[:1000])

    with pytest.raises(SizeInvalid):
        await storage.append_upload(upload_id, stream(b"z" * 2500), 2000)

    assert await storage.upload_size(upload_id) == 1000
    await storage.append_upload(upload_id, stream(DATA[1000:]), None)
    assert await storage.commit_upload(upload_id, Digest.of(DATA)) == len(DATA)


async def test_first_append_that_fails_leaves_the_upload_empty(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage)

    with pytest.raises(ClientDisconnected):
        await storage.append_upload(upload_id, breaking_stream(DATA), None)

    assert await storage.upload_size(upload_id) == 0
    await storage.append_upload(upload_id, stream(b"abc"), 3)
    assert await storage.commit_upload(upload_id, Digest.of(b"abc")) == 3


# More than two of the S3 driver's 8 MiB multipart parts, in chunks that end off the part
# boundaries: what a chunked docker push of a large layer does.
LARGE = bytes(range(256)) * (17 * 4096) + b"tail!"
LARGE_CHUNKS = (5 * 1024 * 1024 + 3, 7 * 1024 * 1024, len(LARGE))


async def test_upload_spanning_several_multipart_parts_commits_the_whole_blob(
    storage: BlobStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem, "WRITE_BATCH", 1024 * 1024)  # not a thread hop per KiB
    upload_id = await new_upload(storage)
    start = 0
    for end in LARGE_CHUNKS:
        chunk = LARGE[start:end]
        size = await storage.append_upload(upload_id, stream(*split(chunk, 1024 * 1024)), None)
        assert size == end
        start = end
    digest = Digest.of(LARGE)

    with pytest.raises(DigestInvalid):
        await storage.commit_upload(upload_id, Digest.of(LARGE[:-1]))
    assert await storage.commit_upload(upload_id, digest) == len(LARGE)

    assert await storage.stat(digest) == len(LARGE)
    assert Digest.of(await read_all(storage, digest)) == digest
    boundary = 8 * 1024 * 1024  # across the first part boundary
    assert (
        await read_all(storage, digest, boundary - 10, boundary + 10)
        == (LARGE[boundary - 10 : boundary + 10])
    )


async def test_write_blob_larger_than_a_multipart_part(
    storage: BlobStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem, "WRITE_BATCH", 1024 * 1024)
    digest = Digest.of(LARGE)

    assert await storage.write_blob(stream(*split(LARGE, 1024 * 1024)), digest, len(LARGE)) == (
        len(LARGE)
    )

    assert await storage.stat(digest) == len(LARGE)
    assert Digest.of(await read_all(storage, digest)) == digest


async def test_interleaved_uploads_do_not_mix(storage: BlobStorage) -> None:
    first, second = await new_upload(storage), await new_upload(storage)
    other = DATA[::-1]

    for mine, theirs in zip(split(DATA, 1000), split(other, 1000), strict=True):
        await storage.append_upload(first, stream(mine), len(mine))
        await storage.append_upload(second, stream(theirs), len(theirs))

    await storage.commit_upload(second, Digest.of(other))
    await storage.commit_upload(first, Digest.of(DATA))
    assert await read_all(storage, Digest.of(DATA)) == DATA
    assert await read_all(storage, Digest.of(other)) == other


async def test_delete_upload_forgets_it(storage: BlobStorage) -> None:
    upload_id = await new_upload(storage, DATA)

    await storage.delete_upload(upload_id)

    assert await storage.upload_size(upload_id) is None
    assert await upload_ids(storage) == set()
    with pytest.raises(BlobUploadUnknown):
        await storage.commit_upload(upload_id, Digest.of(DATA))
    assert await stored_digests(storage) == []


async def test_delete_of_unknown_upload_is_a_no_op(storage: BlobStorage) -> None:
    kept = await new_upload(storage, b"kept")

    await storage.delete_upload(new_upload_id())

    assert await upload_ids(storage) == {kept}
    assert await storage.upload_size(kept) == 4


async def test_iterate_uploads_lists_open_sessions_with_modification_time(
    storage: BlobStorage,
) -> None:
    before = time.time() - 5
    committed = await new_upload(storage, b"abc")
    open_ids = {await new_upload(storage), await new_upload(storage, DATA)}
    await storage.commit_upload(committed, Digest.of(b"abc"))

    listed = [item async for item in storage.iterate_uploads()]

    assert {upload_id for upload_id, _ in listed} == open_ids
    assert all(before <= mtime <= time.time() + 5 for _, mtime in listed)


async def test_append_to_unknown_upload_raises_blob_upload_unknown(storage: BlobStorage) -> None:
    with pytest.raises(BlobUploadUnknown):
        await storage.append_upload(new_upload_id(), stream(b"abc"), 3)


async def test_commit_of_unknown_upload_raises_blob_upload_unknown(storage: BlobStorage) -> None:
    with pytest.raises(BlobUploadUnknown):
        await storage.commit_upload(new_upload_id(), Digest.of(b""))

    assert await stored_digests(storage) == []


# -- filesystem only -------------------------------------------------------------------------


def files_under(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())


MALICIOUS_UPLOAD_IDS = [
    "../../etc/passwd",
    "../blobs/sha256/x",
    "/etc/passwd",
    "0" * 64 + "/../../escape",
    "..",
    "",
    "0" * 31,
    "0" * 63,
    "A" * 64,
    "0" * 64 + "\n",
]


@pytest.mark.parametrize("upload_id", MALICIOUS_UPLOAD_IDS)
async def test_malicious_upload_id_is_refused_by_every_operation(
    filesystem_storage: FilesystemStorage, data_root: Path, upload_id: str
) -> None:
    (data_root.parent / "outside").write_bytes(b"precious")
    storage = filesystem_storage

    with pytest.raises(BlobUploadUnknown):
        await storage.create_upload(upload_id)
    with pytest.raises(BlobUploadUnknown):
        await storage.upload_size(upload_id)
    with pytest.raises(BlobUploadUnknown):
        await storage.append_upload(upload_id, stream(b"abc"), 3)
    with pytest.raises(BlobUploadUnknown):
        await storage.commit_upload(upload_id, Digest.of(b"abc"))
    with pytest.raises(BlobUploadUnknown):
        await storage.delete_upload(upload_id)

    assert sorted(path.name for path in data_root.parent.iterdir()) == ["data", "outside"]
    assert (data_root.parent / "outside").read_bytes() == b"precious"
    assert files_under(data_root) == []


async def test_upload_is_not_visible_under_blobs_until_commit(
    filesystem_storage: FilesystemStorage, data_root: Path
) -> None:
    digest = Digest.of(DATA)
    upload_id = await new_upload(filesystem_storage, *split(DATA, 1700))

    assert files_under(data_root / "blobs") == []
    assert await filesystem_storage.stat(digest) is None

    await filesystem_storage.commit_upload(upload_id, digest)

    assert files_under(data_root / "blobs") == [filesystem_storage.blob_path(digest)]
    assert filesystem_storage.blob_path(digest).read_bytes() == DATA
    assert files_under(data_root / "uploads") == []


async def test_blob_is_not_visible_under_blobs_while_it_streams_in(
    filesystem_storage: FilesystemStorage, data_root: Path
) -> None:
    digest = Digest.of(DATA)
    seen_mid_stream: list[list[Path]] = []

    async def watching_stream() -> AsyncIterator[bytes]:
        for chunk in split(DATA, 1100):
            yield chunk
            seen_mid_stream.append(files_under(data_root / "blobs"))

    await filesystem_storage.write_blob(watching_stream(), digest, len(DATA))

    assert seen_mid_stream == [[]] * len(split(DATA, 1100))
    assert files_under(data_root / "blobs") == [filesystem_storage.blob_path(digest)]


def contents_sharing_a_fan_out_directory(count: int) -> list[bytes]:
    """Distinct contents whose sha256 digests begin with the same two hex digits."""
    found: list[bytes] = []
    for index in range(100_000):
        content = f"blob {index}".encode()
        if Digest.of(content).hex[:2] == "00":
            found.append(content)
            if len(found) == count:
                return found
    raise AssertionError("not enough contents found")


async def test_blobs_of_one_fan_out_directory_make_it_once(
    filesystem_storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mkdir that finds the directory cost more system time than the rename, per blob
    # (docs/performance.md, "Image pushers after the page cache has grown").
    made: list[str] = []
    real_mkdir = os.mkdir

    def counting_mkdir(path: str | os.PathLike[str], *args: int) -> None:
        made.append(os.fspath(path))
        real_mkdir(path, *args)

    monkeypatch.setattr(os, "mkdir", counting_mkdir)
    first, second, third = contents_sharing_a_fan_out_directory(3)
    fan_out = filesystem_storage.blob_path(Digest.of(first)).parent

    await filesystem_storage.write_blob(stream(first), Digest.of(first), len(first))
    assert made[-1] == os.fspath(fan_out)  # With its parents, the first time.
    made.clear()
    await filesystem_storage.write_blob(stream(second), Digest.of(second), len(second))
    upload_id = await new_upload(filesystem_storage, third)
    await filesystem_storage.commit_upload(upload_id, Digest.of(third))

    assert made == []
    for content in (first, second, third):
        assert filesystem_storage.blob_path(Digest.of(content)).read_bytes() == content


async def test_a_fan_out_directory_removed_meanwhile_is_made_again(
    filesystem_storage: FilesystemStorage, data_root: Path
) -> None:
    first, second = contents_sharing_a_fan_out_directory(2)
    await filesystem_storage.write_blob(stream(first), Digest.of(first), len(first))
    fan_out = filesystem_storage.blob_path(Digest.of(first)).parent
    filesystem_storage.blob_path(Digest.of(first)).unlink()
    fan_out.rmdir()  # E.g. an operator's cleanup.
    upload_id = await new_upload(filesystem_storage, second)

    await filesystem_storage.commit_upload(upload_id, Digest.of(second))

    assert filesystem_storage.blob_path(Digest.of(second)).read_bytes() == second
    assert files_under(data_root / "uploads") == []


async def test_a_blobs_directory_removed_whole_is_made_again(
    filesystem_storage: FilesystemStorage, data_root: Path
) -> None:
    # As the eager mkdir(parents=True) did: an operator's `rm -rf data/blobs` loses the
    # stored blobs, not the ability to store new ones.
    content = b"after the cleanup"
    shutil.rmtree(data_root / "blobs")

    await filesystem_storage.write_blob(stream(content), Digest.of(content), len(content))

    assert filesystem_storage.blob_path(Digest.of(content)).read_bytes() == content


@pytest.mark.parametrize("commit", ["write_blob", "commit_upload"])
async def test_with_fsync_every_directory_made_for_a_blob_has_its_entry_flushed(
    data_root: Path, monkeypatch: pytest.MonkeyPatch, commit: str
) -> None:
    # A crash must not lose a blob the database records: the blob's entry in its fan-out
    # directory, and the entries of the directories made for it (review, session 8).
    storage = FilesystemStorage(data_root, fsync=True)
    flushed: list[Path] = []
    monkeypatch.setattr(filesystem, "_fsync_directory", flushed.append)
    first, second = contents_sharing_a_fan_out_directory(2)
    fan_out = storage.blob_path(Digest.of(first)).parent

    async def publish(content: bytes) -> None:
        if commit == "write_blob":
            await storage.write_blob(stream(content), Digest.of(content), len(content))
        else:
            upload_id = await new_upload(storage, content)
            await storage.commit_upload(upload_id, Digest.of(content))

    await publish(first)  # blobs/sha256 and blobs/sha256/00 are made for it.
    assert flushed == [fan_out, fan_out.parent, fan_out.parent.parent]
    flushed.clear()
    await publish(second)  # Its directory exists: only the blob's own entry.
    assert flushed == [fan_out]
    assert storage.blob_path(Digest.of(second)).read_bytes() == second


async def test_open_answers_an_open_file_that_outlives_a_delete(
    filesystem_storage: FilesystemStorage,
) -> None:
    digest = Digest.of(DATA)
    await filesystem_storage.write_blob(stream(DATA), digest, len(DATA))

    content = await filesystem_storage.open(digest, 100, 300)
    await filesystem_storage.delete(digest)  # Garbage collection, mid-response.

    assert isinstance(content, LocalFile)
    with content.file:
        content.file.seek(content.offset)
        assert content.file.read(content.length) == DATA[100:300]


@pytest.mark.parametrize(
    ("body", "claimed", "expected_length", "error"),
    [
        (stream, Digest.of(b"other"), len(DATA), DigestInvalid),
        (stream, Digest.of(DATA), len(DATA) + 10, UploadAborted),
        (stream, Digest.of(DATA), len(DATA) - 10, SizeInvalid),
        (breaking_stream, Digest.of(DATA), None, ClientDisconnected),
    ],
    ids=["wrong-digest", "short", "long", "broken-stream"],
)
async def test_failed_write_blob_leaves_no_temporary_or_blob_file(
    filesystem_storage: FilesystemStorage,
    data_root: Path,
    body: Callable[..., AsyncIterator[bytes]],
    claimed: Digest,
    expected_length: int | None,
    error: type[Exception],
) -> None:
    chunks = body(*split(DATA, 700))

    with pytest.raises(error):
        await filesystem_storage.write_blob(chunks, claimed, expected_length)

    assert files_under(data_root) == []


async def test_failed_append_truncates_the_upload_file_to_its_previous_length(
    filesystem_storage: FilesystemStorage, data_root: Path
) -> None:
    upload_id = await new_upload(filesystem_storage, DATA[:1000])

    with pytest.raises(ClientDisconnected):
        await filesystem_storage.append_upload(
            upload_id, breaking_stream(*split(b"x" * 3000, 700)), None
        )

    assert files_under(data_root) == [data_root / "uploads" / upload_id]
    assert (data_root / "uploads" / upload_id).read_bytes() == DATA[:1000]


async def test_commit_after_restart_verifies_by_rehashing(
    data_root: Path, small_batches: None
) -> None:
    before_restart = FilesystemStorage(data_root)
    upload_id = await new_upload(before_restart, *split(DATA, 1300))

    after_restart = FilesystemStorage(data_root)

    with pytest.raises(DigestInvalid):
        await after_restart.commit_upload(upload_id, Digest.of(DATA[:-1]))
    assert await after_restart.commit_upload(upload_id, Digest.of(DATA)) == len(DATA)
    assert await read_all(after_restart, Digest.of(DATA)) == DATA


async def test_upload_continued_after_restart_commits_with_the_right_digest(
    data_root: Path, small_batches: None
) -> None:
    before_restart = FilesystemStorage(data_root)
    upload_id = await new_upload(before_restart, DATA[:2000])

    after_restart = FilesystemStorage(data_root)
    await after_restart.append_upload(upload_id, stream(DATA[2000:]), len(DATA) - 2000)

    with pytest.raises(DigestInvalid):
        await after_restart.commit_upload(upload_id, Digest.of(DATA[2000:]))
    assert await after_restart.commit_upload(upload_id, Digest.of(DATA)) == len(DATA)


async def test_replica_with_a_stale_running_hash_rehashes_at_commit(
    data_root: Path, small_batches: None
) -> None:
    # Two processes on one data directory: the first's running hash covers only its own bytes.
    first = FilesystemStorage(data_root)
    second = FilesystemStorage(data_root)
    upload_id = await new_upload(first, DATA[:2000])
    await second.append_upload(upload_id, stream(DATA[2000:]), None)

    with pytest.raises(DigestInvalid):
        await first.commit_upload(upload_id, Digest.of(DATA[:2000]))
    assert await first.commit_upload(upload_id, Digest.of(DATA)) == len(DATA)
    assert await read_all(first, Digest.of(DATA)) == DATA


async def wait_briefly(event: asyncio.Event, task: asyncio.Task[int], seconds: float) -> None:
    """Until `event` is set or `task` ends, for at most `seconds`."""
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.wait({waiter, task}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter


async def test_concurrent_appends_cannot_commit_bytes_that_do_not_match_the_digest(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two PATCH requests racing on one upload. A driver may interleave them, serialise them or
    # refuse one; whatever it does, a commit must never publish bytes under another digest.
    # Batches above the file buffer size, so each batch reaches the file when it is flushed.
    batch = 64 * 1024
    monkeypatch.setattr(filesystem, "WRITE_BATCH", batch)
    storage = FilesystemStorage(data_root)
    upload_id = await new_upload(storage)
    first_paused, first_wrote_more, second_opened = (asyncio.Event() for _ in range(3))
    resume_first, resume_second, finish_first = (asyncio.Event() for _ in range(3))

    async def until_size(size: int) -> None:
        # The driver may write a batch in a worker thread after taking the next chunk.
        while await storage.upload_size(upload_id) != size:
            await asyncio.sleep(0.001)

    async def first_body() -> AsyncIterator[bytes]:
        yield b"A" * batch
        await until_size(batch)
        first_paused.set()
        await resume_first.wait()
        yield b"A" * batch
        await until_size(2 * batch)  # batch two is at [batch, 2 * batch)
        first_wrote_more.set()
        await finish_first.wait()

    async def second_body() -> AsyncIterator[bytes]:
        second_opened.set()  # opened when the file held one batch, so it writes at `batch`
        await resume_second.wait()
        yield b"B" * batch

    async with asyncio.timeout(20):
        first = asyncio.create_task(storage.append_upload(upload_id, first_body(), None))
        await first_paused.wait()
        second = asyncio.create_task(storage.append_upload(upload_id, second_body(), None))
        await wait_briefly(second_opened, second, 1.0)
        resume_first.set()
        await first_wrote_more.wait()
        resume_second.set()
        await asyncio.wait({second}, timeout=1.0)  # an interleaving driver overwrites here
        finish_first.set()
        outcomes = await asyncio.gather(first, second, return_exceptions=True)

    assert all(isinstance(outcome, int | RegistryError) for outcome in outcomes), outcomes
    on_disk = (data_root / "uploads" / upload_id).read_bytes()
    claimed = Digest.of(b"A" * 2 * batch)
    try:
        await storage.commit_upload(upload_id, claimed)
    except DigestInvalid:
        assert await storage.stat(claimed) is None
    else:
        # Whatever was committed under a digest must hash to that digest.
        assert Digest.of(await read_all(storage, claimed)) == claimed, (
            f"stored {on_disk[:1]!r}…{on_disk[-1:]!r} under the digest of 'A' * {2 * batch}"
        )


async def test_requests_for_unknown_sessions_leave_no_state_behind(
    filesystem_storage: FilesystemStorage,
) -> None:
    storage = filesystem_storage
    for _ in range(50):
        with pytest.raises(BlobUploadUnknown):
            await storage.append_upload(new_upload_id(), stream(b"abc"), 3)
        with pytest.raises(BlobUploadUnknown):
            await storage.commit_upload(new_upload_id(), Digest.of(b""))
    finished = await new_upload(storage, DATA)
    await storage.commit_upload(finished, Digest.of(DATA))
    assert storage._upload_locks == {} and storage._upload_hashers == {}


async def test_sessions_from_before_their_repository_key_are_listed_for_expiry(
    filesystem_storage: FilesystemStorage, data_root: Path
) -> None:
    legacy = "e" * 32  # an upload id as a file name, before migration 0005
    (data_root / "uploads" / legacy).write_bytes(b"partial layer")
    assert await upload_ids(filesystem_storage) == {legacy}
    await filesystem_storage.delete_upload(legacy)
    assert await upload_ids(filesystem_storage) == set()


async def test_check_writable_passes_and_leaves_nothing_behind(storage: BlobStorage) -> None:
    await storage.check_writable()
    await storage.check_writable()
    assert await stored_digests(storage) == []
    assert [upload async for upload in storage.iterate_uploads()] == []


async def test_filesystem_check_writable_fails_where_blobs_cannot_be_written(
    data_root: Path,
) -> None:
    storage = FilesystemStorage(data_root)
    assert list(storage.tmp_dir.iterdir()) == []
    await storage.check_writable()
    assert list(storage.tmp_dir.iterdir()) == []
    storage.tmp_dir.rmdir()
    storage.tmp_dir.write_bytes(b"")  # even root cannot create a file under a file
    with pytest.raises(OSError):
        await storage.check_writable()
