"""Eviction from the pull-through cache (issue 13, docs/proxy.md "Eviction"): run by garbage
collection, before it, so that the collection frees the bytes in the same run.

What goes: cached *images*, never parts of one. A unit is a root manifest of a mirror
repository (one no index of that repository lists) with every manifest under it (an index's
images); its last use is the newest of its manifests' last reads and cache times. Units
are evicted
- when not used for `proxy.evict_after`;
- then, least recently used first, while the bytes only mirrors hold (their manifests, and
  the blobs no manifest of a local repository references) exceed `proxy.max_size`.
An evicted unit loses its manifests and the tags on them (the tag history records the
deletion, by `gc:eviction`); the collection then unlinks and deletes the blobs nothing else
references. Only repositories under a configured upstream are ever touched.

Never removed while being served:
- a unit read (any manifest GET or HEAD through the cache) within the protection window,
  the garbage-collection grace period (at least MIN_PROTECT): reads are counted in memory
  and written every 10 s (registry/pulls.py, no write per read), and this process's
  unwritten reads count too; so
  a client that read a manifest fetches its blobs within the grace period undisturbed;
- a blob being streamed: its file is already open (storage LocalFile), and unlinking it
  does not cut the open file short; nor does deleting an S3 object end a GET under way.
Never racing another writer: eviction runs under the collector's lock (one collection or
eviction or purge at a time across every process on the database: two replicas, or the
schedule and `cangku proxy purge`, never evict the same units at once); the plan is read
first and applied in batches of whole units (`Evictor.BATCH`), each a transaction that first
holds the blob lifecycle exclusive (metadata/locks.py), so every transaction adding a
reference (a tag moved by a mirror's revalidation, a manifest cached) runs wholly before or
after it, and that re-checks its units (read since the plan, gone, or listed by a kept
index: they stay). A tag is deleted only if it still points at the manifest being evicted.
What this cannot see: a read on *another* replica in its last flush interval (≤ 10 s) of
a unit otherwise unused for the whole window. That client's next requests find the content
gone and the cache fetches it again from the upstream.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio.to_thread

from cangku.config import ProxySettings
from cangku.content.units import format_size
from cangku.metadata import Connection, locks
from cangku.metadata import collection as collection_rows
from cangku.metadata import proxy_cache as rows
from cangku.metadata.proxy_cache import READ, CachedManifest
from cangku.metadata.store import MetadataStore
from cangku.proxy.stats import CacheStats
from cangku.registry.context import RequestContext
from cangku.registry.gc import CollectionReport, Collector
from cangku.registry.pulls import PullCounter
from cangku.registry.tags import TagPolicy, record_removed_tags

log = logging.getLogger("cangku.proxy")

EVICTION = RequestContext(caller="gc:eviction")
# The protection window is the GC grace period, but never shorter than this: with
# `gc.grace: 0` an image read a moment ago still has its pull in progress.
MIN_PROTECT = 300.0

Key = tuple[int, str]  # (repository id, manifest digest)


@dataclass(frozen=True, slots=True)
class EvictedManifest:
    repository: str
    digest: str
    size: int  # bytes of the manifest
    last_used: float  # Unix seconds
    reason: str  # "evict_after" or "max_size"


@dataclass(slots=True)
class EvictionReport:
    dry_run: bool
    manifests: list[EvictedManifest] = field(default_factory=list)
    # Bytes only mirrors hold (manifests + blobs no local manifest references), before and
    # after the eviction.
    cached_bytes: int = 0
    remaining_bytes: int = 0

    def summary(self) -> str:
        verb = "would evict" if self.dry_run else "evicted"
        return (
            f"{verb} {len(self.manifests)} cached manifests; the cache holds "
            f"{format_size(self.remaining_bytes)} ({self.remaining_bytes} bytes), "
            f"was {format_size(self.cached_bytes)}"
        )


@dataclass(frozen=True, slots=True)
class EvictionPlan:
    doomed: dict[Key, EvictedManifest]
    cached_bytes: int
    remaining_bytes: int
    # Root of each evicted unit → its manifests that go, in the order the units were chosen
    # (a manifest two units share goes with the second: both are evicted by then).
    units: dict[Key, list[Key]] = field(default_factory=dict)


def plan_eviction(
    cached: Iterable[CachedManifest],
    children: Iterable[tuple[int, str, str]],
    layers: Iterable[tuple[int, str, str, int]],
    shared: Collection[str],
    unwritten_reads: dict[tuple[str, str], float],
    *,
    now: float,
    protect: float,
    evict_after: float | None,
    max_size: int | None,
) -> EvictionPlan:
    """Which cached manifests go (the rules in the module's docstring). Pure: `cached` are
    the mirror repositories' manifests, `children` their (repository id, index, child)
    edges, `layers` their (repository id, manifest, blob, blob size) references, `shared`
    the blobs local repositories use, `unwritten_reads` (repository, digest) → the last read
    not written yet. Times in Unix seconds, `max_size` in bytes."""
    manifests = {(m.repository_id, m.digest): m for m in cached}
    last_used: dict[Key, float] = {}
    for key, manifest in manifests.items():
        last_used[key] = max(
            manifest.created_at,
            manifest.last_read_at or 0.0,
            unwritten_reads.get((manifest.repository, manifest.digest), 0.0),
        )
    below: dict[Key, list[Key]] = defaultdict(list)
    listed: set[Key] = set()
    for repository_id, index, child in children:
        parent, member = (repository_id, index), (repository_id, child)
        if parent in manifests and member in manifests and member != parent:
            below[parent].append(member)
            listed.add(member)
    blobs_of: dict[Key, list[tuple[str, int]]] = defaultdict(list)
    for repository_id, digest, blob, size in layers:
        blobs_of[(repository_id, digest)].append((blob, size))

    units: dict[Key, set[Key]] = {}
    for root in manifests:
        if root in listed:
            continue
        unit, pending = set(), [root]
        while pending:
            key = pending.pop()
            if key not in unit:
                unit.add(key)
                pending.extend(below.get(key, ()))
        units[root] = unit
    # Manifests in no unit (only possible if an index lists itself in a loop): their own unit.
    covered = set().union(*units.values()) if units else set()
    for key in manifests.keys() - covered:
        units[key] = {key}

    owners: dict[Key, int] = defaultdict(int)
    holders: dict[str, set[Key]] = defaultdict(set)
    blob_size: dict[str, int] = {}
    for root, unit in units.items():
        for key in unit:
            owners[key] += 1
            for blob, size in blobs_of.get(key, ()):
                holders[blob].add(root)
                blob_size[blob] = size
    cached_bytes = sum(m.size for m in manifests.values()) + sum(
        size for blob, size in blob_size.items() if blob not in shared
    )
    remaining = cached_bytes
    unit_last = {root: max(last_used[key] for key in unit) for root, unit in units.items()}
    # Oldest first; the name and digest make the order (and so the tests) deterministic.
    candidates = sorted(
        (root for root in units if unit_last[root] <= now - protect),
        key=lambda root: (unit_last[root], manifests[root].repository, root[1]),
    )
    doomed: dict[Key, EvictedManifest] = {}
    going: dict[Key, list[Key]] = {}

    def evict(root: Key, reason: str) -> None:
        nonlocal remaining
        going[root] = []
        for key in units[root]:
            owners[key] -= 1
            if owners[key] == 0:
                manifest = manifests[key]
                doomed[key] = EvictedManifest(
                    manifest.repository, manifest.digest, manifest.size, unit_last[root], reason
                )
                going[root].append(key)
                remaining -= manifest.size
            for blob, size in blobs_of.get(key, ()):
                holding = holders[blob]
                if root in holding:
                    holding.discard(root)
                    if not holding and blob not in shared:
                        remaining -= size

    evicted: set[Key] = set()
    if evict_after is not None:
        for root in candidates:
            if unit_last[root] <= now - evict_after:
                evict(root, "evict_after")
                evicted.add(root)
    if max_size is not None:
        for root in candidates:
            if remaining <= max_size:
                break
            if root not in evicted:
                evict(root, "max_size")
                evicted.add(root)
    return EvictionPlan(doomed, cached_bytes, remaining, going)


class Evictor:
    """Applies `plan_eviction` to the database (a dry run: in one transaction that is rolled
    back). `protect`: the protection window in seconds (the GC grace).

    The plan is read first; its units are then deleted in batches of about `BATCH` manifests,
    each its own write transaction, so that a large cache never holds the writer (SQLite) or
    the blob lifecycle lock (PostgreSQL) for the whole eviction. Each batch holds the
    lifecycle exclusive and re-checks its units as they are now: a unit read since the plan
    (written, or this process's unwritten reads), one whose manifest is gone, or one an index
    not being evicted lists now, stays. The collector's lock is held throughout."""

    BATCH = 500

    def __init__(
        self,
        metadata: MetadataStore,
        proxy: ProxySettings,
        pulls: PullCounter,
        protect: float,
        stats: CacheStats | None = None,
    ) -> None:
        self.metadata = metadata
        self.proxy = proxy
        self.pulls = pulls
        self.protect = protect
        self.stats = stats

    @property
    def enabled(self) -> bool:
        return bool(self.proxy.upstreams) and (
            self.proxy.max_size is not None or self.proxy.evict_after is not None
        )

    async def evict(self, *, dry_run: bool = False, now: float | None = None) -> EvictionReport:
        """Evict what the settings say at `now` (default: the current time)."""
        report = EvictionReport(dry_run=dry_run)
        if not self.enabled:
            return report
        now = time.time() if now is None else now
        upstreams = [upstream.name for upstream in self.proxy.upstreams]

        unwritten = self.pulls.pending_times(READ)

        def plan(connection: Connection) -> EvictionPlan:
            children, layers = rows.cached_references(connection, upstreams)
            return plan_eviction(
                rows.cached_manifests(connection, upstreams),
                children,
                layers,
                rows.blobs_used_outside(connection, upstreams),
                unwritten,
                now=now,
                protect=self.protect,
                evict_after=self.proxy.evict_after,
                max_size=self.proxy.max_size,
            )

        if dry_run:

            def rehearse(connection: Connection) -> EvictionPlan:
                locks.hold(connection, lifecycle="exclusive")
                planned = plan(connection)
                _delete(connection, planned.doomed)
                report.manifests = list(planned.doomed.values())
                return planned

            planned = await self.metadata.rehearse(rehearse)
        else:
            async with self.metadata.collector_lock():
                # In a thread on every database: on a large cache this read takes a while.
                planned = await anyio.to_thread.run_sync(self.metadata.read_now, plan)
                for batch in _batches(planned, self.BATCH):
                    report.manifests += await self.metadata.write(
                        partial(
                            _evict_batch,
                            batch=batch,
                            plan=planned,
                            unwritten=self.pulls.pending_times(READ),
                        )
                    )
            if self.stats is not None:
                for upstream, count in _per_upstream(report.manifests).items():
                    self.stats.evicted(upstream, count)
        report.manifests.sort(key=lambda m: (m.last_used, m.repository, m.digest))
        report.cached_bytes = planned.cached_bytes
        # Units that stayed after all keep their manifests' bytes (their blobs' too, which
        # the plan's total no longer tells apart: those are left out).
        kept = sum(m.size for m in planned.doomed.values()) - sum(m.size for m in report.manifests)
        report.remaining_bytes = planned.remaining_bytes + kept
        return report


def _batches(plan: EvictionPlan, size: int) -> Iterable[list[Key]]:
    """The plan's units, whole, in the order chosen: roots of about `size` manifests each."""
    batch: list[Key] = []
    count = 0
    for root, keys in plan.units.items():
        if batch and count + len(keys) > size:
            yield batch
            batch, count = [], 0
        batch.append(root)
        count += len(keys)
    if batch:
        yield batch


def _evict_batch(
    connection: Connection,
    *,
    batch: list[Key],
    plan: EvictionPlan,
    unwritten: dict[tuple[str, str], float],
) -> list[EvictedManifest]:
    """Delete the units rooted at `batch` that may still go (see `Evictor`); what went."""
    # Locks first, so every read below sees what the writers it waited for committed.
    locks.hold(connection, lifecycle="exclusive")
    keys = [key for root in batch for key in plan.units[root]]
    usage = rows.usage_of(connection, keys)
    listed_by: dict[Key, list[Key]] = defaultdict(list)
    for repository_id, index, child in rows.parents_of(connection, keys):
        listed_by[(repository_id, child)].append((repository_id, index))
    going = [
        root
        for root in batch
        if all(_may_go(key, plan, usage, unwritten) for key in plan.units[root])
    ]
    # A manifest an index lists goes only with that index (or after it: then the index is
    # gone and not listed here). A unit staying can keep another one, so to a fixed point.
    while True:
        doomed = {key: plan.doomed[key] for root in going for key in plan.units[root]}
        staying = [
            root
            for root in going
            if any(index not in doomed for key in plan.units[root] for index in listed_by[key])
        ]
        if not staying:
            break
        going = [root for root in going if root not in staying]
    _delete(connection, doomed)
    return list(doomed.values())


def _may_go(
    key: Key,
    plan: EvictionPlan,
    usage: dict[Key, tuple[float, float | None]],
    unwritten: dict[tuple[str, str], float],
) -> bool:
    found = usage.get(key)
    if found is None:
        return False  # Gone meanwhile (a purge, another eviction): nothing to do.
    manifest = plan.doomed[key]
    last_used = max(
        found[0], found[1] or 0.0, unwritten.get((manifest.repository, manifest.digest), 0.0)
    )
    # Read (or cached again) since the plan: in use.
    return last_used <= manifest.last_used


def _delete(connection: Connection, doomed: dict[Key, EvictedManifest]) -> None:
    by_repository: dict[int, list[str]] = defaultdict(list)
    names: dict[int, str] = {}
    for (repository_id, digest), manifest in doomed.items():
        by_repository[repository_id].append(digest)
        names[repository_id] = manifest.repository
    for repository_id, digests in sorted(by_repository.items()):
        tags = rows.tags_on(connection, repository_id, digests)
        # Deleted only where still on the doomed manifest (checked by the DELETE itself): a
        # tag moved since it was read stays. Recorded in the tag history as deletions by
        # gc:eviction; mirrors do not float.
        removed = rows.delete_tags_still_on(connection, repository_id, tags)
        record_removed_tags(
            connection,
            repository_id,
            names[repository_id],
            removed,
            TagPolicy(floating=False),
            EVICTION,
        )
    keys: list[dict[str, Any]] = [{"r": r, "d": d} for r, d in sorted(doomed)]
    collection_rows.delete_manifests(connection, keys)


def _per_upstream(manifests: Iterable[EvictedManifest]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for manifest in manifests:
        counts[manifest.repository.partition("/")[0]] += 1
    return dict(counts)


class EvictingCollector:
    """Garbage collection that evicts from the pull-through cache first (the server's
    schedule), so that the collection frees the evicted bytes in the same run."""

    def __init__(self, collector: Collector, evictor: Evictor) -> None:
        self.collector = collector
        self.evictor = evictor

    async def collect(self) -> CollectionReport:
        try:
            report = await self.evictor.evict()
        except Exception:  # the collection still runs; eviction is tried again next time
            log.exception("eviction from the pull-through cache failed")
        else:
            if report.manifests:
                log.info("pull-through cache: %s", report.summary())
        return await self.collector.collect()
