"""The filesystem driver shared by several processes (replicas on a shared filesystem, or the
CLI beside the server): an upload session's requests never interleave across processes.
Each `FilesystemStorage` below stands for another process: nothing of its memory is shared,
only the directory (and `flock`, which locks per open file, as between processes)."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from cangku.content.digest import Digest
from cangku.content.errors import BlobUploadUnknown
from cangku.storage.filesystem import FilesystemStorage
from tests.storage.test_drivers import new_upload, stream


async def paused(first: bytes, rest: bytes, go: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    await go.wait()
    yield rest


async def test_an_append_on_another_process_waits_for_the_one_in_progress(
    data_root: Path,
) -> None:
    one, other = FilesystemStorage(data_root), FilesystemStorage(data_root)
    upload_id = await new_upload(one)
    first, second = os.urandom(3 * 1024 * 1024), os.urandom(5000)
    go = asyncio.Event()
    in_progress = asyncio.ensure_future(
        one.append_upload(upload_id, paused(first[:1000], first[1000:], go), len(first))
    )
    await asyncio.sleep(0.2)
    waiting = asyncio.ensure_future(other.append_upload(upload_id, stream(second), len(second)))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # Else its bytes would land inside the first chunk.
    go.set()
    assert await in_progress == len(first)
    assert await waiting == len(first) + len(second)
    # Committed on the first process: its running hash no longer matches; it re-hashes.
    assert await one.commit_upload(upload_id, Digest.of(first + second)) == len(first + second)


async def test_an_append_waiting_while_another_process_commits_finds_no_session(
    data_root: Path,
) -> None:
    one, other = FilesystemStorage(data_root), FilesystemStorage(data_root)
    data = os.urandom(4000)
    upload_id = await new_upload(one, data)
    go = asyncio.Event()
    late = os.urandom(100)
    # Another process holds the session (a PATCH in progress) while this one commits.
    holding = asyncio.ensure_future(
        other.append_upload(upload_id, paused(late[:10], late[10:], go), len(late))
    )
    await asyncio.sleep(0.2)
    commit = asyncio.ensure_future(one.commit_upload(upload_id, Digest.of(data + late)))
    await asyncio.sleep(0.3)
    assert not commit.done()
    go.set()
    await holding
    assert await commit == len(data) + len(late)
    with pytest.raises(BlobUploadUnknown):
        await other.append_upload(upload_id, stream(b"more"), 4)
    assert await one.stat(Digest.of(data + late)) == len(data) + len(late)


async def test_a_free_session_lock_is_taken_without_a_worker_thread(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread hop costs ~50 µs of CPU; a finishing PUT takes the lock twice. Only a lock
    # another process holds is waited for in a thread (the tests above).
    storage = FilesystemStorage(data_root)
    upload_id = await new_upload(storage)
    in_threads: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def recording(function: Any, *arguments: Any) -> Any:
        in_threads.append(function)
        return await run_sync(function, *arguments)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording)
    data = os.urandom(100)
    assert await storage.append_upload(upload_id, stream(data), len(data)) == len(data)
    assert await storage.commit_upload(upload_id, Digest.of(data)) == len(data)
    assert fcntl.flock not in in_threads
    assert await storage.stat(Digest.of(data)) == len(data)
