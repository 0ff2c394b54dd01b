"""The statements of garbage collection (registry/gc.py holds the phases and the rules):
untagged-manifest stamps, the manifest graph it marks, and the sweeps of links and blobs.

What a repository holds is `metadata/blobs.py`'s definition, shared with usage and quotas.
Plain functions over a `Connection`; the caller holds the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, delete, literal, select, update
from sqlalchemy.engine import Connection

from cangku.metadata.blobs import used_by_a_manifest_of, used_by_any_manifest
from cangku.metadata.schema import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tags,
)

_ONE_MANIFEST = (manifests.c.repository_id == bindparam("r")) & (
    manifests.c.digest == bindparam("d")
)


# -- manifests ---------------------------------------------------------------------------------
def clear_untagged_stamps(connection: Connection) -> None:
    """Forget every `untagged_since` stamp (untagged manifests are being kept)."""
    connection.execute(
        update(manifests).where(manifests.c.untagged_since.is_not(None)).values(untagged_since=None)
    )


def manifests_to_judge(connection: Connection) -> list[Row[Any, Any, Any, Any, Any, Any]]:
    """(repository_id, digest, size, created_at, untagged_since, name) of every manifest."""
    query = select(
        manifests.c.repository_id,
        manifests.c.digest,
        manifests.c.size,
        manifests.c.created_at,
        manifests.c.untagged_since,
        repositories.c.name,
    ).select_from(manifests.join(repositories, repositories.c.id == manifests.c.repository_id))
    return list(connection.execute(query).all())


def stamp_untagged(connection: Connection, changes: list[dict[str, Any]]) -> None:
    """Set `untagged_since` to `since` for each `{"r": repository id, "d": digest, "since"}`."""
    if changes:
        connection.execute(
            update(manifests).where(_ONE_MANIFEST).values(untagged_since=bindparam("since")),
            changes,
        )


def delete_manifests(connection: Connection, keys: list[dict[str, Any]]) -> None:
    """Delete each `{"r": repository id, "d": digest}` manifest and its reference rows."""
    if keys:
        connection.execute(delete(manifests).where(_ONE_MANIFEST), keys)
        connection.execute(
            delete(manifest_references).where(
                (manifest_references.c.repository_id == bindparam("r"))
                & (manifest_references.c.manifest_digest == bindparam("d"))
            ),
            keys,
        )


def child_edges(connection: Connection) -> list[tuple[int, str, str]]:
    """(repository id, index digest, child manifest digest) of every index's children."""
    query = select(
        manifest_references.c.repository_id,
        manifest_references.c.manifest_digest,
        manifest_references.c.target_digest,
    ).where(manifest_references.c.kind == "manifest")
    return [(row[0], row[1], row[2]) for row in connection.execute(query)]


def subject_edges(connection: Connection) -> list[tuple[int, str, str]]:
    """(repository id, manifest digest, subject digest) of every manifest with a subject."""
    query = select(manifests.c.repository_id, manifests.c.digest, manifests.c.subject_digest)
    rows = connection.execute(query.where(manifests.c.subject_digest.is_not(None)))
    return [(row[0], row[1], row[2]) for row in rows]


def all_manifests(connection: Connection) -> set[tuple[int, str]]:
    """(repository id, digest) of every manifest."""
    query = select(manifests.c.repository_id, manifests.c.digest)
    return {(row[0], row[1]) for row in connection.execute(query)}


def tagged_manifests(connection: Connection) -> list[tuple[int, str]]:
    """(repository id, digest) of every manifest a tag points at."""
    query = select(tags.c.repository_id, tags.c.manifest_digest).distinct()
    return [(row[0], row[1]) for row in connection.execute(query)]


# -- links and blobs ---------------------------------------------------------------------------
def unlink_unused(connection: Connection, cutoff: float) -> int:
    """Remove the links, older than `cutoff`, of blobs (themselves older than `cutoff`) that
    none of the repository's manifests uses; how many were removed."""
    used_here = used_by_a_manifest_of(repository_blobs.c.repository_id, repository_blobs.c.digest)
    recent_blob = (
        select(literal(1))
        .where(blobs.c.digest == repository_blobs.c.digest, blobs.c.created_at >= cutoff)
        .exists()
    )
    result = connection.execute(
        delete(repository_blobs).where(
            repository_blobs.c.created_at < cutoff, ~used_here, ~recent_blob
        )
    )
    return int(result.rowcount)


def unused_blobs(connection: Connection, cutoff: float, limit: int) -> list[tuple[str, int]]:
    """Up to `limit` (digest, size) of blobs older than `cutoff` that no manifest of any
    repository uses, in digest order."""
    query = (
        select(blobs.c.digest, blobs.c.size)
        .where(blobs.c.created_at < cutoff, ~used_by_any_manifest(blobs.c.digest))
        .order_by(blobs.c.digest)
        .limit(limit)
    )
    return [(row[0], int(row[1])) for row in connection.execute(query)]


def delete_blobs(connection: Connection, digests: list[str]) -> None:
    """Delete the blobs' rows and every link to them."""
    connection.execute(delete(repository_blobs).where(repository_blobs.c.digest.in_(digests)))
    connection.execute(delete(blobs).where(blobs.c.digest.in_(digests)))


def recorded(connection: Connection, digests: list[str]) -> set[str]:
    """Which of `digests` have a blob row."""
    if not digests:
        return set()
    query = select(blobs.c.digest).where(blobs.c.digest.in_(digests))
    return set(connection.scalars(query).all())
