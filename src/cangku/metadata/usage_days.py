"""SQL of usage over time (`usage_days`): one row per UTC day and namespace."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from cangku.metadata.schema import manifests, repositories, usage_days

DAY_SECONDS = 86400


def day_of(seconds: float) -> str:
    """The UTC day of a Unix time, "YYYY-MM-DD"."""
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def day_start(seconds: float) -> float:
    return seconds - seconds % DAY_SECONDS


@dataclass(frozen=True, slots=True)
class DayRow:
    day: str
    namespace: str
    stored_bytes: int | None
    pushes: int
    pulls: int


def _upsert(connection: Connection, day: str, namespace: str, **values: object) -> None:
    """Set the given columns of a day's row, creating it (zero counts) if missing."""
    where = (usage_days.c.day == day) & (usage_days.c.namespace == namespace)
    if connection.execute(update(usage_days).where(where).values(**values)).rowcount:
        return
    row: dict[str, object] = {"stored_bytes": None, "pushes": 0, "pulls": 0}
    connection.execute(insert(usage_days).values(day=day, namespace=namespace, **(row | values)))


def add_pulls(connection: Connection, day: str, pulls_by_namespace: dict[str, int]) -> None:
    for namespace, pulls in pulls_by_namespace.items():
        where = (usage_days.c.day == day) & (usage_days.c.namespace == namespace)
        added = connection.execute(
            update(usage_days).where(where).values(pulls=usage_days.c.pulls + pulls)
        ).rowcount
        if not added:
            _upsert(connection, day, namespace, pulls=pulls)


def record_snapshot(connection: Connection, now: float, stored: dict[str, int]) -> None:
    """Today's bytes per namespace, and the pushes of today and yesterday counted again
    from the manifests' push times (so yesterday's last hours are not lost)."""
    today = day_of(now)
    for namespace, stored_bytes in stored.items():
        _upsert(connection, today, namespace, stored_bytes=stored_bytes)
    since = day_start(now) - DAY_SECONDS
    pushes: dict[tuple[str, str], int] = defaultdict(int)
    rows = connection.execute(
        select(repositories.c.name, manifests.c.created_at)
        .join(repositories, repositories.c.id == manifests.c.repository_id)
        .where(manifests.c.created_at >= since)
    )
    for row in rows:
        pushes[(day_of(row.created_at), row.name.split("/", 1)[0])] += 1
    for (day, namespace), count in pushes.items():
        _upsert(connection, day, namespace, pushes=count)


def history(connection: Connection, since_day: str, namespace: str | None) -> list[DayRow]:
    query = select(usage_days).where(usage_days.c.day >= since_day)
    if namespace is not None:
        query = query.where(usage_days.c.namespace == namespace)
    rows = connection.execute(query.order_by(usage_days.c.day, usage_days.c.namespace))
    return [DayRow(r.day, r.namespace, r.stored_bytes, r.pushes, r.pulls) for r in rows]
