"""Rows of `manifests` (one per manifest a repository holds, with its bytes) and
`manifest_references` (what each manifest references, for garbage collection).

Plain functions over a `Connection`; the caller (registry/) holds the transaction and the
rules (reference checks, quotas, tag policies).
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Row, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import manifest_references, manifests, repositories, tags

# The hot read paths, built once: building a statement costs more than running it.
_MANIFEST_COLUMNS = (
    manifests.c.digest,
    manifests.c.media_type,
    manifests.c.size,
    manifests.c.content,
)
MANIFEST_BY_DIGEST = Prepared(
    select(*_MANIFEST_COLUMNS)
    .select_from(manifests.join(repositories, repositories.c.id == manifests.c.repository_id))
    .where(repositories.c.name == bindparam("name"), manifests.c.digest == bindparam("digest"))
)
MANIFEST_BY_TAG = Prepared(
    select(*_MANIFEST_COLUMNS)
    .select_from(
        tags.join(repositories, repositories.c.id == tags.c.repository_id).join(
            manifests,
            and_(
                manifests.c.repository_id == tags.c.repository_id,
                manifests.c.digest == tags.c.manifest_digest,
            ),
        )
    )
    .where(repositories.c.name == bindparam("name"), tags.c.name == bindparam("tag"))
)
_PRESENT_MANIFESTS = Prepared(
    select(manifests.c.digest).where(
        manifests.c.repository_id == bindparam("repository_id"),
        manifests.c.digest.in_(bindparam("digests", expanding=True)),
    )
)
_STORED_MEDIA_TYPE = Prepared(
    select(manifests.c.media_type).where(
        manifests.c.repository_id == bindparam("repository_id"),
        manifests.c.digest == bindparam("digest"),
    )
)
_INSERT_MANIFEST = Prepared(insert(manifests))
_INSERT_REFERENCES = Prepared(insert(manifest_references))
_CLEAR_UNTAGGED = Prepared(
    update(manifests)
    .where(
        manifests.c.repository_id == bindparam("b_repository_id"),
        manifests.c.digest == bindparam("b_digest"),
        manifests.c.untagged_since.is_not(None),
    )
    .values(untagged_since=None)
)


def by_digest(connection: Connection, name: str, digest: str) -> Any:
    """(digest, media_type, size, content) of a manifest of repository `name`, or None."""
    return MANIFEST_BY_DIGEST.first(connection, {"name": name, "digest": digest})


def by_tag(connection: Connection, name: str, tag: str) -> Any:
    """(digest, media_type, size, content) of the manifest tag `tag` points at, or None."""
    return MANIFEST_BY_TAG.first(connection, {"name": name, "tag": tag})


def present(connection: Connection, repository_id: int, digests: list[str]) -> set[str]:
    """Which of `digests` the repository holds as manifests."""
    parameters = {"repository_id": repository_id, "digests": digests}
    return set(_PRESENT_MANIFESTS.scalars(connection, parameters))


def stored_media_type(connection: Connection, repository_id: int, digest: str) -> str | None:
    """The media type the repository holds the manifest as; None when it is not there."""
    parameters = {"repository_id": repository_id, "digest": digest}
    return _STORED_MEDIA_TYPE.scalar(connection, parameters)  # type: ignore[no-any-return]


def insert_manifest(
    connection: Connection,
    repository_id: int,
    *,
    digest: str,
    media_type: str,
    size: int,
    content: bytes,
    artifact_type: str | None,
    subject_digest: str | None,
    annotations: dict[str, str] | None,
    references: set[tuple[str, str]],
) -> None:
    """A new manifest row and its `(kind, target digest)` references ("blob"/"manifest")."""
    _INSERT_MANIFEST.run(
        connection,
        {
            "repository_id": repository_id,
            "digest": digest,
            "media_type": media_type,
            "size": size,
            "content": content,
            "artifact_type": artifact_type,
            "subject_digest": subject_digest,
            "annotations": json.dumps(annotations) if annotations else None,
            "created_at": time.time(),
            "untagged_since": None,
        },
    )
    if references:
        _INSERT_REFERENCES.run_many(
            connection,
            [
                {
                    "repository_id": repository_id,
                    "manifest_digest": digest,
                    "kind": kind,
                    "target_digest": target,
                }
                for kind, target in sorted(references)
            ],
        )


def delete_manifest(connection: Connection, repository_id: int, digest: str) -> bool:
    """Remove a manifest and its reference rows; False when the repository did not hold it.
    Its tags are the caller's (tag history and policies apply)."""
    result = connection.execute(
        delete(manifests).where(
            manifests.c.repository_id == repository_id, manifests.c.digest == digest
        )
    )
    if not result.rowcount:
        return False
    connection.execute(
        delete(manifest_references).where(
            manifest_references.c.repository_id == repository_id,
            manifest_references.c.manifest_digest == digest,
        )
    )
    return True


def clear_untagged_since(connection: Connection, repository_id: int, digest: str) -> None:
    """A tagged manifest is kept: the `gc.untagged` clock starts again if it loses the tag."""
    _CLEAR_UNTAGGED.run(connection, {"b_repository_id": repository_id, "b_digest": digest})


def referrers(
    connection: Connection, name: str, subject: str, artifact_type: str | None
) -> list[Row[Any, Any, Any, Any, Any]]:
    """(media_type, digest, size, artifact_type, annotations JSON text) of every manifest
    of repository `name` whose subject is `subject`, oldest first."""
    query = (
        select(
            manifests.c.media_type,
            manifests.c.digest,
            manifests.c.size,
            manifests.c.artifact_type,
            manifests.c.annotations,
        )
        .select_from(manifests.join(repositories, repositories.c.id == manifests.c.repository_id))
        .where(repositories.c.name == name, manifests.c.subject_digest == subject)
        .order_by(manifests.c.created_at, manifests.c.digest)
    )
    if artifact_type is not None:
        query = query.where(manifests.c.artifact_type == artifact_type)
    return list(connection.execute(query).all())


def referrer_sizes(
    connection: Connection,
    name: str,
    subject: str,
    artifact_type: str | None,
    after: str | None,
    limit: int,
) -> list[Row[Any, Any, Any, Any, Any]]:
    """(media_type, digest, size, artifact_type, annotations_length) of up to `limit`
    referrers of `subject` after digest `after`, in digest order: what a page needs to
    budget its bytes before it loads any annotations."""
    conditions = [repositories.c.name == name, manifests.c.subject_digest == subject]
    if artifact_type is not None:
        conditions.append(manifests.c.artifact_type == artifact_type)
    if after is not None:
        conditions.append(manifests.c.digest > after)
    query = (
        select(
            manifests.c.media_type,
            manifests.c.digest,
            manifests.c.size,
            manifests.c.artifact_type,
            func.coalesce(func.length(manifests.c.annotations), 0).label("annotations_length"),
        )
        .select_from(manifests.join(repositories, repositories.c.id == manifests.c.repository_id))
        .where(*conditions)
        .order_by(manifests.c.digest)
        .limit(limit)
    )
    return list(connection.execute(query).all())


def annotations_of(connection: Connection, name: str, digests: list[str]) -> dict[str, str]:
    """The annotations (JSON text as stored) of the given manifests of repository `name`."""
    query = (
        select(manifests.c.digest, manifests.c.annotations)
        .select_from(manifests.join(repositories, repositories.c.id == manifests.c.repository_id))
        .where(repositories.c.name == name, manifests.c.digest.in_(digests))
    )
    return {row.digest: row.annotations for row in connection.execute(query)}


# The pull-through cache, before fetching a blob (proxy/blobs.py): which manifests of the
# repository name it, to read its size from their descriptors.
_REFERENCING = (
    select(manifests.c.media_type, manifests.c.content)
    .join(repositories, repositories.c.id == manifests.c.repository_id)
    .join(
        manifest_references,
        and_(
            manifest_references.c.repository_id == manifests.c.repository_id,
            manifest_references.c.manifest_digest == manifests.c.digest,
        ),
    )
    .where(
        repositories.c.name == bindparam("name"),
        manifest_references.c.kind == "blob",
        manifest_references.c.target_digest == bindparam("digest"),
    )
    .limit(bindparam("limit"))
)


def referencing(
    connection: Connection, name: str, digest: str, limit: int
) -> list[tuple[str, bytes]]:
    """(media type, content) of up to `limit` manifests of repository `name` that need blob
    `digest` (as their config or a layer)."""
    rows = connection.execute(_REFERENCING, {"name": name, "digest": digest, "limit": limit})
    return [(row.media_type, row.content) for row in rows]
