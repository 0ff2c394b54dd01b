"""The filesystem driver's writer (`_write_hashed`): what reaches the file, in what pieces."""

from __future__ import annotations

import hashlib
import io
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
