"""Rows of the pull-through cache (issue 13, docs/proxy.md): what mirror repositories hold,
for eviction, purge and the pages; and the cache's counts kept in `pull_statistics`.

The cache's counts ride on the pull statistics' batches (registry/pulls.py: counted in
memory, written every 10 s, never a write per request), under kinds of their own that the
pull-count readers never select:
- `read`, reference a manifest digest: every read of that manifest in a mirror repository
  (GET or HEAD, by any client); `last_pulled_at` is the last read: eviction's "last used".
- `hit` / `miss`, reference "": manifests served from the cache / fetched from the upstream.
- `checked`, reference "": tag revalidations (manifest HEADs upstream); `last_pulled_at` is
  the last upstream check.

A mirror repository is `<upstream>/<name>`: its name starts with a configured upstream's
name and a slash. Plain functions over a `Connection`; the caller holds the transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, ScalarSelect, and_, delete, false, func, or_, select, tuple_
from sqlalchemy.engine import Connection

from cangku.metadata.schema import (
    blobs,
    manifest_references,
    manifests,
    pull_statistics,
    repositories,
    tags,
)

READ = "read"
HIT = "hit"
MISS = "miss"
CHECKED = "checked"


@dataclass(frozen=True, slots=True)
class CachedManifest:
    repository_id: int
    repository: str
    digest: str
    size: int  # bytes of the manifest
    created_at: float  # when it was cached (Unix seconds)
    last_read_at: float | None  # the last read written so far; None: never read since


@dataclass(frozen=True, slots=True)
class MirrorRow:
    """A mirror repository with content, for the pages and `cangku proxy purge`."""

    name: str
    manifests: int
    hits: int
    misses: int
    checked_at: float | None  # the last upstream check (Unix seconds); None: never
    last_read_at: float | None


def in_mirrors(upstreams: Collection[str]) -> ColumnElement[bool]:
    """A condition on `repositories` rows: the repositories under one of `upstreams`."""
    if not upstreams:
        return false()
    return or_(
        *(
            repositories.c.name.startswith(f"{upstream}/", autoescape=True)
            for upstream in sorted(upstreams)
        )
    )


def _last_read() -> ScalarSelect[float | None]:
    """The last read of the `manifests` row at hand that is written so far (a subquery)."""
    return (
        select(pull_statistics.c.last_pulled_at)
        .where(
            pull_statistics.c.repository_id == manifests.c.repository_id,
            pull_statistics.c.kind == READ,
            pull_statistics.c.reference == manifests.c.digest,
        )
        .scalar_subquery()
    )


def cached_manifests(connection: Connection, upstreams: Collection[str]) -> list[CachedManifest]:
    """Every manifest of every mirror repository, with its last read written so far."""
    last_read = _last_read()
    query = (
        select(
            manifests.c.repository_id,
            repositories.c.name,
            manifests.c.digest,
            manifests.c.size,
            manifests.c.created_at,
            last_read.label("last_read_at"),
        )
        .select_from(manifests.join(repositories, repositories.c.id == manifests.c.repository_id))
        .where(in_mirrors(upstreams))
    )
    return [CachedManifest(*row) for row in connection.execute(query)]


def cached_references(
    connection: Connection, upstreams: Collection[str]
) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str, int]]]:
    """What mirror manifests reference: (repository id, index, child manifest) and
    (repository id, manifest, blob digest, blob size) rows."""
    mirror_ids = select(repositories.c.id).where(in_mirrors(upstreams))
    references = manifest_references.c
    children = connection.execute(
        select(references.repository_id, references.manifest_digest, references.target_digest)
        .where(references.kind == "manifest")
        .where(references.repository_id.in_(mirror_ids))
    )
    layers = connection.execute(
        select(
            references.repository_id,
            references.manifest_digest,
            references.target_digest,
            blobs.c.size,
        )
        .select_from(manifest_references.join(blobs, blobs.c.digest == references.target_digest))
        .where(references.kind == "blob")
        .where(references.repository_id.in_(mirror_ids))
    )
    return (
        [(row[0], row[1], row[2]) for row in children],
        [(row[0], row[1], row[2], row[3]) for row in layers],
    )


def blobs_used_outside(connection: Connection, upstreams: Collection[str]) -> set[str]:
    """Digests of blobs a manifest of a repository that is not a mirror references: evicting
    a mirror never frees them, so they do not count towards the cache's size."""
    mirror_ids = select(repositories.c.id).where(in_mirrors(upstreams))
    references = manifest_references.c
    query = (
        select(references.target_digest)
        .where(references.kind == "blob", references.repository_id.not_in(mirror_ids))
        .distinct()
    )
    return {row[0] for row in connection.execute(query)}


def tags_on(connection: Connection, repository_id: int, digests: Sequence[str]) -> dict[str, str]:
    """Tag → digest of the repository's tags that point at one of `digests`."""
    if not digests:
        return {}
    query = select(tags.c.name, tags.c.manifest_digest).where(
        tags.c.repository_id == repository_id, tags.c.manifest_digest.in_(list(digests))
    )
    return {row[0]: row[1] for row in connection.execute(query)}


def delete_tags_still_on(
    connection: Connection, repository_id: int, expected: dict[str, str]
) -> dict[str, str]:
    """Delete those of the repository's tags (tag → digest) that still point at the digest
    given, in one statement; the ones deleted. A tag moved to another manifest since it was
    read stays (eviction must not delete what no longer points at what it evicts)."""
    if not expected:
        return {}
    statement = (
        delete(tags)
        .where(
            tags.c.repository_id == repository_id,
            tuple_(tags.c.name, tags.c.manifest_digest).in_(list(expected.items())),
        )
        .returning(tags.c.name, tags.c.manifest_digest)
    )
    return {row[0]: row[1] for row in connection.execute(statement)}


def mirror_repositories(connection: Connection, upstream: str) -> list[MirrorRow]:
    """The repositories under `upstream` that hold manifests, by name, with the cache's
    counts written so far."""

    def count(kind: str, column: str) -> ColumnElement[float]:
        stat = pull_statistics.c
        return (
            select(getattr(stat, column))
            .where(stat.repository_id == repositories.c.id, stat.kind == kind, stat.reference == "")
            .scalar_subquery()
        )

    held = (
        select(func.count())
        .select_from(manifests)
        .where(manifests.c.repository_id == repositories.c.id)
        .scalar_subquery()
    )
    last_read = (
        select(func.max(pull_statistics.c.last_pulled_at))
        .where(
            and_(
                pull_statistics.c.repository_id == repositories.c.id,
                pull_statistics.c.kind == READ,
            )
        )
        .scalar_subquery()
    )
    query = (
        select(
            repositories.c.name,
            held.label("manifests"),
            count(HIT, "pulls").label("hits"),
            count(MISS, "pulls").label("misses"),
            count(CHECKED, "last_pulled_at").label("checked_at"),
            last_read.label("last_read_at"),
        )
        .where(in_mirrors([upstream]), held > 0)
        .order_by(repositories.c.name)
    )
    return [
        MirrorRow(row[0], int(row[1]), int(row[2] or 0), int(row[3] or 0), row[4], row[5])
        for row in connection.execute(query)
    ]


def usage_of(
    connection: Connection, keys: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], tuple[float, float | None]]:
    """(cached at, last read written so far) of those of the (repository id, digest)
    manifests that still exist; for eviction's batches, which re-check what they delete."""
    if not keys:
        return {}
    last_read = _last_read()
    query = select(
        manifests.c.repository_id, manifests.c.digest, manifests.c.created_at, last_read
    ).where(tuple_(manifests.c.repository_id, manifests.c.digest).in_(list(keys)))
    return {(row[0], row[1]): (row[2], row[3]) for row in connection.execute(query)}


def parents_of(
    connection: Connection, keys: Sequence[tuple[int, str]]
) -> list[tuple[int, str, str]]:
    """(repository id, index, child) of every index that lists one of the (repository id,
    digest) manifests."""
    if not keys:
        return []
    references = manifest_references.c
    query = select(
        references.repository_id, references.manifest_digest, references.target_digest
    ).where(
        references.kind == "manifest",
        tuple_(references.repository_id, references.target_digest).in_(list(keys)),
    )
    return [(row[0], row[1], row[2]) for row in connection.execute(query)]
