"""Rows of `upload_sessions`: one per open upload session, naming its repository, namespace
and owner (registry/upload_limits.py holds the rules over them).

Plain functions over a `Connection`; the caller holds the transaction.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection

from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import upload_sessions

# On every upload start (registry/uploads.py): built once.
COUNT_OWNED = Prepared(
    select(func.count())
    .select_from(upload_sessions)
    .where(upload_sessions.c.owner == bindparam("owner_name"))
)


def count_owned(connection: Connection, owner: str) -> int:
    """How many sessions `owner` (a user's name, or `address:<ip>`) holds open."""
    return int(COUNT_OWNED.scalar(connection, {"owner_name": owner}) or 0)


def insert_session(
    connection: Connection,
    session: str,
    repository: str,
    namespace: str,
    owner: str | None,
    created_at: float,
) -> None:
    connection.execute(
        insert(upload_sessions).values(
            session=session,
            repository=repository,
            namespace=namespace,
            owner=owner,
            created_at=created_at,
        )
    )


def insert_sessions(
    connection: Connection, rows: list[tuple[str, str, str, str | None, float]]
) -> None:
    """Several sessions at once: (session, repository, namespace, owner, created_at)."""
    if rows:
        connection.execute(
            insert(upload_sessions),
            [
                {
                    "session": session,
                    "repository": repository,
                    "namespace": namespace,
                    "owner": owner,
                    "created_at": created_at,
                }
                for session, repository, namespace, owner, created_at in rows
            ],
        )


def delete_sessions(connection: Connection, sessions: list[str]) -> None:
    if sessions:
        connection.execute(delete(upload_sessions).where(upload_sessions.c.session.in_(sessions)))


def delete_repository_sessions(connection: Connection, repository: str) -> None:
    connection.execute(delete(upload_sessions).where(upload_sessions.c.repository == repository))


def older_than(connection: Connection, created_before: float) -> list[str]:
    """The sessions opened before `created_before` (seconds since the epoch)."""
    query = select(upload_sessions.c.session).where(upload_sessions.c.created_at < created_before)
    return list(connection.scalars(query).all())


def of_namespace(connection: Connection, namespace: str) -> list[str]:
    """The namespace's open sessions."""
    query = select(upload_sessions.c.session).where(upload_sessions.c.namespace == namespace)
    return list(connection.scalars(query).all())
