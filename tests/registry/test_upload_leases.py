"""One request at a time per upload session across replicas (issue 15,
registry/upload_leases.py): two registries over one database and one store, as two replicas;
the store is the memory driver (every run) and the S3 driver on Ceph (with CANGKU_TEST_S3)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import select

from cangku.content.digest import Digest
from cangku.content.errors import BlobUploadInvalid, BlobUploadUnknown, UploadOutOfOrder
from cangku.metadata import upload_leases as lease_rows
from cangku.metadata.schema import upload_leases as lease_table
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry, upload_leases
from cangku.registry import uploads as uploads_module
from cangku.registry.context import RequestContext
from cangku.registry.gc import CollectionPolicy, GarbageCollector
from cangku.registry.sessions import session_name
from cangku.storage.base import BlobStorage
from cangku.storage.memory import MemoryStorage
from cangku.storage.s3 import PART_SIZE, S3Storage
from tests.databases import fresh_database
from tests.s3 import remove_everything, s3_settings

CLIENT = RequestContext(address="192.0.2.9")
REPOSITORY = "jimo/app"


@pytest.fixture(params=["memory", "s3"])
def two_stores(request: pytest.FixtureRequest) -> Iterator[tuple[BlobStorage, BlobStorage]]:
    """One store as two replicas see it: the same object for memory, two S3 clients (each
    with its own in-process locks and running hashes) over one prefix for S3."""
    if request.param == "memory":
        storage = MemoryStorage()
        yield storage, storage
        return
    settings = s3_settings()
    first, second = S3Storage.from_settings(settings), S3Storage.from_settings(settings)
    try:
        yield first, second
    finally:
        remove_everything(first)


@pytest.fixture
async def replicas(
    tmp_path: Path, two_stores: tuple[BlobStorage, BlobStorage]
) -> AsyncIterator[tuple[Registry, Registry]]:
    with fresh_database(tmp_path) as url:
        first, second = MetadataStore.open(url), MetadataStore.open(url)
        try:
            yield (
                Registry(two_stores[0], first, session_leases=True),
                Registry(two_stores[1], second, session_leases=True),
            )
        finally:
            await first.close()
            await second.close()


async def held_body(data: bytes, started: asyncio.Event, go: asyncio.Event) -> AsyncIterator[bytes]:
    """`data` in two halves, the second once `go` is set."""
    half = len(data) // 2
    yield data[:half]
    started.set()
    await go.wait()
    yield data[half:]


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_patch_on_another_replica_while_one_runs_is_refused_with_the_range_so_far(
    replicas: tuple[Registry, Registry],
) -> None:
    first, second = (registry.repository(REPOSITORY).uploads for registry in replicas)
    head = b"h" * 1000
    chunk = bytes(range(256)) * (PART_SIZE // 256 + 40)  # A whole S3 part and a tail.
    other = b"o" * len(chunk)
    upload_id = await first.start(CLIENT)
    assert await first.append(upload_id, body(head), len(head), None, CLIENT) == len(head)

    started, go = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        first.append(
            upload_id,
            held_body(chunk, started, go),
            len(chunk),
            (len(head), len(head) + len(chunk) - 1),
            CLIENT,
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    with pytest.raises(UploadOutOfOrder) as refused:
        await second.append(
            upload_id,
            body(other),
            len(other),
            (len(head), len(head) + len(other) - 1),
            CLIENT,
        )
    assert refused.value.current_size == len(head)  # The bytes stored before both.
    assert refused.value.headers() == {"Range": f"0-{len(head) - 1}"}
    go.set()
    assert await running == len(head) + len(chunk)

    # Nothing lost, nothing doubled: the other replica finishes it with the right digest.
    content = head + chunk
    digest = f"sha256:{hashlib.sha256(content).hexdigest()}"
    await second.finish(upload_id, digest, body(b""), 0, None, CLIENT)
    stored = b"".join([chunk async for chunk in replicas[0].storage.read(Digest.parse(digest))])
    assert stored == content


async def test_a_finish_waits_for_no_one_but_is_refused_while_a_patch_runs_elsewhere(
    replicas: tuple[Registry, Registry],
) -> None:
    first, second = (registry.repository(REPOSITORY).uploads for registry in replicas)
    data = b"d" * 4096
    upload_id = await first.start(CLIENT)
    started, go = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        first.append(upload_id, held_body(data, started, go), len(data), None, CLIENT)
    )
    await asyncio.wait_for(started.wait(), 30)
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    with pytest.raises(UploadOutOfOrder):
        await second.finish(upload_id, digest, body(b""), 0, None, CLIENT)
    go.set()
    await running
    await second.finish(upload_id, digest, body(b""), 0, None, CLIENT)


async def test_a_cancel_waits_for_a_patch_running_elsewhere_then_deletes_the_upload(
    replicas: tuple[Registry, Registry],
) -> None:
    first, second = (registry.repository(REPOSITORY).uploads for registry in replicas)
    upload_id = await first.start(CLIENT)
    started, go = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        first.append(upload_id, held_body(b"d" * 4096, started, go), 4096, None, CLIENT)
    )
    await asyncio.wait_for(started.wait(), 30)
    cancelling = asyncio.create_task(second.cancel(upload_id, CLIENT))
    await asyncio.sleep(0.3)
    assert not cancelling.done()  # Waiting for the lease, not refused (DELETE: 204 or 404).
    go.set()
    assert await running == 4096
    await asyncio.wait_for(cancelling, 30)
    with pytest.raises(BlobUploadUnknown):
        await first.status(upload_id)


async def test_a_cancel_that_waited_in_vain_is_a_400_without_a_range(
    replicas: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uploads_module, "CANCEL_WAIT_SECONDS", 0.3)
    first, second = (registry.repository(REPOSITORY).uploads for registry in replicas)
    upload_id = await first.start(CLIENT)
    started, go = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        first.append(upload_id, held_body(b"d" * 4096, started, go), 4096, None, CLIENT)
    )
    await asyncio.wait_for(started.wait(), 30)
    with pytest.raises(BlobUploadInvalid) as refused:
        await second.cancel(upload_id, CLIENT)
    assert refused.value.status == 400
    assert refused.value.headers() == {}
    go.set()
    assert await running == 4096
    assert await second.status(upload_id) == 4096  # Not deleted: the client may cancel again.


async def test_a_lease_left_by_a_request_that_died_expires(
    replicas: tuple[Registry, Registry],
) -> None:
    first, second = replicas
    uploads = first.repository(REPOSITORY).uploads
    upload_id = await uploads.start(CLIENT)
    session = session_name(REPOSITORY, upload_id)
    # A replica that died mid-PATCH: its lease stays until it expires.
    await first.metadata.write(
        lambda connection: lease_rows.take_for(connection, session, "dead" * 8, 60)
    )
    with pytest.raises(UploadOutOfOrder):
        await uploads.append(upload_id, body(b"x"), 1, None, CLIENT)
    # A minute later (its expiry moved back instead): any replica may take the session over.
    await second.metadata.write(
        lambda connection: lease_rows.renew_for(connection, session, "dead" * 8, -1)
    )
    assert (
        await second.repository(REPOSITORY).uploads.append(upload_id, body(b"x"), 1, None, CLIENT)
        == 1
    )


async def test_a_request_that_loses_its_lease_stops_before_storing_its_chunk(
    replicas: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_leases, "RENEW_SECONDS", 0.05)
    registry, _ = replicas
    uploads = registry.repository(REPOSITORY).uploads
    upload_id = await uploads.start(CLIENT)
    session = session_name(REPOSITORY, upload_id)
    started, go = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        uploads.append(upload_id, held_body(b"y" * 100, started, go), 100, None, CLIENT)
    )
    await asyncio.wait_for(started.wait(), 30)
    # Another request took the session over (this one looked dead): the renewal finds out.
    await take_over(registry, session)
    await asyncio.sleep(0.3)
    go.set()
    # 416 with the Range stored so far, as for a request refused at the start.
    with pytest.raises(UploadOutOfOrder, match="lease was lost") as refused:
        await running
    assert refused.value.headers() == {"Range": "0-0"}
    assert await uploads.status(upload_id) == 0


async def test_garbage_collection_deletes_leases_left_by_requests_that_died_long_ago(
    replicas: tuple[Registry, Registry],
) -> None:
    registry, _ = replicas
    now = time.time()
    for session, expires_at in (
        ("gone", now - 2 * 86400),
        ("recent", now - 10),
        ("live", now + 60),
    ):
        await registry.metadata.write(
            partial(lease_rows.take_for, session=session, holder="h" * 32, seconds=expires_at - now)
        )
    collector = GarbageCollector(registry.storage, registry.metadata, CollectionPolicy())
    await collector.collect(now=now)
    left = await registry.metadata.read(
        lambda connection: sorted(connection.scalars(select(lease_table.c.session)))
    )
    assert left == ["live", "recent"]


async def test_a_lease_that_cannot_be_released_does_not_fail_the_request(
    replicas: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, other = replicas
    uploads = registry.repository(REPOSITORY).uploads
    upload_id = await uploads.start(CLIENT)

    def unreachable(connection, session, holder):
        raise ConnectionError("the database went away")

    monkeypatch.setattr(lease_rows, "release", unreachable)
    assert await uploads.append(upload_id, body(b"x" * 10), 10, None, CLIENT) == 10
    # The lease stays until it expires: meanwhile another request is refused, not corrupted.
    with pytest.raises(UploadOutOfOrder):
        await other.repository(REPOSITORY).uploads.append(upload_id, body(b"y"), 1, None, CLIENT)


async def take_over(registry: Registry, session: str) -> None:
    """Another request takes `session`'s lease (this one looked dead to it)."""
    now = time.time()
    await registry.metadata.write(
        lambda connection: lease_rows.delete_expired(connection, now + 3600)
    )
    await registry.metadata.write(
        lambda connection: lease_rows.take_for(connection, session, "other" * 6 + "xx", 60)
    )


async def test_a_lease_lost_after_the_body_stops_the_chunk_before_it_is_recorded(
    replicas: tuple[Registry, Registry],
) -> None:
    registry, _ = replicas
    uploads = registry.repository(REPOSITORY).uploads
    upload_id = await uploads.start(CLIENT)
    session = session_name(REPOSITORY, upload_id)
    data = bytes(range(256)) * (PART_SIZE // 256 + 40)  # A whole S3 part and a tail.

    async def taken_over_at_the_end() -> AsyncIterator[bytes]:
        yield data
        # The body has ended; the renewals (every 15 s) have not noticed anything yet.
        await take_over(registry, session)

    with pytest.raises(UploadOutOfOrder, match="lease was lost") as refused:
        await uploads.append(upload_id, taken_over_at_the_end(), len(data), None, CLIENT)
    assert refused.value.headers() == {"Range": "0-0"}
    assert await uploads.status(upload_id) == 0
    # The session is intact for whoever holds it now.
    await registry.metadata.write(
        partial(lease_rows.release, session=session, holder="other" * 6 + "xx")
    )
    assert await uploads.append(upload_id, body(b"z" * 10), 10, None, CLIENT) == 10
    digest = f"sha256:{hashlib.sha256(b'z' * 10).hexdigest()}"
    await uploads.finish(upload_id, digest, body(b""), 0, None, CLIENT)


async def test_a_finish_whose_lease_was_lost_does_not_commit(
    replicas: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = replicas
    uploads = registry.repository(REPOSITORY).uploads
    upload_id = await uploads.start(CLIENT)
    assert await uploads.append(upload_id, body(b"c" * 10), 10, None, CLIENT) == 10
    # Taken over between the lease's take and the commit: the renewal before it finds out.
    monkeypatch.setattr(lease_rows, "renew_for", lambda connection, **_: False)
    digest = f"sha256:{hashlib.sha256(b'c' * 10).hexdigest()}"
    with pytest.raises(UploadOutOfOrder, match="lease was lost") as refused:
        await uploads.finish(upload_id, digest, body(b""), 0, None, CLIENT)
    assert refused.value.headers() == {"Range": "0-9"}
    assert await uploads.status(upload_id) == 10
    assert await registry.storage.stat(Digest.parse(digest)) is None


async def test_a_renewal_that_hangs_counts_as_lost_after_its_timeout(
    replicas: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_leases, "RENEW_TIMEOUT_SECONDS", 0.1)
    registry, _ = replicas
    real_renew = lease_rows.renew_for

    def stalled(connection, **arguments):
        time.sleep(1.0)  # The database stalls (a lock, a network partition).
        return real_renew(connection, **arguments)

    monkeypatch.setattr(lease_rows, "renew_for", stalled)
    lease = upload_leases.Lease(registry.core, "some-session", "h" * 32)
    started = time.monotonic()
    with pytest.raises(upload_leases.LeaseLost):
        await lease.confirm()
    assert time.monotonic() - started < 0.8
    assert lease.lost
    await asyncio.sleep(1.0)  # The stalled write's thread finishes before the teardown.


async def test_leases_expire_by_the_database_clock_not_the_replica_clock(
    replicas: tuple[Registry, Registry], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, _ = replicas
    uploads = registry.repository(REPOSITORY).uploads
    upload_id = await uploads.start(CLIENT)
    session = session_name(REPOSITORY, upload_id)
    real_now = time.time()
    real_time = time.time
    # This replica's clock runs an hour ahead.
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    started, go = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(
        uploads.append(upload_id, held_body(b"s" * 100, started, go), 100, None, CLIENT)
    )
    await asyncio.wait_for(started.wait(), 30)
    expires_at = await registry.metadata.read(
        lambda connection: connection.scalar(
            select(lease_table.c.expires_at).where(lease_table.c.session == session)
        )
    )
    assert expires_at is not None
    assert real_now + 50 < expires_at < real_now + 70
    go.set()
    assert await running == 100
