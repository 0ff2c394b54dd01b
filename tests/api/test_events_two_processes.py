"""Issue 16: two delivery processes on one PostgreSQL database deliver each event exactly
once (`FOR UPDATE SKIP LOCKED` when handing out and claiming), while pushes go on.

Two real processes, each with its own connection pool, polling as fast as they can, and a
burst of 600 events in one transaction that both find at once. PostgreSQL only
(CANGKU_TEST_POSTGRES, as in `make test-postgresql`). Checked to fail when a claim does not
lease its deliveries. (Today every write transaction on PostgreSQL also takes one advisory
lock, metadata/store.py, so the row locks are a second guard; this test keeps holding if
that lock goes.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cangku.metadata import events as event_rows
from cangku.registry import Registry
from tests.api.events_receiver import Receiver, verify
from tests.api.helpers import OCI_MANIFEST, push_image
from tests.api.test_events_delivery import SECRET
from tests.databases import POSTGRES_ADMIN_URL, same_database

pytestmark = pytest.mark.skipif(
    not POSTGRES_ADMIN_URL, reason="two replicas need PostgreSQL (CANGKU_TEST_POSTGRES)"
)

WORKER = """
import asyncio, pathlib, sys
from cangku.config import EventEndpoint, EventSettings
from cangku.events.delivery import Deliverer
from cangku.metadata.store import MetadataStore

async def main(database, endpoint, secret, stop):
    store = MetadataStore.open(database)
    settings = EventSettings(
        endpoints=[EventEndpoint(url=endpoint, secret=secret)], allow_private=True
    )
    worker = Deliverer(store, settings)
    print("ready", flush=True)
    while not pathlib.Path(stop).exists():
        await worker.fan_out()
        await worker.deliver_due()
        await asyncio.sleep(0.005)
    # One last round: what was committed before the stop file is delivered.
    await worker.fan_out()
    await worker.deliver_due()
    await worker.close()
    await store.close()

asyncio.run(main(*sys.argv[1:5]))
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver(threaded=True)
    yield running
    running.stop()


async def test_two_worker_processes_deliver_each_event_exactly_once(
    client: httpx.AsyncClient, registry: Registry, receiver: Receiver, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"
    database = same_database(registry.metadata)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, database, receiver.url, SECRET, str(stop)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == b"ready"
        for version in range(15):
            _, content = await push_image(client, "jimo/app")
            response = await client.put(
                f"/v2/jimo/app/manifests/1.{version}.0",
                content=content,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert response.status_code == 201
        # And a burst in one transaction: both workers find the same rows at once.
        burst = [
            {
                "event_id": str(uuid.uuid4()),
                "type": "io.cangku.manifest.deleted",
                "repository": "jimo/app",
                "created_at": time.time(),
                "payload": json.dumps({"type": "io.cangku.manifest.deleted", "data": {}}),
            }
            for _ in range(600)
        ]
        await registry.metadata.write(lambda c: event_rows.insert_events(c, burst))
        recorded = await registry.metadata.read(lambda c: event_rows.after(c, 0, 10000))
        assert len(recorded) > 680
        deadline = time.monotonic() + 60
        while len(receiver.requests) < len(recorded) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.touch()
        for worker in workers:
            assert worker.wait(timeout=30) == 0
    finally:
        stop.touch()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
    ids = Counter(headers["webhook-id"] for headers, _ in receiver.requests)
    assert all(verify(SECRET, headers, body) for headers, body in receiver.requests)
    assert sorted(ids) == sorted(row.event_id for row in recorded)
    assert max(ids.values()) == 1, [event for event, count in ids.items() if count > 1]
