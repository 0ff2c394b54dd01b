"""The metadata tests' store: a fresh database (SQLite, or PostgreSQL per tests/databases.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cangku.metadata import MetadataStore
from tests.databases import fresh_database


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MetadataStore]:
    with fresh_database(tmp_path) as url:
        opened = MetadataStore.open(url)
        try:
            yield opened
        finally:
            await opened.close()
