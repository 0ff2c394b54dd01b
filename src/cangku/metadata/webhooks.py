"""SQL of the `webhooks` table: endpoints of a namespace or a repository (issue 16).

Plain functions over a `Connection`; events/webhooks.py checks names, URLs and rights first.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, delete, insert, select
from sqlalchemy.engine import Connection

from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import event_deliveries, webhooks


def insert_webhook(connection: Connection, values: dict[str, object]) -> int:
    """Add one endpoint (namespace, repository or NULL, url, secret, types and tags as JSON,
    format, created_by, created_at); returns its id."""
    result = connection.execute(insert(webhooks).values(**values).returning(webhooks.c.id))
    return int(result.scalar_one())


def in_scope(connection: Connection, namespace: str, repository: str | None) -> list[Row[Any]]:
    """The endpoints of a namespace (`repository` None: only the namespace-wide ones) or of
    one repository, oldest first."""
    query = select(webhooks).where(webhooks.c.namespace == namespace)
    if repository is None:
        query = query.where(webhooks.c.repository.is_(None))
    else:
        query = query.where(webhooks.c.repository == repository)
    return list(connection.execute(query.order_by(webhooks.c.id)))


# After every push that recorded events (the event worker's fan-out): built once.
_OF_NAMESPACES = Prepared(
    select(webhooks)
    .where(webhooks.c.namespace.in_(bindparam("namespaces", expanding=True)))
    .order_by(webhooks.c.id)
)


def of_namespaces(connection: Connection, namespaces: list[str]) -> list[Any]:
    """Every endpoint (namespace-wide and per repository) of these namespaces."""
    if not namespaces:
        return []
    return _OF_NAMESPACES.rows(connection, {"namespaces": namespaces})


def by_ids(connection: Connection, ids: list[int]) -> list[Row[Any]]:
    if not ids:
        return []
    return list(connection.execute(select(webhooks).where(webhooks.c.id.in_(ids))))


def one(connection: Connection, webhook_id: int) -> Row[Any] | None:
    return connection.execute(select(webhooks).where(webhooks.c.id == webhook_id)).first()


def delete_webhook(connection: Connection, webhook_id: int, endpoint_key: str) -> bool:
    """Remove an endpoint and its deliveries (`endpoint_key` names them); False if none."""
    connection.execute(delete(event_deliveries).where(event_deliveries.c.endpoint == endpoint_key))
    return connection.execute(delete(webhooks).where(webhooks.c.id == webhook_id)).rowcount > 0
