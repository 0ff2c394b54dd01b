"""Rows of `blobs` (one per stored content digest) and `repository_blobs` (a repository
holding a blob: the link a pull, a mount and a manifest's reference check look for).

Plain functions over a `Connection`; the caller (registry/) holds the transaction and the
rules (quotas, garbage collection's grace period).
"""

from __future__ import annotations

from sqlalchemy import (
    ColumnElement,
    Exists,
    Select,
    Subquery,
    bindparam,
    delete,
    insert,
    literal,
    select,
    union,
    update,
)
from sqlalchemy.engine import Connection

from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import blobs, manifest_references, repositories, repository_blobs

# The hot paths' statements, built once (pushes are many small transactions).
BLOB_SIZE_IN_REPOSITORY = Prepared(
    select(blobs.c.size)
    .select_from(
        repositories.join(
            repository_blobs, repository_blobs.c.repository_id == repositories.c.id
        ).join(blobs, blobs.c.digest == repository_blobs.c.digest)
    )
    .where(
        repositories.c.name == bindparam("name"), repository_blobs.c.digest == bindparam("digest")
    )
)
_BLOB_SIZE = Prepared(select(blobs.c.size).where(blobs.c.digest == bindparam("digest")))
_INSERT_BLOB = Prepared(insert(blobs))
_TOUCH_BLOB = Prepared(
    update(blobs).where(blobs.c.digest == bindparam("b_digest")).values(created_at=bindparam("now"))
)
_TOUCH_LINK = Prepared(
    update(repository_blobs)
    .where(
        repository_blobs.c.repository_id == bindparam("b_repository_id"),
        repository_blobs.c.digest == bindparam("b_digest"),
    )
    .values(created_at=bindparam("now"))
)
_INSERT_LINK = Prepared(insert(repository_blobs))
_LINKED_BLOBS = Prepared(
    select(repository_blobs.c.digest).where(
        repository_blobs.c.repository_id == bindparam("repository_id"),
        repository_blobs.c.digest.in_(bindparam("digests", expanding=True)),
    )
)


def size_in_repository(connection: Connection, name: str, digest: str) -> int | None:
    """The size in bytes of blob `digest` if repository `name` holds it, else None."""
    return BLOB_SIZE_IN_REPOSITORY.scalar(connection, {"name": name, "digest": digest})  # type: ignore[no-any-return]


def recorded_size(connection: Connection, digest: str) -> int | None:
    """The size in bytes of a recorded blob (held by any repository or none); None if the
    registry has no row for it."""
    return _BLOB_SIZE.scalar(connection, {"digest": digest})  # type: ignore[no-any-return]


def record(connection: Connection, digest: str, size: int, now: float, *, known: bool) -> None:
    """Insert the blob's row, or (`known`) restart its garbage-collection grace period."""
    if known:
        _TOUCH_BLOB.run(connection, {"b_digest": digest, "now": now})
    else:
        _INSERT_BLOB.run(connection, {"digest": digest, "size": size, "created_at": now})


def link(connection: Connection, repository_id: int, digest: str, now: float) -> None:
    """Repository `repository_id` holds the blob from `now` on (an existing link is
    touched, which restarts its grace period)."""
    touched = _TOUCH_LINK.run(
        connection, {"b_repository_id": repository_id, "b_digest": digest, "now": now}
    )
    if not touched:
        _INSERT_LINK.run(
            connection, {"repository_id": repository_id, "digest": digest, "created_at": now}
        )


def unlink(connection: Connection, repository_id: int, digest: str) -> bool:
    """Remove the repository's link to the blob; False when there was none."""
    result = connection.execute(
        delete(repository_blobs).where(
            repository_blobs.c.repository_id == repository_id,
            repository_blobs.c.digest == digest,
        )
    )
    return bool(result.rowcount)


def linked(connection: Connection, repository_id: int, digests: list[str]) -> set[str]:
    """Which of `digests` the repository holds."""
    parameters = {"repository_id": repository_id, "digests": digests}
    return set(_LINKED_BLOBS.scalars(connection, parameters))


def holders(connection: Connection, digest: str, limit: int) -> list[str]:
    """Up to `limit` names of repositories holding the blob, in name order."""
    query = (
        select(repositories.c.name)
        .select_from(
            repository_blobs.join(
                repositories, repositories.c.id == repository_blobs.c.repository_id
            )
        )
        .where(repository_blobs.c.digest == digest)
        .order_by(repositories.c.name)
        .limit(limit)
    )
    return list(connection.scalars(query).all())


# -- what a repository holds: the one definition garbage collection and quotas share -------
def used_by_a_manifest_of(repository_id: ColumnElement[int], digest: ColumnElement[str]) -> Exists:
    """True where one of the repository's manifests references blob `digest` (as a layer or
    config: `kind = "blob"`; an index's child manifests are manifest rows, not blobs)."""
    return (
        select(literal(1))
        .where(
            manifest_references.c.repository_id == repository_id,
            manifest_references.c.target_digest == digest,
            manifest_references.c.kind == "blob",
        )
        .exists()
    )


def used_by_any_manifest(digest: ColumnElement[str]) -> Exists:
    """True where some manifest of any repository references blob `digest`."""
    return (
        select(literal(1))
        .where(
            manifest_references.c.target_digest == digest,
            manifest_references.c.kind == "blob",
        )
        .exists()
    )


def held_blobs(repository_ids: list[int] | Select[tuple[int]] | None) -> Subquery:
    """(repository_id, digest) of every blob a repository holds: linked into it (by an
    upload or a mount) or used by one of its manifests. What quotas and usage count, and what
    garbage collection keeps linked (docs/garbage-collection.md "Storage usage")."""
    linked = select(repository_blobs.c.repository_id, repository_blobs.c.digest)
    referenced = select(
        manifest_references.c.repository_id,
        manifest_references.c.target_digest.label("digest"),
    ).where(manifest_references.c.kind == "blob")
    if repository_ids is not None:
        linked = linked.where(repository_blobs.c.repository_id.in_(repository_ids))
        referenced = referenced.where(manifest_references.c.repository_id.in_(repository_ids))
    return union(linked, referenced).subquery("held")
