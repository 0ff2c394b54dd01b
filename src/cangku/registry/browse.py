"""What the web UI lists: repositories with their size and last push, and repository removal.

The functions taking a `Connection` run inside the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.engine import Connection

from cangku.metadata import descriptions
from cangku.metadata.schema import (
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tags,
)
from cangku.registry import usage
from cangku.registry.records import Visibility
from cangku.registry.tags import TagPolicy, remove_tags

SORTS = ("name", "pushed")


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


def list_summaries(
    connection: Connection,
    visible: Visibility | None,
    search: str,
    sort: str,
    offset: int,
    limit: int,
) -> RepositoryListing:
    """One page of the repositories with content that the caller may see."""
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
    report = usage.usage_report(connection, [row.id for row in rows]) if rows else None
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
        for row in rows
    ]
    return RepositoryListing(summaries, int(total))


def remove_repository(connection: Connection, repository_id: int, actor: str | None) -> None:
    """Every tag, manifest and blob link of a repository (its upload sessions live in storage).

    The repository row stays (its visibility and the tag history, the audit trail); with no
    manifest left it is no longer listed, and garbage collection frees the unshared bytes.
    """
    tag_digests = dict(
        connection.execute(
            select(tags.c.name, tags.c.manifest_digest).where(tags.c.repository_id == repository_id)
        ).all()
    )
    # Recorded in the tag history as deletions; with every tag gone nothing floats back.
    remove_tags(connection, repository_id, tag_digests, TagPolicy(floating=False), actor)
    for table in (manifest_references, manifests, repository_blobs):
        connection.execute(delete(table).where(table.c.repository_id == repository_id))


def visible_to(visible: Visibility) -> ColumnElement[bool]:
    """Repositories the caller may pull: public ones and those of their namespaces (a
    namespace owns `ns/...` and a repository named just `ns`)."""
    public = (
        repositories.c.public.is_not(False)
        if visible.public_by_default
        else repositories.c.public.is_(True)
    )
    owned = [
        repositories.c.name.startswith(f"{namespace}/", autoescape=True)
        | (repositories.c.name == namespace)
        for namespace in sorted(visible.namespaces)
    ]
    return or_(public, *owned)
