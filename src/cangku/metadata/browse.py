"""Rows the web pages read: the repository list, a repository's tag table, repository removal.

Plain functions over a `Connection`, run inside the caller's transaction (`registry/browse.py`
holds the rules). The tag table is read in at most two statements whatever the number of
tags: a page of 500 tags must not become 500 round trips.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    String,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import Executable

from cangku.metadata import descriptions, visibility
from cangku.metadata.schema import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tag_history,
    tags,
)

# Digests looked up per statement: far below SQLite's 32,766 and PostgreSQL's 65,535
# parameters, and more than a page of 500 tags of images needs.
MAX_DIGESTS_PER_STATEMENT = 5000


class Visible(Protocol):
    """Which repositories a caller may see (`registry.records.Visibility` is one)."""

    @property
    def namespaces(self) -> frozenset[str]: ...

    @property
    def public_by_default(self) -> bool: ...

    @property
    def mirrors(self) -> frozenset[str]: ...

    @property
    def hidden_mirrors(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class RepositoryRow:
    id: int
    name: str
    # Unix seconds of the newest manifest and the newest tag change; None: none.
    last_manifest: float | None
    last_tag: float | None


@dataclass(frozen=True, slots=True)
class TaggedManifest:
    """One row of a repository's tag table: the tag, its manifest, and its newest push."""

    tag: str
    digest: str
    media_type: str
    size: int  # bytes of the manifest
    content: bytes
    # The newest move of the tag onto the digest it has now (tag history); None when the
    # history has none (rows written before the history existed).
    pushed_at: float | None
    pushed_by: str | None


@dataclass(frozen=True, slots=True)
class ManifestRow:
    digest: str
    media_type: str
    size: int  # bytes
    content: bytes


def visible_to(visible: Visible) -> ColumnElement[bool]:
    """Repositories the caller may pull (the condition lives with the visibility rows)."""
    return visibility.visible_to(
        visible.namespaces,
        public_by_default=visible.public_by_default,
        mirrors=visible.mirrors,
        hidden_mirrors=visible.hidden_mirrors,
    )


def repository_rows(
    connection: Connection,
    visible: Visible | None,
    search: str,
    sort: str,
    offset: int,
    limit: int,
) -> tuple[list[RepositoryRow], int]:
    """One page of the repositories with content, sorted by "name" or "pushed" (newest
    first), and how many match over all pages. `search`: a case-insensitive substring."""
    last_manifest = (
        select(func.max(manifests.c.created_at))
        .where(manifests.c.repository_id == repositories.c.id)
        .scalar_subquery()
    )
    last_tag = (
        select(func.max(tags.c.updated_at))
        .where(tags.c.repository_id == repositories.c.id)
        .scalar_subquery()
    )
    last_push = func.coalesce(last_tag, last_manifest)
    query = select(
        repositories.c.id,
        repositories.c.name,
        last_manifest.label("last_manifest"),
        last_tag.label("last_tag"),
    ).where(
        select(manifests.c.digest).where(manifests.c.repository_id == repositories.c.id).exists()
    )
    if visible is not None:
        query = query.where(visible_to(visible))
    if search:
        query = query.where(
            repositories.c.name.contains(search.lower(), autoescape=True)
            # Issue 17: the owners' description is searched too.
            | descriptions.description_matches(search)
        )
    total = connection.scalar(select(func.count()).select_from(query.subquery())) or 0
    if sort == "pushed":
        query = query.order_by(last_push.desc(), repositories.c.name)
    else:
        query = query.order_by(repositories.c.name)
    rows = connection.execute(query.offset(offset).limit(limit)).all()
    return [RepositoryRow(row.id, row.name, row.last_manifest, row.last_tag) for row in rows], int(
        total
    )


# The newest history entry that moved the tag onto the digest it points at now.
_NEWEST_PUSH = (
    select(func.max(tag_history.c.id))
    .where(
        tag_history.c.repository_id == tags.c.repository_id,
        tag_history.c.tag == tags.c.name,
        tag_history.c.new_digest == tags.c.manifest_digest,
    )
    .correlate(tags)
    .scalar_subquery()
)
_TAG_TABLE = (
    select(
        tags.c.name.label("tag"),
        manifests.c.digest,
        manifests.c.media_type,
        manifests.c.size,
        manifests.c.content,
        tag_history.c.changed_at,
        tag_history.c.actor,
    )
    .select_from(
        tags.join(repositories, repositories.c.id == tags.c.repository_id)
        .join(
            manifests,
            and_(
                manifests.c.repository_id == tags.c.repository_id,
                manifests.c.digest == tags.c.manifest_digest,
            ),
        )
        .outerjoin(tag_history, tag_history.c.id == _NEWEST_PUSH)
    )
    .where(repositories.c.name == bindparam("name"), tags.c.name > bindparam("after"))
    .order_by(tags.c.name)
    .limit(bindparam("limit"))
)


def tag_table(
    connection: Connection, repository: str, limit: int, after: str = ""
) -> list[TaggedManifest]:
    """The first `limit` tags of a repository by name after `after` ("": from the first),
    each with its manifest and newest push, in one statement (a range of the tags' primary
    key). A tag whose manifest is gone is left out."""
    rows = connection.execute(
        _TAG_TABLE, {"name": repository, "limit": limit, "after": after}
    ).all()
    return [
        TaggedManifest(
            tag=row.tag,
            digest=row.digest,
            media_type=row.media_type,
            size=row.size,
            content=row.content,
            pushed_at=row.changed_at,
            pushed_by=row.actor,
        )
        for row in rows
    ]


def manifests_and_blob_sizes(
    connection: Connection,
    repository: str,
    manifest_digests: Collection[str],
    blob_digests: Collection[str],
) -> tuple[dict[str, ManifestRow], dict[str, int]]:
    """The repository's manifests among `manifest_digests` and the sizes (bytes) of the
    blobs it holds among `blob_digests`; digests it lacks are absent.

    One statement per `MAX_DIGESTS_PER_STATEMENT` digests (one for any page of ordinary
    images: SQLite and PostgreSQL bound the parameters of a statement)."""
    wanted = [("manifest", digest) for digest in sorted(manifest_digests)]
    wanted += [("blob", digest) for digest in sorted(blob_digests)]
    found: dict[str, ManifestRow] = {}
    sizes: dict[str, int] = {}
    for start in range(0, len(wanted), MAX_DIGESTS_PER_STATEMENT):
        chunk = wanted[start : start + MAX_DIGESTS_PER_STATEMENT]
        statement = _held(
            repository,
            [digest for kind, digest in chunk if kind == "manifest"],
            [digest for kind, digest in chunk if kind == "blob"],
        )
        for row in connection.execute(statement).all():
            if row.kind == "manifest":
                found[row.digest] = ManifestRow(row.digest, row.media_type, row.size, row.content)
            else:
                sizes[row.digest] = row.size
    return found, sizes


def _held(repository: str, manifest_digests: list[str], blob_digests: list[str]) -> Executable:
    repository_id = (
        select(repositories.c.id).where(repositories.c.name == repository).scalar_subquery()
    )
    held_manifests = select(
        literal("manifest").label("kind"),
        manifests.c.digest.label("digest"),
        manifests.c.media_type.label("media_type"),
        manifests.c.size.label("size"),
        manifests.c.content.label("content"),
    ).where(
        manifests.c.repository_id == repository_id,
        manifests.c.digest.in_(manifest_digests),
    )
    held_blobs = (
        select(
            literal("blob"),
            repository_blobs.c.digest,
            cast(null(), String),
            blobs.c.size,
            cast(null(), LargeBinary),
        )
        .select_from(repository_blobs.join(blobs, blobs.c.digest == repository_blobs.c.digest))
        .where(
            repository_blobs.c.repository_id == repository_id,
            repository_blobs.c.digest.in_(blob_digests),
        )
    )
    return union_all(held_manifests, held_blobs)


_TAGS_ON = (
    select(tags.c.name)
    .select_from(tags.join(repositories, repositories.c.id == tags.c.repository_id))
    .where(repositories.c.name == bindparam("name"), tags.c.manifest_digest == bindparam("digest"))
    .order_by(tags.c.name)
    .limit(bindparam("limit"))
)


def tags_on(connection: Connection, repository: str, digest: str, limit: int) -> list[str]:
    """The first `limit` tags pointing at a manifest, by name, in one statement (on
    `ix_tags_manifest`)."""
    parameters = {"name": repository, "digest": digest, "limit": limit}
    return list(connection.scalars(_TAGS_ON, parameters).all())


def current_tags(connection: Connection, repository_id: int) -> dict[str, str]:
    """Every tag of a repository and the digest it points at."""
    return {
        row.name: row.manifest_digest
        for row in connection.execute(
            select(tags.c.name, tags.c.manifest_digest).where(tags.c.repository_id == repository_id)
        ).all()
    }


def delete_repository_rows(connection: Connection, repository_id: int) -> None:
    """A repository's manifests, their references and its blob links (its tags go first,
    through the tag history: `registry.tags.remove_tags`)."""
    for table in (manifest_references, manifests, repository_blobs):
        connection.execute(delete(table).where(table.c.repository_id == repository_id))


def repository_id(connection: Connection, name: str) -> int | None:
    """The repository's id; None when there is no such repository."""
    found: int | None = connection.scalar(
        select(repositories.c.id).where(repositories.c.name == name)
    )
    return found
