"""Rows of the `repositories` table that the registry's use cases read and write: a
repository's id by name, creating it on first push, and the catalog's names.

Plain functions over a `Connection`; the caller (registry/) holds the transaction. The
visibility columns belong to their own row module (auth's concern).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import manifests, repositories

# Built once: building a statement costs more than running it on the hot paths.
REPOSITORY_ID = Prepared(select(repositories.c.id).where(repositories.c.name == bindparam("name")))
_INSERT_REPOSITORY = insert(repositories).returning(repositories.c.id)


def repository_id(connection: Connection, name: str) -> int | None:
    """The id of repository `name`; None when it has never been pushed to."""
    return REPOSITORY_ID.scalar(connection, {"name": name})  # type: ignore[no-any-return]


def ensure_repository(
    connection: Connection, name: str, on_create: Callable[[], None] | None = None
) -> int:
    """The id of repository `name`, inserting its row on first use (a push); `on_create`
    is called, in the transaction, when it did (the `repository.created` event)."""
    found = repository_id(connection, name)
    if found is None:
        found = connection.scalar(_INSERT_REPOSITORY, {"name": name, "created_at": time.time()})
        if on_create is not None:
            on_create()
    return int(found)


def names_with_content(
    connection: Connection,
    after: str | None,
    limit: int,
    visible: ColumnElement[bool] | None = None,
) -> list[str]:
    """Up to `limit` names of repositories holding at least one manifest, in name order,
    after `after`; `visible` narrows them (a condition over `repositories`)."""
    query = select(repositories.c.name).where(
        select(manifests.c.digest).where(manifests.c.repository_id == repositories.c.id).exists()
    )
    if visible is not None:
        query = query.where(visible)
    if after:
        query = query.where(repositories.c.name > after)
    return list(connection.scalars(query.order_by(repositories.c.name).limit(limit)).all())
