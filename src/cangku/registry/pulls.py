"""Pull statistics: counted in memory on the manifest GET path, added to the database in
batches, never a write transaction per pull.

What counts (as on Docker Hub): a manifest GET by a client, by tag or by digest. HEADs do not
(clients check for updates with them), nor the registry's own reads (the pages, garbage
collection), which never pass through the /v2 handler that calls `record`. Inspection
tools that announce themselves (`INSPECTION_AGENTS`) do not count either: `skopeo inspect`
reads a manifest without pulling the image.

docker and containerd pull a tag as HEAD by tag, then GET by digest. So a HEAD by tag is
remembered for `RESOLUTION_SECONDS` per (client address, repository, digest), and the GET by
digest that follows from the same address counts for the tag too. A pull of a multi-platform
image GETs the index and then one of its images: the image's GET counts for its digest (last
pulled) but not again in the repository's total (Docker Hub counts the pair as one pull).

Durability: counts reach the database every `FLUSH_SECONDS` (and when the server stops, and
as soon as `MAX_PENDING` distinct references wait). A crash loses at most the counts of the
last interval; a flush that fails keeps its counts for the next one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from cangku.content.mediatypes import INDEXES, is_acceptable
from cangku.events import records as events
from cangku.metadata import Connection, descriptions, locks, pull_stats, usage_days
from cangku.metadata.pull_stats import DIGEST, TAG, TOTAL, PullCount
from cangku.metadata.store import MetadataStore
from cangku.registry.context import RequestContext
from cangku.registry.protocols import ManifestService
from cangku.registry.records import PushedManifest, StoredManifest

log = logging.getLogger("cangku")

FLUSH_SECONDS = 10.0
# Distinct (repository, kind, reference) keys buffered before a flush starts early. Only
# references that exist are recorded (after a successful GET), so memory stays bounded.
MAX_PENDING = 10_000
# How long a HEAD by tag, or an index GET, is remembered for the client's next GET.
RESOLUTION_SECONDS = 60.0
MAX_INDEX_CHILDREN = 64
MAX_REMEMBERED = 10_000
# Indexes whose children are remembered (a digest's content never changes), so a pull of a
# popular multi-platform image does not parse its JSON again on every GET.
MAX_INDEXES_REMEMBERED = 1024
# User-Agent prefixes of tools that read manifests to inspect images, not to pull them.
INSPECTION_AGENTS = ("skopeo/",)


@dataclass(frozen=True, slots=True)
class RepositoryPulls:
    """A repository's pulls: in total, per tag and per manifest digest (a digest's count
    includes pulls by tag that served it, and an index's images fetched in its pulls)."""

    repository: str
    total: PullCount
    tags: dict[str, PullCount] = field(default_factory=dict)
    digests: dict[str, PullCount] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            **self.total.to_json(),
            "tags": {tag: count.to_json() for tag, count in sorted(self.tags.items())},
            "manifests": {
                digest: count.to_json() for digest, count in sorted(self.digests.items())
            },
        }


class PullCounter:
    """The in-memory buffer: `record` on the hot path, `flush` from a background task."""

    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata
        # (repository, kind, reference) -> [pulls, last pulled at]
        self._pending: dict[tuple[str, str, str], list[float]] = {}
        self._flushing: asyncio.Task[None] | None = None
        # (client, repository, digest) -> (tag or None for an index's child, when noted)
        self._recent: OrderedDict[tuple[str, str, str], tuple[str | None, float]] = OrderedDict()
        # Issue 16: with `events.pulled` on, each flush also records one `pulled` event per
        # (repository, digest) pulled since the last, with its count, in the same write.
        self.pulled_events = False
        self._since = time.time()
        # index digest -> the digests it names (`index_children`), oldest remembered first
        self._children: dict[str, list[str]] = {}

    def note_resolution(self, repository: str, tag: str, digest: str, client: str) -> None:
        """A HEAD by tag: the client's GET of `digest` soon after is a pull of `tag`."""
        self._remember((client, repository, digest), tag, time.time())

    def record(
        self,
        repository: str,
        reference: str,
        digest: str,
        client: str = "",
        children: Iterable[str] = (),
    ) -> None:
        """One pull of `repository` by `reference` (a tag or a digest) that served `digest`
        to `client` (its address); `children` are the digests an index names.

        On every manifest GET: a few dictionary operations, no I/O (measured ~1 µs)."""
        now = time.time()
        tag: str | None = None
        child_of_pull = False
        if reference != digest:
            tag = reference  # by tag: never an index's child, which clients GET by digest
        elif self._recent:
            remembered = self._recent.pop((client, repository, digest), None)
            if remembered is not None and now - remembered[1] <= RESOLUTION_SECONDS:
                if remembered[0] is None:
                    child_of_pull = True
                else:
                    tag = remembered[0]
        pending = self._pending
        keys = [(repository, DIGEST, digest)]
        if not child_of_pull:
            keys.append((repository, TOTAL, ""))
            if tag is not None:
                keys.append((repository, TAG, tag))
        for key in keys:
            entry = pending.get(key)
            if entry is None:
                pending[key] = [1, now]
            else:
                entry[0] += 1
                if now > entry[1]:
                    entry[1] = now
        for child in children:
            self._remember((client, repository, child), None, now)
        if len(pending) >= MAX_PENDING and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush_logged())

    def note(self, repository: str, kind: str, reference: str, count: int = 1) -> None:
        """Add `count` to another kind of counter kept in the same batches (the cache's
        reads, hits, misses and checks: metadata/proxy_cache.py), its time now. No I/O."""
        self._add((repository, kind, reference), count, time.time())
        if len(self._pending) >= MAX_PENDING and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush_logged())

    def pending_times(self, kind: str) -> dict[tuple[str, str], float]:
        """(repository, reference) → the last time of the counts of `kind` not written yet
        (what this process saw in the last flush interval)."""
        return {
            (repository, reference): last
            for (repository, counted, reference), (_, last) in self._pending.items()
            if counted == kind
        }

    def children_of(self, manifest: StoredManifest) -> list[str]:
        """The digests an index names (`index_children`), parsed once per digest; [] for
        anything else, without parsing it."""
        if manifest.media_type not in INDEXES:
            return []
        children = self._children.get(manifest.digest)
        if children is None:
            children = index_children(manifest.media_type, manifest.content)
            if len(self._children) >= MAX_INDEXES_REMEMBERED:
                del self._children[next(iter(self._children))]
            self._children[manifest.digest] = children
        return children

    def _remember(self, key: tuple[str, str, str], tag: str | None, moment: float) -> None:
        self._recent[key] = (tag, moment)
        self._recent.move_to_end(key)
        while len(self._recent) > MAX_REMEMBERED:
            self._recent.popitem(last=False)

    def _add(self, key: tuple[str, str, str], pulls: float, last: float) -> None:
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = [pulls, last]
        else:
            entry[0] += pulls
            entry[1] = max(entry[1], last)

    def forget(self, repository: str) -> None:
        """Drop the buffered counts of a repository being deleted."""
        for key in [key for key in self._pending if key[0] == repository]:
            del self._pending[key]

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:  # kept in the buffer; the periodic flush tries again
            log.exception("could not write pull statistics")

    async def flush(self) -> int:
        """Write the buffered counts in one transaction; returns the rows written. On a
        database error the counts go back into the buffer and the error is raised."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        rows = [
            (name, kind, reference, int(pulls), last)
            for (name, kind, reference), (pulls, last) in batch.items()
        ]
        per_namespace: dict[str, int] = {}
        for name, kind, _, pulls, _ in rows:
            if kind == TOTAL:
                namespace = name.split("/", 1)[0]
                per_namespace[namespace] = per_namespace.get(namespace, 0) + pulls
        today = usage_days.day_of(time.time())
        since = self._since
        pulled = [
            (name, reference, pulls, last)
            for name, kind, reference, pulls, last in rows
            if kind == DIGEST and self.pulled_events
        ]

        def write(connection: Connection) -> int:
            # Counter rows are inserted on first use: flushes of several replicas take turns.
            locks.hold(connection, counters=["pull-statistics", "usage-days"])
            # Usage over time: the day's pulls per namespace (registry/usage_history.py).
            usage_days.add_pulls(connection, today, per_namespace)
            if pulled:
                events.pulled(connection, pulled, since)
            return pull_stats.add_pulls(connection, rows)

        try:
            written = await self.metadata.write(write)
            self._since = time.time()
            return written
        except BaseException:
            for key, (count, last) in batch.items():
                self._add(key, count, last)
            raise

    def pending_total(self, repository: str) -> int:
        """Pulls of a repository counted here and not written yet."""
        entry = self._pending.get((repository, TOTAL, ""))
        return int(entry[0]) if entry else 0

    async def repository(self, name: str, tags: Collection[str] | None = None) -> RepositoryPulls:
        """The stored counts plus those still buffered in this process. With `tags` given
        (a page of the tag table), only the total and those tags' counts: a read bounded by
        the page, not by how many tags and digests were ever pulled."""
        stored = await self.metadata.read(
            lambda connection: pull_stats.repository_pulls(connection, name, tags)
        )
        merged = dict(stored)
        for (repository, kind, reference), (pulls, last) in self._pending.items():
            if repository != name:
                continue
            if tags is not None and not (kind == TOTAL or (kind == TAG and reference in tags)):
                continue
            before = merged.get((kind, reference))
            if before is None:
                merged[(kind, reference)] = PullCount(int(pulls), last)
            else:
                merged[(kind, reference)] = PullCount(
                    before.pulls + int(pulls), max(before.last_pulled_at or 0.0, last)
                )
        tags = {ref: count for (kind, ref), count in merged.items() if kind == TAG}
        digests = {ref: count for (kind, ref), count in merged.items() if kind == DIGEST}
        total = merged.get((TOTAL, ""), PullCount(0, None))
        return RepositoryPulls(name, total, tags, digests)


class Reader(NamedTuple):
    """A client reading manifests through /v2, as the pull statistics see it: its address,
    the request's method ("GET" or "HEAD"), its User-Agent (None: not sent, or not needed:
    a HEAD) and the media types its Accept headers name (`mediatypes.parse_accept`; empty:
    any). A tuple: built on every manifest request, it must cost next to nothing."""

    address: str
    method: str
    user_agent: str | None
    accepted: list[str]


class CountedManifests:
    """`ManifestService` wrapper (DESIGN.md "features as wrappers"; `Registry.repository`
    installs it outermost for a /v2 reader): a manifest the inner service finds for
    `reader` is counted in `counter`, in memory (`PullCounter.record`).

    A GET by a client that its Accept allows is a pull; a HEAD by tag is remembered for
    the GET by digest that follows (`PullCounter.note_resolution`); the rest passes through
    uncounted. Reads of the registry itself (pages, garbage collection, the cache) use
    handles without a reader, so they never count."""

    __slots__ = ("counter", "inner", "name", "reader")

    def __init__(
        self, inner: ManifestService, counter: PullCounter, name: str, reader: Reader
    ) -> None:
        self.inner = inner
        self.counter = counter
        self.name = name
        self.reader = reader

    async def put(
        self,
        reference: str,
        content: bytes,
        content_type: str | None,
        context: RequestContext,
        extra_tags: list[str] | None = None,
    ) -> PushedManifest:
        return await self.inner.put(reference, content, content_type, context, extra_tags)

    async def get(self, reference: str) -> StoredManifest:
        manifest = await self.inner.get(reference)
        reader = self.reader
        if reader.method == "HEAD":
            if reference != manifest.digest:
                self.counter.note_resolution(self.name, reference, manifest.digest, reader.address)
        elif (
            # A pull: a GET, not from an inspection tool, of what its Accept allows (inline,
            # not a function: this runs on every manifest GET).
            reader.method == "GET"
            and not (reader.user_agent or "").lower().startswith(INSPECTION_AGENTS)
            and is_acceptable(manifest.media_type, reader.accepted)
        ):
            counter = self.counter
            # Only an index has children (children_of would say [] after the same test).
            children = counter.children_of(manifest) if manifest.media_type in INDEXES else ()
            counter.record(self.name, reference, manifest.digest, reader.address, children)
        return manifest

    async def delete(self, reference: str, context: RequestContext) -> None:
        await self.inner.delete(reference, context)


def forget_repository(connection: Connection, repository_id: int) -> None:
    """In a repository's delete transaction: its pull statistics and its texts go too."""
    pull_stats.forget_repository(connection, repository_id)
    descriptions.forget_repository(connection, repository_id)


async def flush_periodically(counter: PullCounter, interval: float = FLUSH_SECONDS) -> None:
    """Flush every `interval` seconds until cancelled (the server's lifespan, which flushes
    once more after cancelling it)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await counter.flush()
        except Exception:  # the database is away: the counts wait for the next turn
            log.exception("could not write pull statistics; retrying in %.0f s", interval)


def index_children(media_type: str, content: bytes) -> list[str]:
    """The digests an index names (empty for anything else or what does not parse)."""
    if media_type not in INDEXES:
        return []
    try:
        document = json.loads(content)
    except ValueError:
        return []
    listed = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(listed, list):
        return []
    return [
        child["digest"]
        for child in listed[:MAX_INDEX_CHILDREN]
        if isinstance(child, dict) and isinstance(child.get("digest"), str)
    ]
