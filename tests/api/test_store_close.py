"""Closing the metadata store while database work is still running."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import text
from sqlalchemy.engine import Connection

from cangku.metadata.store import MetadataStore


async def test_close_waits_for_a_write_still_running(database_url: str) -> None:
    """Disposing the engine under a running transaction would orphan its connection."""
    store = MetadataStore.open(database_url)
    started, release = threading.Event(), threading.Event()

    def slow_write(connection: Connection) -> int:
        started.set()
        assert release.wait(30)
        return int(connection.execute(text("SELECT 1")).scalar_one())

    write = asyncio.create_task(store.write(slow_write))
    assert await asyncio.to_thread(started.wait, 30)
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.2)
    assert not closing.done()
    release.set()
    assert await write == 1
    await closing
