"""The data directory holds keys, the database and every blob: only the server's user reads it."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cangku.app import build_registry
from cangku.config import Settings
from cangku.content.digest import Digest
from cangku.registry.context import IN_PROCESS


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """The usual login umask (022), restored afterwards whatever the code under test set."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


async def test_database_and_blob_files_are_readable_only_by_the_owner(
    tmp_path: Path, lax_umask: None
) -> None:
    settings = Settings(data=tmp_path / "data")
    registry = build_registry(settings)
    data = b"a private layer"

    async def body() -> AsyncIterator[bytes]:
        yield data

    digest = Digest.of(data)
    try:
        await registry.repository("jimo/app").blobs.upload(
            str(digest), body(), len(data), IN_PROCESS
        )
    finally:
        await registry.metadata.close()
    created = [
        settings.data,
        settings.data / "cangku.db",
        settings.data / "blobs",
        settings.data / "blobs" / "sha256" / digest.hex[:2] / digest.hex,
    ]
    for path in created:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {mode:o}"
