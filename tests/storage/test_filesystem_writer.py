"""The filesystem driver's writer (`_write_hashed`): what reaches the file, in what pieces."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import AsyncIterator, Callable
from typing import cast

import anyio.to_thread
import pytest

from cangku.asgi import ReceivedBody
from cangku.storage import filesystem


class RecordingFile(io.BytesIO):
    """A file that remembers the size of every write() call."""

    def __init__(self) -> None:
        super().__init__()
        self.write_sizes: list[int] = []
        self.sources: list[object] = []

    def write(self, data: object) -> int:
        written = super().write(data)  # type: ignore[arg-type]
        self.write_sizes.append(written)
        self.sources.append(data.obj if isinstance(data, memoryview) else data)
        return written


async def chunks(*parts: bytes | bytearray) -> AsyncIterator[bytes]:
    for part in parts:
        yield cast(bytes, part)  # As the server's ReceivedBody batches reach the writer.


async def test_writes_reach_the_file_in_pieces_no_larger_than_file_write() -> None:
    # 1 MiB writes into a large file made the kernel's page-cache copy five times dearer
    # (docs/performance.md, "Push CPU"): batches are hashed whole but written in slices.
    data = bytes(range(256)) * (4096 * 3) + b"end"  # 3 MiB and a bit, crossing batches
    parts = [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
    file = RecordingFile()
    hasher = hashlib.sha256()

    written = await filesystem._write_hashed(chunks(*parts), file, hasher)

    assert written == len(data)
    assert file.getvalue() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert max(file.write_sizes) == filesystem.FILE_WRITE


async def test_no_write_is_larger_than_a_folio_the_per_cpu_page_lists_serve() -> None:
    # The page cache allocates a folio as large as the write; above 32 KiB (order 3) it
    # splits free high-order blocks, which on a VM with free page reporting cost 2-3 ms of
    # system time per MB to touch first (docs/performance.md, "Cold memory"). Odd-sized
    # chunks in between must not make a write larger either.
    parts = [b"x" * (1024 * 1024), b"y" * 100_000, b"z" * 3, b"w" * (5 * 1024 * 1024 + 7)]
    data = b"".join(parts)
    file = RecordingFile()
    hasher = hashlib.sha256()

    written = await filesystem._write_hashed(chunks(*parts), file, hasher)

    assert written == len(data)
    assert file.getvalue() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert max(file.write_sizes) <= 32 * 1024


async def test_the_servers_batches_are_hashed_and_written_without_a_copy() -> None:
    # server.py reads a large body straight into ReceivedBody batches and reuses one only
    # once nobody holds it: the writer may keep it as it is, like bytes (a plain bytearray
    # it must copy).
    first = ReceivedBody(b"a" * filesystem.WRITE_BATCH)
    second = ReceivedBody(b"b" * filesystem.WRITE_BATCH)
    file = RecordingFile()
    hasher = hashlib.sha256()

    await filesystem._write_hashed(chunks(first, second), file, hasher)

    assert file.getvalue() == first + second
    assert hasher.hexdigest() == hashlib.sha256(first + second).hexdigest()
    assert {id(source) for source in file.sources} == {id(first), id(second)}


async def test_one_thread_hop_per_write_batch_not_per_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A thread hop costs ~55 us of CPU: the server's 1 MiB batches go four to a hop.
    hops: list[int] = []
    run_sync = anyio.to_thread.run_sync

    async def counting_run_sync(function: Callable[..., object], *args: object) -> object:
        batch = args[0]
        if isinstance(batch, bytes | bytearray):  # One buffer per hop (the writer before).
            hops.append(len(batch))
        else:
            hops.append(sum(len(piece) for piece in cast(list[bytes], batch)))
        return await run_sync(function, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting_run_sync)
    batches = [ReceivedBody(bytes([index]) * 1024 * 1024) for index in range(9)]
    file = RecordingFile()
    hasher = hashlib.sha256()

    written = await filesystem._write_hashed(chunks(*batches, b"tail"), file, hasher)

    data = b"".join(batches) + b"tail"
    assert written == len(data)
    assert file.getvalue() == data
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()
    assert hops == [4 * 1024 * 1024, 4 * 1024 * 1024, 1024 * 1024 + 4]
    # Gathered without a copy: every write of the nine batches reads one of them.
    assert {id(source) for source in file.sources[:-1]} == {id(batch) for batch in batches}


class BlockingFile(io.BytesIO):
    """A file whose write() (in the writer's thread) blocks until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writing = threading.Event()
        self.in_flight = 0

    def write(self, data: object) -> int:
        self.in_flight += 1
        self.writing.set()
        self.release.wait(BOUND)
        written = super().write(data)  # type: ignore[arg-type]
        self.in_flight -= 1
        return written


BOUND = 10.0


async def stalled_after(*parts: bytes) -> AsyncIterator[bytes]:
    """The parts, then a body that never goes on (the client stalls)."""
    for part in parts:
        yield part
    await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("body", "cancellations"),
    [
        # Cancelled twice while waiting for the body, a batch being written: the second
        # cancellation used to cut short the shielded wait for the write.
        (lambda: stalled_after(bytes(filesystem.WRITE_BATCH)), 2),
        # Cancelled while waiting for the batch before to be written.
        (lambda: chunks(bytes(filesystem.WRITE_BATCH), bytes(filesystem.WRITE_BATCH)), 1),
        # Cancelled while the last, partial batch is written.
        (lambda: chunks(b"tail"), 1),
    ],
    ids=["waiting-for-the-body-cancelled-twice", "waiting-for-a-write", "the-last-write"],
)
async def test_a_cancelled_writer_returns_only_once_its_thread_stopped_writing(
    body: Callable[[], AsyncIterator[bytes]], cancellations: int
) -> None:
    # The caller truncates the file on failure (FilesystemStorage.append_upload): a write
    # still running in the thread would land after (or amid) the truncate.
    file = BlockingFile()
    task = asyncio.create_task(filesystem._write_hashed(body(), file, hashlib.sha256()))
    assert await asyncio.to_thread(file.writing.wait, BOUND)
    for _ in range(cancellations):
        task.cancel()
        await asyncio.sleep(0.05)
    returned_while_writing = task.done()
    file.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not returned_while_writing
    assert file.in_flight == 0
