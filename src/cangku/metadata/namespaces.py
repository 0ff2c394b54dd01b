"""What a namespace holds across tables, for releasing it when its account is deleted.

A namespace `ns` owns the repository named `ns` and every repository `ns/...`; its tag
policies, quota and upload-session accounting are keyed by the namespace name.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.engine import Connection

from cangku.metadata.schema import (
    manifests,
    quotas,
    repositories,
    tag_history,
    tag_policies,
    upload_sessions,
)


def in_namespace(column: ColumnElement[str], namespace: str) -> ColumnElement[bool]:
    """A repository name in the namespace: `ns/...`, or the repository named just `ns`."""
    return column.startswith(f"{namespace}/", autoescape=True) | (column == namespace)


def repositories_with_images(connection: Connection, namespace: str, limit: int) -> list[str]:
    """Up to `limit` names, sorted, of the namespace's repositories that hold a manifest."""
    return list(
        connection.scalars(
            select(repositories.c.name)
            .where(
                in_namespace(repositories.c.name, namespace),
                select(manifests.c.digest)
                .where(manifests.c.repository_id == repositories.c.id)
                .exists(),
            )
            .order_by(repositories.c.name)
            .limit(limit)
        )
    )


def repositories_of(connection: Connection, namespace: str) -> list[tuple[int, str]]:
    """(row id, name) of every repository of the namespace."""
    query = select(repositories.c.id, repositories.c.name).where(
        in_namespace(repositories.c.name, namespace)
    )
    return [(row.id, row.name) for row in connection.execute(query)]


def repository_ids(connection: Connection, namespace: str) -> list[int]:
    """Row ids of every repository of the namespace."""
    return list(
        connection.scalars(
            select(repositories.c.id).where(in_namespace(repositories.c.name, namespace))
        )
    )


def forget(connection: Connection, namespace: str, repository_ids: list[int]) -> None:
    """Delete the namespace's rows that outlive its images: the repository rows
    `repository_ids` (emptied first by the caller) with their tag history and visibility;
    the namespace's and its repositories' tag policies; its quota; its open upload sessions'
    accounting (their files expire; nobody else knows them)."""
    if repository_ids:
        connection.execute(
            delete(tag_history).where(tag_history.c.repository_id.in_(repository_ids))
        )
        connection.execute(delete(repositories).where(repositories.c.id.in_(repository_ids)))
    connection.execute(
        delete(tag_policies).where(
            ((tag_policies.c.scope == "namespace") & (tag_policies.c.name == namespace))
            | (
                (tag_policies.c.scope == "repository")
                & in_namespace(tag_policies.c.name, namespace)
            )
        )
    )
    connection.execute(delete(quotas).where(quotas.c.namespace == namespace))
    connection.execute(delete(upload_sessions).where(upload_sessions.c.namespace == namespace))
