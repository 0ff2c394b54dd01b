"""Upload sessions' rows written in batches (registry/upload_limits.py, SessionLedger): a
session that ends quickly never costs a write; the cap on open sessions still holds, in one
process exactly and across processes once rows are written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cangku.content.digest import Digest
from cangku.content.errors import TooManyRequests
from cangku.metadata.store import MetadataStore
from cangku.metadata.upload_sessions import count_owned
from cangku.registry import Registry
from cangku.registry.context import RequestContext
from cangku.storage.memory import MemoryStorage
from tests.databases import fresh_database

CLIENT = RequestContext(address="192.0.2.9")
OWNER = "address:192.0.2.9"
DELAY = 0.05


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def rows_of(registry: Registry, owner: str = OWNER) -> int:
    return await registry.metadata.read(lambda connection: count_owned(connection, owner))


@pytest.fixture
async def two_processes(tmp_path: Path) -> AsyncIterator[tuple[Registry, Registry]]:
    """Two registries over one database and one storage, as two replicas (their own ledgers)."""
    with fresh_database(tmp_path) as url:
        first, second = MetadataStore.open(url), MetadataStore.open(url)
        storage = MemoryStorage()
        try:
            registries = Registry(storage, first), Registry(storage, second)
            for registry in registries:
                registry.core.sessions.delay = DELAY
            yield registries
        finally:
            await first.close()
            await second.close()


async def test_a_session_s_row_is_written_shortly_after_it_starts(
    two_processes: tuple[Registry, Registry],
) -> None:
    registry, _ = two_processes
    await registry.repository("jimo/app").uploads.start(CLIENT)
    assert await rows_of(registry) == 0  # Not on the start's path.
    await asyncio.sleep(DELAY * 4)
    assert await rows_of(registry) == 1


async def test_a_session_finished_before_its_row_is_due_never_gets_one(
    two_processes: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = two_processes
    registry.core.sessions.delay = 10.0
    writes = 0
    write = registry.metadata.write

    async def counting(work):
        nonlocal writes
        writes += 1
        return await write(work)

    monkeypatch.setattr(registry.metadata, "write", counting)
    uploads = registry.repository("jimo/app").uploads
    data = b"a small layer"
    upload_id = await uploads.start(CLIENT)
    await uploads.finish(upload_id, str(Digest.of(data)), chunks(data), len(data), None, CLIENT)
    cancelled = await uploads.start(CLIENT)
    await uploads.cancel(cancelled, CLIENT)
    await registry.core.sessions.record()
    assert writes == 1  # The blob's record; no session row written or deleted.
    assert await rows_of(registry) == 0


async def test_the_cap_holds_across_processes_once_rows_are_written(
    two_processes: tuple[Registry, Registry],
) -> None:
    first, second = two_processes
    for registry in two_processes:
        registry.max_open_uploads = 2
    await first.repository("jimo/app").uploads.start(CLIENT)
    await first.repository("jimo/app").uploads.start(CLIENT)
    with pytest.raises(TooManyRequests):  # Exact within the process, rows or not.
        await first.repository("jimo/app").uploads.start(CLIENT)
    await asyncio.sleep(DELAY * 4)
    with pytest.raises(TooManyRequests):
        await second.repository("jimo/app").uploads.start(CLIENT)
    assert await rows_of(second) == 2


async def test_a_session_ending_while_its_row_is_written_leaves_no_row(
    two_processes: tuple[Registry, Registry],
) -> None:
    registry, _ = two_processes
    registry.core.sessions.delay = 10.0
    uploads = registry.repository("jimo/app").uploads
    upload_id = await uploads.start(CLIENT)
    recording = asyncio.ensure_future(registry.core.sessions.record())
    await asyncio.sleep(0)  # The rows are on their way to the writer.
    await uploads.cancel(upload_id, CLIENT)
    await recording
    assert await rows_of(registry) == 0


async def test_a_deleted_repository_s_sessions_get_no_rows_afterwards(
    two_processes: tuple[Registry, Registry],
) -> None:
    registry, _ = two_processes
    data = b"a layer"  # The repository exists once something was pushed to it.
    await registry.repository("jimo/app").blobs.upload(
        str(Digest.of(data)), chunks(data), len(data), CLIENT
    )
    await registry.repository("jimo/app").uploads.start(CLIENT)
    await registry.repository("jimo/other").uploads.start(CLIENT)
    await registry.delete_repository("jimo/app")
    await asyncio.sleep(DELAY * 4)
    assert await rows_of(registry) == 1  # jimo/other's only.
