"""SQL of the events outbox (`events`): appending the events of one change, reading them back.

Plain functions over a `Connection`; the caller (events/, through the registry's use cases)
holds the transaction, so the events commit or roll back with the change they report.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, insert, select
from sqlalchemy.engine import Connection

from cangku.metadata.schema import events

_INSERT = insert(events)


def insert_events(connection: Connection, rows: list[dict[str, object]]) -> None:
    """Append these outbox rows (event_id, type, repository, created_at, payload), in order,
    in one statement (none: no statement)."""
    if rows:
        connection.execute(_INSERT, rows)


def after(connection: Connection, last_id: int, limit: int) -> list[Row[Any]]:
    """Up to `limit` outbox rows with an id above `last_id`, oldest first."""
    query = select(events).where(events.c.id > last_id).order_by(events.c.id).limit(limit)
    return list(connection.execute(query))
