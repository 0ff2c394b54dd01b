"""The filesystem driver's writer (`_write_hashed`): what reaches the file, in what pieces."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator

from cangku.storage import filesystem


class RecordingFile(io.BytesIO):
    """A file that remembers the size of every write() call."""

    def __init__(self) -> None:
        super().__init__()
        self.write_sizes: list[int] = []

    def write(self, data: object) -> int:
        written = super().write(data)  # type: ignore[arg-type]
        self.write_sizes.append(written)
        return written


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


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
