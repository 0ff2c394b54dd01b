"""Unit tests of the registry's use cases: MemoryStorage for bytes, SQLite (or, with
CANGKU_TEST_POSTGRES, PostgreSQL) for rows; no HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.storage.memory import MemoryStorage
from tests.databases import fresh_database


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    with fresh_database(tmp_path) as url:
        metadata = MetadataStore.open(url)
        try:
            yield Registry(MemoryStorage(), metadata)
        finally:
            await metadata.close()
