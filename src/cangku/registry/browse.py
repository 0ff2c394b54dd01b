"""What the web UI lists: repositories with their size and last push, a repository's tag
table, and repository removal. The rows come from `metadata/browse.py`.

The functions taking a `Connection` run inside the caller's transaction.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

from cangku.content.digest import Digest
from cangku.content.errors import NameUnknown, RegistryError
from cangku.content.manifest import parse_manifest
from cangku.events import records as events
from cangku.metadata import Connection
from cangku.metadata import browse as rows
from cangku.registry import usage
from cangku.registry.context import RequestContext
from cangku.registry.records import StoredManifest, Visibility
from cangku.registry.tags import TagPolicy, remove_tags

SORTS = ("name", "pushed")

# The repository page's usage figures (tags, images, bytes) are an aggregate over all of a
# repository's tags, manifests and blobs (registry/usage.py): O(size of the repository). The
# page reuses one computed at most this many seconds ago, so reading the page costs the same
# at 10 versions and at 10,000 (issue 20); the JSON usage API stays exact.
USAGE_MAX_AGE = 30.0
# Repositories whose figures are kept (least recently read dropped first).
USAGE_CACHED_REPOSITORIES = 1024


@dataclass(frozen=True, slots=True)
class CachedUsage:
    usage: usage.RepositoryUsage
    # Unix seconds when the figures were computed.
    measured_at: float


class UsageCache:
    """Per process: a repository's usage figures, each recomputed at most every `max_age`
    seconds (`clock`: monotonic seconds, replaceable in tests)."""

    def __init__(
        self,
        max_age: float = USAGE_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        entries: int = USAGE_CACHED_REPOSITORIES,
    ) -> None:
        self.max_age = max_age
        self.clock = clock
        self.entries = entries
        # name -> (monotonic time computed, figures)
        self._found: OrderedDict[str, tuple[float, CachedUsage]] = OrderedDict()

    def get(self, name: str) -> CachedUsage | None:
        """The figures of `name` if computed within `max_age` seconds, else None."""
        found = self._found.get(name)
        if found is None or self.clock() - found[0] > self.max_age:
            return None
        self._found.move_to_end(name)
        return found[1]

    def put(self, name: str, figures: usage.RepositoryUsage) -> CachedUsage:
        cached = CachedUsage(figures, time.time())
        self._found[name] = (self.clock(), cached)
        self._found.move_to_end(name)
        while len(self._found) > self.entries:
            self._found.popitem(last=False)
        return cached

    def forget(self, name: str) -> None:
        """Drop the figures of a repository (it was deleted)."""
        self._found.pop(name, None)


@dataclass(frozen=True, slots=True)
class RepositorySummary:
    name: str
    # Unix seconds of the newest manifest or tag change.
    last_push: float
    # Deduplicated bytes the repository holds (what deleting it could free).
    size: int
    tags: int


@dataclass(frozen=True, slots=True)
class RepositoryListing:
    repositories: list[RepositorySummary]
    # How many repositories match, over all pages.
    total: int


@dataclass(frozen=True, slots=True)
class TagRow:
    tag: str
    digest: str
    # Unix seconds and user of the newest move of the tag onto `digest`; None: not recorded.
    pushed_at: float | None
    pushed_by: str | None


@dataclass(frozen=True, slots=True)
class TagTable:
    """A repository's tags by name with what the page shows about their images.

    `manifests` holds every tagged manifest and the child manifests of tagged indexes that
    the repository has; `blob_sizes` the sizes (bytes) of the tagged images' config blobs
    that it holds. `truncated`: there are more tags than the limit (after the last row).
    """

    rows: list[TagRow]
    manifests: dict[str, StoredManifest]
    blob_sizes: dict[str, int]
    truncated: bool


def list_summaries(
    connection: Connection,
    visible: Visibility | None,
    search: str,
    sort: str,
    offset: int,
    limit: int,
) -> RepositoryListing:
    """One page of the repositories with content that the caller may see."""
    found, total = rows.repository_rows(connection, visible, search, sort, offset, limit)
    report = usage.usage_report(connection, [row.id for row in found]) if found else None
    sizes: dict[str, usage.RepositoryUsage] = {}
    if report is not None:
        for namespace in report.namespaces:
            for measured in namespace.repositories:
                sizes[measured.repository] = measured
    summaries = [
        RepositorySummary(
            name=row.name,
            last_push=max(row.last_manifest or 0.0, row.last_tag or 0.0),
            size=sizes[row.name].deduplicated_bytes if row.name in sizes else 0,
            tags=sizes[row.name].tags if row.name in sizes else 0,
        )
        for row in found
    ]
    return RepositoryListing(summaries, total)


def tag_table(connection: Connection, name: str, limit: int, after: str | None = None) -> TagTable:
    """The first `limit` tags of a repository by name (after the tag `after`, if given),
    their manifests, the child manifests of the indexes among them and the config blob
    sizes of the images, in two statements whatever the number of tags. NAME_UNKNOWN when
    the repository has no tags and does not exist."""
    tagged = rows.tag_table(connection, name, limit + 1, after or "")
    if not tagged and rows.repository_id(connection, name) is None:
        raise NameUnknown("repository name not known to registry", name)
    shown = tagged[:limit]
    manifests = {
        row.digest: StoredManifest(row.digest, row.media_type, row.size, row.content)
        for row in shown
    }
    # What the page measures: an index's children (their config and layers make a
    # platform's pull size) and an image's config (its platform).
    children: set[str] = set()
    configs: set[str] = set()
    for manifest in manifests.values():
        try:
            parsed = parse_manifest(
                manifest.content, manifest.media_type, Digest.parse(manifest.digest)
            )
        except RegistryError:
            continue  # The page says why it cannot be shown.
        if parsed.is_index:
            children.update(str(child.digest) for child in parsed.manifests)
        elif parsed.config is not None:
            configs.add(str(parsed.config.digest))
    parts = image_parts(connection, name, children - manifests.keys(), configs)
    manifests.update(parts.manifests)
    return TagTable(
        rows=[TagRow(row.tag, row.digest, row.pushed_at, row.pushed_by) for row in shown],
        manifests=manifests,
        blob_sizes=parts.blob_sizes,
        truncated=len(tagged) > limit,
    )


@dataclass(frozen=True, slots=True)
class ImageParts:
    """Manifests (by digest) and blob sizes (bytes, by digest) that a repository holds."""

    manifests: dict[str, StoredManifest]
    blob_sizes: dict[str, int]


def image_parts(
    connection: Connection,
    name: str,
    manifest_digests: Collection[str],
    blob_digests: Collection[str],
) -> ImageParts:
    """The repository's manifests among `manifest_digests` (an index's children) and the
    sizes of the blobs it holds among `blob_digests` (a config), in one statement."""
    found, sizes = rows.manifests_and_blob_sizes(connection, name, manifest_digests, blob_digests)
    return ImageParts(
        {
            digest: StoredManifest(row.digest, row.media_type, row.size, row.content)
            for digest, row in found.items()
        },
        sizes,
    )


def tags_on(connection: Connection, name: str, digest: str, limit: int) -> list[str]:
    """The first `limit` tags of a repository that point at `digest`, by name."""
    return rows.tags_on(connection, name, digest, limit)


def remove_repository(
    connection: Connection, repository_id: int, name: str, context: RequestContext
) -> None:
    """Every tag, manifest and blob link of a repository (its upload sessions live in storage).

    The repository row stays (its visibility and the tag history, the audit trail); with no
    manifest left it is no longer listed, and garbage collection frees the unshared bytes.
    """
    tag_digests = rows.current_tags(connection, repository_id)
    # Recorded in the tag history as deletions; with every tag gone nothing floats back.
    remove_tags(connection, repository_id, name, tag_digests, TagPolicy(floating=False), context)
    rows.delete_repository_rows(connection, repository_id)
    events.repository_deleted(connection, name, context)
