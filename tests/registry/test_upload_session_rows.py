"""Upload sessions' rows written in batches (registry/upload_limits.py, SessionLedger): a
session that ends quickly never costs a write; the cap on open sessions still holds, in one
process exactly and across processes once rows are written."""

from __future__ import annotations

import asyncio
from asyncio import Event
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path

import pytest

from cangku.content.digest import Digest
from cangku.content.errors import Denied, TooManyRequests
from cangku.metadata import locks
from cangku.metadata import upload_sessions as session_rows
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


def yielding_reads(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads that let other tasks run first (as PostgreSQL's, in a thread, do)."""
    read = registry.metadata.read

    async def yielding(work):
        await asyncio.sleep(0)
        return await read(work)

    monkeypatch.setattr(registry.metadata, "read", yielding)


def gated_writes(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> tuple[Event, Event]:
    """The first write waits for the second event, once it has set the first."""
    reached, gate = Event(), Event()
    write = registry.metadata.write

    async def gated(work):
        if not reached.is_set():
            reached.set()
            await gate.wait()
        return await write(work)

    monkeypatch.setattr(registry.metadata, "write", gated)
    return reached, gate


async def outcomes(starts: Sequence[Awaitable[str]]) -> tuple[int, int]:
    """How many of the starts opened a session, and how many were refused for the cap."""
    results = await asyncio.gather(*starts, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, TooManyRequests):
            raise result
    refused = sum(isinstance(result, TooManyRequests) for result in results)
    return len(results) - refused, refused


async def test_concurrent_starts_of_one_owner_open_no_more_than_the_cap(
    two_processes: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = two_processes
    registry.max_open_uploads = 3
    registry.core.sessions.delay = 10.0
    yielding_reads(registry, monkeypatch)
    uploads = registry.repository("jimo/app").uploads
    assert await outcomes([uploads.start(CLIENT) for _ in range(10)]) == (3, 7)
    await registry.core.sessions.record()
    assert await rows_of(registry) == 3


async def test_starts_while_the_rows_are_written_count_them(
    two_processes: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = two_processes
    registry.max_open_uploads = 2
    registry.core.sessions.delay = 10.0
    uploads = registry.repository("jimo/app").uploads
    assert await outcomes([uploads.start(CLIENT) for _ in range(2)]) == (2, 0)
    reached, gate = gated_writes(registry, monkeypatch)
    recording = asyncio.ensure_future(registry.core.sessions.record())
    await reached.wait()  # The rows are being written, not committed.
    starts = [asyncio.ensure_future(uploads.start(CLIENT)) for _ in range(3)]
    await asyncio.wait(starts, timeout=0.2)
    gate.set()
    await recording
    assert await outcomes(starts) == (0, 3)
    assert await rows_of(registry) == 2


async def test_sessions_being_written_count_toward_the_quota(
    two_processes: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = two_processes
    registry.core.sessions.delay = 10.0
    await registry.repository("jimo/app").uploads.start(CLIENT)
    reached, gate = gated_writes(registry, monkeypatch)
    recording = asyncio.ensure_future(registry.core.sessions.record())
    await reached.wait()
    try:
        # Its row is not visible to a quota's count yet: the ledger still names it.
        assert len(registry.core.sessions.unrecorded_in("jimo")) == 1
    finally:
        gate.set()
        await recording
    assert registry.core.sessions.unrecorded_in("jimo") == []


async def test_a_session_ending_while_a_start_at_the_cap_writes_its_row_leaves_no_row(
    two_processes: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = two_processes
    registry.max_open_uploads = 1
    registry.core.sessions.delay = 10.0
    uploads = registry.repository("jimo/app").uploads
    data = b"a small layer"
    first = await uploads.start(CLIENT)
    reached, gate = gated_writes(registry, monkeypatch)
    # At the cap: takes the first session's row to write it in its own transaction.
    second = asyncio.ensure_future(uploads.start(CLIENT))
    await reached.wait()
    finishing = asyncio.ensure_future(
        uploads.finish(first, str(Digest.of(data)), chunks(data), len(data), None, CLIENT)
    )
    await asyncio.wait([finishing], timeout=0.2)
    gate.set()
    assert await outcomes([second]) == (0, 1)  # Decided while the first was open.
    await finishing
    await registry.core.sessions.record()
    assert await rows_of(registry) == 0  # The first's row went with it.


async def test_a_start_at_the_cap_takes_its_lock_before_writing_rows(
    two_processes: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = two_processes
    registry.max_open_uploads = 1
    registry.core.sessions.delay = 10.0
    calls: list[str] = []
    hold, insert = locks.hold, session_rows.insert_sessions

    def holding(connection, **kinds):
        calls.append("lock")
        return hold(connection, **kinds)

    def inserting(connection, values):
        calls.append("insert")
        return insert(connection, values)

    monkeypatch.setattr(locks, "hold", holding)
    monkeypatch.setattr(session_rows, "insert_sessions", inserting)
    uploads = registry.repository("jimo/app").uploads
    await uploads.start(CLIENT)
    assert await outcomes([uploads.start(CLIENT)]) == (0, 1)
    assert calls[:2] == ["lock", "insert"]


async def test_a_repository_deleted_while_a_start_at_the_cap_writes_its_rows_keeps_none(
    two_processes: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = two_processes
    registry.max_open_uploads = 1
    registry.core.sessions.delay = 10.0
    data = b"a layer"  # The repository exists once something was pushed to it.
    await registry.repository("jimo/app").blobs.upload(
        str(Digest.of(data)), chunks(data), len(data), CLIENT
    )
    await registry.repository("jimo/app").uploads.start(CLIENT)
    reached, gate = gated_writes(registry, monkeypatch)
    # At the cap: takes the open session's row to write it in its own transaction.
    second = asyncio.ensure_future(registry.repository("jimo/other").uploads.start(CLIENT))
    await reached.wait()
    deleting = asyncio.ensure_future(registry.delete_repository("jimo/app"))
    await asyncio.wait([deleting], timeout=0.2)
    gate.set()
    assert await outcomes([second]) == (0, 1)
    await deleting
    await registry.core.sessions.record()
    assert await rows_of(registry) == 0


async def test_sessions_whose_rows_commit_during_the_quota_s_read_still_count(
    two_processes: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = two_processes
    registry.core.sessions.delay = 10.0
    await registry.set_quota("jimo", 10)
    uploads = registry.repository("jimo/app").uploads
    parking = await uploads.start(CLIENT)
    await uploads.append(parking, chunks(b"8 bytes!"), 8, None, CLIENT)
    second = await uploads.start(CLIENT)
    read = registry.metadata.read

    async def read_then_record(work):
        # What was read is what was committed before the rows' write commits.
        result = await read(work)
        await registry.core.sessions.record()
        return result

    monkeypatch.setattr(registry.metadata, "read", read_then_record)
    with pytest.raises(Denied):  # 8 parked + 5 > 10.
        await uploads.append(second, chunks(b"5 byt"), 5, None, CLIENT)
