"""Pull statistics: counted in memory on the manifest GET path, added to the database in
batches, never a write transaction per pull.

What counts (as on Docker Hub): a manifest GET by a client, by tag or by digest. HEADs do not
(clients check for updates with them), nor the registry's own reads (the pages, garbage
collection), which never pass through the /v2 handler that calls `record`. Inspection
tools that announce themselves (`INSPECTION_AGENTS`) do not count either: `skopeo inspect`
reads a manifest without pulling the image.

Durability: counts reach the database every `FLUSH_SECONDS` (and when the server stops, and
as soon as `MAX_PENDING` distinct references wait). A crash loses at most the counts of the
last interval; a flush that fails keeps its counts for the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from cangku.metadata import descriptions, pull_stats
from cangku.metadata.pull_stats import DIGEST, TAG, PullCount
from cangku.metadata.store import MetadataStore

log = logging.getLogger("cangku")

FLUSH_SECONDS = 10.0
# Distinct (repository, kind, reference) keys buffered before a flush starts early. Only
# references that exist are recorded (after a successful GET), so memory stays bounded.
MAX_PENDING = 10_000
# User-Agent prefixes of tools that read manifests to inspect images, not to pull them.
INSPECTION_AGENTS = ("skopeo/",)


def counts_as_pull(method: str, user_agent: str | None) -> bool:
    """Whether a successful manifest request is a pull: a GET, not from an inspection tool."""
    if method != "GET":
        return False
    return not (user_agent or "").lower().startswith(INSPECTION_AGENTS)


@dataclass(frozen=True, slots=True)
class RepositoryPulls:
    """A repository's pulls: in total, per tag and per manifest digest (the latter count
    pulls by tag too, resolved to the digest served)."""

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

    def record(self, repository: str, reference: str, digest: str) -> None:
        """One pull of `repository` by `reference` (a tag or a digest) that served `digest`."""
        now = time.time()
        self._add((repository, DIGEST, digest), 1, now)
        if reference != digest:
            self._add((repository, TAG, reference), 1, now)
        if len(self._pending) >= MAX_PENDING and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.ensure_future(self._flush_logged())

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
        try:
            return await self.metadata.write(
                lambda connection: pull_stats.add_pulls(connection, rows)
            )
        except BaseException:
            for key, (pulls, last) in batch.items():
                self._add(key, pulls, last)
            raise

    async def repository(self, name: str) -> RepositoryPulls:
        """The stored counts plus those still buffered in this process."""
        stored = await self.metadata.read(
            lambda connection: pull_stats.repository_pulls(connection, name)
        )
        merged = dict(stored)
        for (repository, kind, reference), (pulls, last) in self._pending.items():
            if repository != name:
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
        total = PullCount(
            sum(count.pulls for count in digests.values()),
            max((count.last_pulled_at or 0.0 for count in digests.values()), default=None),
        )
        return RepositoryPulls(name, total, tags, digests)


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
