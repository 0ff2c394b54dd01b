"""Garbage collection with several replicas on one PostgreSQL database (issue 15): one
collection at a time; pushes on another replica during a collection lose nothing.

PostgreSQL only (CANGKU_TEST_POSTGRES): on SQLite a collection's steps are writes, which
run one at a time anyway. tests/api/test_gc_races.py and test_gc_stress.py run the races
step by step on PostgreSQL too (`make test-postgresql`).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.registry.gc import CollectionPolicy, CollectionReport, GarbageCollector
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import push_image
from tests.api.test_gc_races import assert_every_recorded_blob_has_its_file
from tests.databases import POSTGRES_ADMIN_URL, same_database

pytestmark = pytest.mark.skipif(
    not POSTGRES_ADMIN_URL, reason="several replicas share PostgreSQL (CANGKU_TEST_POSTGRES)"
)


class PausedCollector(GarbageCollector):
    """Stops in the middle of its collection (before the upload purge) until told to go."""

    def __init__(self, *arguments: object) -> None:
        super().__init__(*arguments)  # type: ignore[arg-type]
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def _collect(self, report: CollectionReport, now: float) -> None:
        self.started.set()
        await self.go.wait()
        await super()._collect(report, now)


async def test_one_collection_at_a_time_across_replicas(
    client: httpx.AsyncClient, registry: Registry, data_dir: Path
) -> None:
    policy = CollectionPolicy(grace=0)
    other_metadata = MetadataStore.open(same_database(registry.metadata))
    first = PausedCollector(registry.storage, registry.metadata, policy)
    second = PausedCollector(FilesystemStorage(data_dir), other_metadata, policy)
    second.go.set()
    try:
        running = asyncio.ensure_future(first.collect())
        await asyncio.wait_for(first.started.wait(), 10)
        waiting = asyncio.ensure_future(second.collect())
        await asyncio.sleep(1.5)  # It waits in the lock queue meanwhile.
        assert not second.started.is_set()

        # A push meanwhile is served, and kept by both collections.
        pushed, _ = await push_image(client, "jimo/app", "1.0.0")
        first.go.set()
        await asyncio.wait_for(running, 20)
        await asyncio.wait_for(waiting, 20)
        assert second.started.is_set()
    finally:
        first.go.set()
        await other_metadata.close()
    response = await client.get(f"/v2/jimo/app/manifests/{pushed}")
    assert response.status_code == 200
    await assert_every_recorded_blob_has_its_file(registry, data_dir)


async def test_a_collector_killed_mid_collection_frees_the_lock(registry: Registry) -> None:
    # Another process holds the collector's lock, then dies (SIGKILL): its connection closes.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from cangku.metadata.store import MetadataStore\n"
            "async def main():\n"
            "    store = MetadataStore.open(sys.argv[1])\n"
            "    async with store.collector_lock():\n"
            "        print('holding', flush=True)\n"
            "        await asyncio.sleep(600)\n"
            "asyncio.run(main())\n",
            same_database(registry.metadata),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"holding\n"
        collector = GarbageCollector(registry.storage, registry.metadata, CollectionPolicy())
        waiting = asyncio.ensure_future(collector.collect())
        await asyncio.sleep(1.5)
        assert not waiting.done()
        holder.send_signal(signal.SIGKILL)
        await asyncio.wait_for(waiting, 20)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
