"""Online garbage collection: mark and sweep over the metadata while the registry serves.

One collection, in phases, each a short write transaction (or a few):

1. manifests (only with `gc.untagged: delete-after D`): per repository, a manifest is kept
   when it is tagged, is a child of a kept index, is the subject of a kept manifest, or has
   a kept subject (referrers follow what they describe). The others are stamped
   `untagged_since` when first seen and deleted once that is D old (and older than the
   grace period).
2. links: a repository stops holding a blob that none of its manifests references, once the
   link and the blob are older than the grace period (this is what gives quota back).
3. blobs: a blob that no manifest of any repository references and that is older than the
   grace period loses its row, its links and its file, in one transaction per batch.
4. orphan files: files in storage without a row (a refused or interrupted upload), older
   than the grace period.
5. upload sessions without activity for `uploads.expire` (they live in storage only), and
   temporary files of one-shot uploads a crash cut short, after the same time.

Why this cannot delete a byte that a tag needs, nor leave a recorded blob without its file,
while pushes continue: see registry/files.py and docs/garbage-collection.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from cangku.content.digest import Digest
from cangku.content.units import format_size
from cangku.metadata import Connection, locks
from cangku.metadata import collection as collection_rows
from cangku.metadata import upload_leases as lease_rows
from cangku.metadata.store import MetadataStore
from cangku.registry import upload_limits
from cangku.registry.files import TransactionFiles
from cangku.registry.sessions import upload_id_of
from cangku.storage.base import BlobStorage

log = logging.getLogger("cangku.gc")

# Rows (and files) per sweep transaction: keeps each hold on the writer lock short.
BATCH = 500

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CollectionPolicy:
    # Unreferenced blobs and untagged manifests younger than this are never collected.
    grace: float = 3600.0
    # None keeps untagged manifests; else seconds after which an untagged one is deleted.
    delete_untagged_after: float | None = None
    # Upload sessions without activity for this long are purged.
    upload_expiry: float = 86400.0


@dataclass(frozen=True, slots=True)
class CollectedManifest:
    repository: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class CollectedBlob:
    digest: str
    size: int
    # A file without a row (never recorded), rather than a recorded blob.
    orphan: bool = False


@dataclass(slots=True)
class CollectionReport:
    dry_run: bool
    manifests: list[CollectedManifest] = field(default_factory=list)
    blobs: list[CollectedBlob] = field(default_factory=list)
    # Links removed: blobs that repositories stopped holding (the blobs may live on elsewhere).
    unlinked: int = 0
    uploads: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def freed_bytes(self) -> int:
        """Blob bytes deleted from storage (manifests live in the database)."""
        return sum(blob.size for blob in self.blobs)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {len(self.manifests)} manifests, {len(self.blobs)} blobs "
            f"({format_size(self.freed_bytes)}, {self.freed_bytes} bytes), "
            f"{self.unlinked} repository links and {len(self.uploads)} upload sessions "
            f"in {self.seconds:.2f}s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "manifests": [
                {"repository": m.repository, "digest": m.digest, "size": m.size}
                for m in self.manifests
            ],
            "blobs": [{"digest": b.digest, "size": b.size, "orphan": b.orphan} for b in self.blobs],
            "unlinked": self.unlinked,
            "uploads": self.uploads,
            "freed_bytes": self.freed_bytes,
            "seconds": self.seconds,
        }


class GarbageCollector:
    def __init__(
        self, storage: BlobStorage, metadata: MetadataStore, policy: CollectionPolicy
    ) -> None:
        self.storage = storage
        self.metadata = metadata
        self.policy = policy
        self.files = TransactionFiles(storage)

    async def collect(self, *, dry_run: bool = False, now: float | None = None) -> CollectionReport:
        """Collect everything that is garbage at `now` (default: the current time).

        A dry run goes through the same steps in one transaction that is rolled back, and
        deletes no file: its report is exactly what a collection would have done then.
        """
        started = time.perf_counter()
        now = time.time() if now is None else now
        report = CollectionReport(dry_run=dry_run)
        if dry_run:
            stored = [entry async for entry in self.storage.iterate()]
            idle_sessions = await self._idle_sessions(now)

            def rehearse(connection: Connection) -> None:
                report.manifests = self._sweep_manifests(connection, now)
                report.unlinked = self._unlink_unreferenced(connection, now)
                while batch := self._sweep_blobs(connection, now, delete_files=False):
                    report.blobs += batch
                collected = {blob.digest for blob in report.blobs}
                candidates = [entry for entry in stored if str(entry[0]) not in collected]
                report.blobs += self._sweep_orphans(connection, now, candidates, False)
                report.uploads = [upload_id_of(session) for session in idle_sessions]

            await self.metadata.rehearse(rehearse)
        else:
            async with self.metadata.collector_lock():
                await self._collect(report, now)
        report.seconds = time.perf_counter() - started
        return report

    async def _collect(self, report: CollectionReport, now: float) -> None:
        """The phases, one after the other (collect() holds the collector's lock)."""
        report.manifests = await self.metadata.write(
            lambda connection: self._sweep_manifests(connection, now)
        )
        report.unlinked = await self.metadata.write(
            lambda connection: self._unlink_unreferenced(connection, now)
        )
        while True:
            batch = await self.metadata.write(
                lambda connection: self._sweep_blobs(connection, now, delete_files=True)
            )
            report.blobs += batch
            if len(batch) < BATCH:
                break
        report.blobs += await self._collect_orphans(now)
        report.uploads = await self._collect_uploads(now)

    # -- 1. manifests ------------------------------------------------------------------------
    def _sweep_manifests(self, connection: Connection, now: float) -> list[CollectedManifest]:
        locks.hold(connection, lifecycle="exclusive")
        after = self.policy.delete_untagged_after
        if after is None:
            # Keeping them all; forget old stamps so that a later delete-after starts afresh.
            collection_rows.clear_untagged_stamps(connection)
            return []
        kept = mark_manifests(connection)
        rows = collection_rows.manifests_to_judge(connection)
        unstamp, stamp, doomed = [], [], []
        for row in rows:
            key = (row.repository_id, row.digest)
            if key in kept:
                if row.untagged_since is not None:
                    unstamp.append({"r": row.repository_id, "d": row.digest, "since": None})
                continue
            since = row.untagged_since
            if since is None:
                since = now
                stamp.append({"r": row.repository_id, "d": row.digest, "since": now})
            if since <= now - after and row.created_at <= now - self.policy.grace:
                doomed.append(row)
        for changes in (unstamp, stamp):
            collection_rows.stamp_untagged(connection, changes)
        collection_rows.delete_manifests(
            connection, [{"r": row.repository_id, "d": row.digest} for row in doomed]
        )
        return [CollectedManifest(row.name, row.digest, row.size) for row in doomed]

    # -- 2. links ----------------------------------------------------------------------------
    def _unlink_unreferenced(self, connection: Connection, now: float) -> int:
        # Held (metadata/blobs.py): linked, and used by one of the repository's manifests.
        locks.hold(connection, lifecycle="exclusive")
        return collection_rows.unlink_unused(connection, now - self.policy.grace)

    # -- 3. blobs ----------------------------------------------------------------------------
    def _sweep_blobs(
        self, connection: Connection, now: float, *, delete_files: bool
    ) -> list[CollectedBlob]:
        """One batch of unreferenced, old blobs: rows, links, then files, in this transaction."""
        locks.hold(connection, lifecycle="exclusive")
        rows = collection_rows.unused_blobs(connection, now - self.policy.grace, BATCH)
        if not rows:
            return []
        digests = [digest for digest, _ in rows]
        collection_rows.delete_blobs(connection, digests)
        if delete_files:
            # Inside the transaction that removed the rows: no upload can record one of these
            # blobs between our decision and the file going away (registry/files.py).
            self.files.delete([Digest.parse(digest) for digest in digests])
        return [CollectedBlob(digest, size) for digest, size in rows]

    # -- 4. orphan files ---------------------------------------------------------------------
    async def _collect_orphans(self, now: float) -> list[CollectedBlob]:
        collected: list[CollectedBlob] = []
        cutoff = now - self.policy.grace
        async for chunk in _chunks(self.storage.iterate(), BATCH):
            old = [entry for entry in chunk if entry[2] < cutoff]
            if not old:
                continue
            recorded = await self.metadata.read(partial(_recorded, stored=old))
            if all(str(digest) in recorded for digest, _, _ in old):
                continue
            collected += await self.metadata.write(
                partial(self._sweep_orphans, now=now, stored=old, delete_files=True)
            )
        return collected

    def _sweep_orphans(
        self,
        connection: Connection,
        now: float,
        stored: Sequence[tuple[Digest, int, float]],
        delete_files: bool,
    ) -> list[CollectedBlob]:
        locks.hold(connection, lifecycle="exclusive")
        cutoff = now - self.policy.grace
        old = [entry for entry in stored if entry[2] < cutoff]
        recorded = _recorded(connection, old)
        orphans = [(digest, size) for digest, size, _ in old if str(digest) not in recorded]
        if delete_files:
            # Checked and deleted in one transaction: a recording transaction comes wholly
            # before (we see its row and keep the file) or after (it sees no file and refuses).
            self.files.delete([digest for digest, _ in orphans])
        return [CollectedBlob(str(digest), size, orphan=True) for digest, size in orphans]

    # -- 5. upload sessions ------------------------------------------------------------------
    async def _collect_uploads(self, now: float) -> list[str]:
        """Sessions idle since the cutoff go (a late PATCH then gets BLOB_UPLOAD_UNKNOWN)."""
        idle = await self._idle_sessions(now)
        for session in idle:
            await self.storage.delete_upload(session)
        live = {session async for session, _ in self.storage.iterate_uploads()}
        cutoff = now - self.policy.upload_expiry

        def forget(connection: Connection) -> None:
            upload_limits.forget_vanished(connection, live, cutoff)
            # Leases of requests that died (registry/upload_leases.py); live ones are renewed.
            lease_rows.delete_expired(connection, cutoff)

        await self.metadata.write(forget)
        # A one-shot upload cut short by a crash leaves its temporary file; the same expiry.
        await self.storage.delete_stale_temporary(now - self.policy.upload_expiry)
        return [upload_id_of(session) for session in idle]

    async def _idle_sessions(self, now: float) -> list[str]:
        # The file's modification time is the session's last activity.
        cutoff = now - self.policy.upload_expiry
        return sorted(
            [session async for session, mtime in self.storage.iterate_uploads() if mtime < cutoff]
        )


def mark_manifests(connection: Connection) -> set[tuple[int, str]]:
    """(repository id, digest) of every manifest kept by a tag, directly or through others.

    Kept: tagged manifests; the children of a kept index; the subject of a kept manifest;
    the manifests whose subject is kept (its signatures, SBOMs and other referrers).
    """
    edges: dict[tuple[int, str], set[str]] = defaultdict(set)
    for repository_id, index, child in collection_rows.child_edges(connection):
        edges[(repository_id, index)].add(child)
    for repository_id, digest, subject in collection_rows.subject_edges(connection):
        edges[(repository_id, digest)].add(subject)
        edges[(repository_id, subject)].add(digest)
    existing = collection_rows.all_manifests(connection)
    roots = collection_rows.tagged_manifests(connection)
    kept: set[tuple[int, str]] = set()
    pending = [(repository_id, digest) for repository_id, digest in roots]
    while pending:
        key = pending.pop()
        if key in kept or key not in existing:
            continue
        kept.add(key)
        repository_id, _ = key
        pending.extend((repository_id, target) for target in edges.get(key, ()))
    return kept


class Collector(Protocol):
    """A GarbageCollector, or a wrapper around one (observability.MeteredCollector)."""

    async def collect(self) -> CollectionReport: ...


async def collect_periodically(collector: Collector, interval: float) -> None:
    """The server's schedule: a collection every `interval` seconds, the first after one."""
    while True:
        await asyncio.sleep(interval)
        try:
            report = await collector.collect()
        except Exception:
            log.exception("garbage collection failed; retrying in %.0fs", interval)
            continue
        log.info("garbage collection: %s", report.summary())


def _recorded(connection: Connection, stored: Sequence[tuple[Digest, int, float]]) -> set[str]:
    return collection_rows.recorded(connection, [str(digest) for digest, _, _ in stored])


async def _chunks(entries: AsyncIterator[T], size: int) -> AsyncIterator[list[T]]:
    chunk: list[T] = []
    async for entry in entries:
        chunk.append(entry)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
