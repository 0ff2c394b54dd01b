"""SQL of repository descriptions (`repository_descriptions`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.engine import Connection

from cangku.metadata.schema import (
    manifests,
    pull_statistics,
    repositories,
    repository_descriptions,
    tags,
)
from cangku.metadata.upserts import upsert


@dataclass(frozen=True, slots=True)
class StoredDescription:
    description: str | None
    overview: str | None
    updated_at: float | None
    updated_by: str | None


def read_description(connection: Connection, repository_id: int) -> StoredDescription:
    row = connection.execute(
        select(repository_descriptions).where(
            repository_descriptions.c.repository_id == repository_id
        )
    ).first()
    if row is None:
        return StoredDescription(None, None, None, None)
    return StoredDescription(row.description, row.overview, row.updated_at, row.updated_by)


def write_description(
    connection: Connection,
    repository_id: int,
    description: str | None,
    overview: str | None,
    now: float,
    actor: str | None,
) -> None:
    """Replace both texts; a row with neither is removed (the fallback applies again)."""
    where = repository_descriptions.c.repository_id == repository_id
    if description is None and overview is None:
        connection.execute(delete(repository_descriptions).where(where))
        return
    values = {
        "description": description,
        "overview": overview,
        "updated_at": now,
        "updated_by": actor,
    }
    upsert(connection, repository_descriptions, {"repository_id": repository_id}, values)


def newest_tagged_manifest(
    connection: Connection, repository_id: int
) -> tuple[str, str, bytes] | None:
    """(digest, media type, content) of the most recently pushed manifest a tag points at.

    Walks `ix_manifests_created` from the newest manifest, asking `ix_tags_manifest` of each
    whether a tag points at it: usually one step, not a sort of all the manifests."""
    tagged = (
        select(tags.c.name)
        .where(
            tags.c.repository_id == manifests.c.repository_id,
            tags.c.manifest_digest == manifests.c.digest,
        )
        .exists()
    )
    row = connection.execute(
        select(manifests.c.digest, manifests.c.media_type, manifests.c.content)
        .where(manifests.c.repository_id == repository_id, tagged)
        .order_by(manifests.c.created_at.desc(), manifests.c.digest)
        .limit(1)
    ).first()
    return None if row is None else (row.digest, row.media_type, row.content)


def manifest_content(
    connection: Connection, repository_id: int, digest: str
) -> tuple[str, bytes] | None:
    row = connection.execute(
        select(manifests.c.media_type, manifests.c.content).where(
            manifests.c.repository_id == repository_id, manifests.c.digest == digest
        )
    ).first()
    return None if row is None else (row.media_type, row.content)


def repository_id(connection: Connection, name: str) -> int | None:
    found: int | None = connection.execute(
        select(repositories.c.id).where(repositories.c.name == name)
    ).scalar()
    return found


def forget_repository(connection: Connection, repository_id: int) -> None:
    connection.execute(
        delete(repository_descriptions).where(
            repository_descriptions.c.repository_id == repository_id
        )
    )


def description_matches(search: str) -> ColumnElement[bool]:
    """For the repository list's search: the owners' description contains `search` (any
    case). Descriptions taken from images are not searched (they are not stored)."""
    return (
        select(repository_descriptions.c.repository_id)
        .where(
            repository_descriptions.c.repository_id == repositories.c.id,
            func.lower(repository_descriptions.c.description).contains(
                search.lower(), autoescape=True
            ),
        )
        .exists()
    )


def listing_facts(connection: Connection, names: list[str]) -> dict[str, tuple[str | None, int]]:
    """(owners' description, pulls written so far) of each listed repository, by name."""
    if not names:
        return {}
    rows = connection.execute(
        select(
            repositories.c.name,
            repository_descriptions.c.description,
            pull_statistics.c.pulls,
        )
        .select_from(repositories)
        .outerjoin(
            repository_descriptions,
            repository_descriptions.c.repository_id == repositories.c.id,
        )
        .outerjoin(
            pull_statistics,
            (pull_statistics.c.repository_id == repositories.c.id)
            & (pull_statistics.c.kind == "total"),
        )
        .where(repositories.c.name.in_(names))
    )
    return {row.name: (row.description, row.pulls or 0) for row in rows}
