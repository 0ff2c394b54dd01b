"""Rows of `tags` and `tag_history` that the registry's listings and deletes read.

The tag *writes* (pushes, moves, floating tags and policies) stay in registry/tags.py for
now (issue 20 rewrites them; they move here after it lands). Plain functions over a
`Connection`; the caller holds the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, select
from sqlalchemy.engine import Connection

from cangku.metadata.schema import tag_history, tags


def names(connection: Connection, repository_id: int, after: str | None, limit: int) -> list[str]:
    """Up to `limit` tag names of the repository after `after`, in name order."""
    query = select(tags.c.name).where(tags.c.repository_id == repository_id)
    if after:
        query = query.where(tags.c.name > after)
    return list(connection.scalars(query.order_by(tags.c.name).limit(limit)).all())


def on_manifest(connection: Connection, repository_id: int, digest: str) -> list[str]:
    """The names of the repository's tags pointing at manifest `digest`."""
    query = select(tags.c.name).where(
        tags.c.repository_id == repository_id, tags.c.manifest_digest == digest
    )
    return list(connection.scalars(query).all())


def digests_by_tag(connection: Connection, repository_id: int) -> dict[str, str]:
    """Every tag of the repository and the manifest digest it points at."""
    query = select(tags.c.name, tags.c.manifest_digest).where(tags.c.repository_id == repository_id)
    return {row.name: row.manifest_digest for row in connection.execute(query)}


def history(connection: Connection, repository_id: int, tag: str) -> list[Row[Any]]:
    """Every recorded move of a tag (all `tag_history` columns), newest first."""
    query = (
        select(tag_history)
        .where(tag_history.c.repository_id == repository_id, tag_history.c.tag == tag)
        .order_by(tag_history.c.id.desc())
    )
    return list(connection.execute(query).all())
