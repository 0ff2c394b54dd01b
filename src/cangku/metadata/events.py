"""SQL of the events outbox (`events`): appending the events of one change, reading them back.

Plain functions over a `Connection`; the caller (events/, through the registry's use cases)
holds the transaction, so the events commit or roll back with the change they report.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import event_deliveries, events

_INSERT = insert(events)
_INSERT_PREPARED = Prepared(_INSERT)
# The event worker's fan-out runs these after every push that recorded events.
_NOT_FANNED_OUT = Prepared(
    select(events.c.id, events.c.type, events.c.repository, events.c.created_at, events.c.payload)
    .where(events.c.fanned_out.is_(None))
    .order_by(events.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# The event worker polls with these twice a second, busy or idle (events/delivery.py).
_AN_EVENT_NOT_FANNED_OUT = Prepared(
    select(events.c.id).where(events.c.fanned_out.is_(None)).limit(1)
)
_A_DELIVERY_DUE = Prepared(
    select(event_deliveries.c.id)
    .where(
        event_deliveries.c.state == "pending",
        event_deliveries.c.next_attempt_at <= bindparam("now"),
    )
    .limit(1)
)
_MARK_FANNED_OUT = Prepared(
    update(events)
    .where(events.c.id.in_(bindparam("event_ids", expanding=True)))
    .values(fanned_out=True)
)


def insert_events(connection: Connection, rows: list[dict[str, object]]) -> None:
    """Append these outbox rows (event_id, type, repository, created_at, payload), in order,
    in one `executemany` (one round trip; none: no statement)."""
    if rows:
        _INSERT_PREPARED.run_many(connection, rows)


def after(connection: Connection, last_id: int, limit: int) -> list[Row[Any]]:
    """Up to `limit` outbox rows with an id above `last_id`, oldest first."""
    query = select(events).where(events.c.id > last_id).order_by(events.c.id).limit(limit)
    return list(connection.execute(query))


def not_fanned_out(connection: Connection, limit: int) -> list[Any]:
    """Up to `limit` committed events without their deliveries yet, oldest first, locked to
    the end of the transaction; rows another replica holds are skipped (PostgreSQL
    `FOR UPDATE SKIP LOCKED`), so two replicas never add the same deliveries."""
    return _NOT_FANNED_OUT.rows(connection, {"limit": limit})


def mark_fanned_out(connection: Connection, event_ids: list[int]) -> None:
    _MARK_FANNED_OUT.run(connection, {"event_ids": event_ids})


def insert_deliveries(connection: Connection, rows: list[dict[str, object]]) -> None:
    """Add `event_deliveries` rows (event_id, endpoint, state, attempts, created_at,
    next_attempt_at), in one statement (none: no statement)."""
    if rows:
        connection.execute(insert(event_deliveries), rows)


def claim_due(connection: Connection, now: float, lease: float, limit: int) -> list[Row[Any]]:
    """Up to `limit` pending deliveries due at `now`, oldest first, with their event: each
    is pushed `lease` seconds ahead and its attempt counted, so no other worker takes it
    while this one sends, and a worker that dies mid-send leaves it due again later. On
    PostgreSQL rows another replica holds are skipped (`FOR UPDATE SKIP LOCKED`)."""
    query = (
        select(
            event_deliveries.c.id,
            event_deliveries.c.endpoint,
            event_deliveries.c.attempts,
            events.c.event_id,
            events.c.created_at,
            events.c.payload,
        )
        .join(events, events.c.id == event_deliveries.c.event_id)
        .where(event_deliveries.c.state == "pending", event_deliveries.c.next_attempt_at <= now)
        .order_by(event_deliveries.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=event_deliveries)
    )
    rows: list[Row[Any]] = list(connection.execute(query))
    if rows:
        connection.execute(
            update(event_deliveries)
            .where(event_deliveries.c.id.in_([row.id for row in rows]))
            .values(
                next_attempt_at=now + lease,
                attempts=event_deliveries.c.attempts + 1,
            )
        )
    return rows


def finish_attempt(connection: Connection, delivery_id: int, values: dict[str, object]) -> None:
    """Record an attempt's outcome: state, next_attempt_at, finished_at, last_status,
    last_error, latency."""
    connection.execute(
        update(event_deliveries).where(event_deliveries.c.id == delivery_id).values(**values)
    )


def history(connection: Connection, endpoint: str, limit: int) -> list[Row[Any]]:
    """The last `limit` deliveries to `endpoint`, newest first, with their event's id and type."""
    query = (
        select(
            event_deliveries.c.id,
            event_deliveries.c.endpoint,
            event_deliveries.c.state,
            event_deliveries.c.attempts,
            event_deliveries.c.created_at,
            event_deliveries.c.finished_at,
            event_deliveries.c.last_status,
            event_deliveries.c.last_error,
            event_deliveries.c.latency,
            events.c.event_id,
            events.c.type,
        )
        .join(events, events.c.id == event_deliveries.c.event_id)
        .where(event_deliveries.c.endpoint == endpoint)
        .order_by(event_deliveries.c.id.desc())
        .limit(limit)
    )
    return list(connection.execute(query))


def redeliver(connection: Connection, delivery_id: int, now: float) -> bool:
    """Make delivery `delivery_id` due again now (pending, attempts kept); False when there
    is no such delivery."""
    result = connection.execute(
        update(event_deliveries)
        .where(event_deliveries.c.id == delivery_id)
        .values(state="pending", next_attempt_at=now, finished_at=None)
    )
    return result.rowcount > 0


def insert_event(connection: Connection, row: dict[str, object]) -> int:
    """Append one outbox row; returns its id (a test event's delivery refers to it)."""
    return int(connection.execute(_INSERT.values(**row).returning(events.c.id)).scalar_one())


def insert_delivery(connection: Connection, row: dict[str, object]) -> int:
    """Add one `event_deliveries` row; returns its id."""
    result = connection.execute(
        insert(event_deliveries).values(**row).returning(event_deliveries.c.id)
    )
    return int(result.scalar_one())


def delivery_endpoint(connection: Connection, delivery_id: int) -> str | None:
    """The endpoint key of delivery `delivery_id` (None: no such delivery)."""
    query = select(event_deliveries.c.endpoint).where(event_deliveries.c.id == delivery_id)
    found: str | None = connection.execute(query).scalar()
    return found


def backlog(connection: Connection) -> int:
    """Deliveries still pending plus events not yet handed out (both by index)."""
    pending = select(func.count()).select_from(event_deliveries)
    pending = pending.where(event_deliveries.c.state == "pending")
    waiting = select(func.count()).select_from(events).where(events.c.fanned_out.is_(None))
    return int(connection.execute(pending).scalar_one()) + int(
        connection.execute(waiting).scalar_one()
    )


def prune(connection: Connection, before: float, limit: int) -> int:
    """Delete up to `limit` of the oldest events recorded before `before` that are handed out
    and have no pending delivery, with their deliveries; returns how many events went.
    Walks `ix_events_created` from the oldest, so a call costs the rows it removes, not the
    size of the outbox."""
    pending = (
        select(event_deliveries.c.id)
        .where(event_deliveries.c.event_id == events.c.id, event_deliveries.c.state == "pending")
        .exists()
    )
    query = (
        select(events.c.id)
        .where(events.c.created_at < before, events.c.fanned_out.is_not(None), ~pending)
        .order_by(events.c.created_at)
        .limit(limit)
    )
    ids = list(connection.execute(query).scalars())
    if ids:
        connection.execute(delete(event_deliveries).where(event_deliveries.c.event_id.in_(ids)))
        connection.execute(delete(events).where(events.c.id.in_(ids)))
    return len(ids)


def count(connection: Connection) -> tuple[int, int]:
    """(events, deliveries) in the outbox."""
    return (
        int(connection.execute(select(func.count()).select_from(events)).scalar_one()),
        int(connection.execute(select(func.count()).select_from(event_deliveries)).scalar_one()),
    )


def work_waiting(connection: Connection, now: float) -> tuple[bool, bool]:
    """(an event not handed out yet, a delivery due at `now`): two index lookups, so an
    idle worker polls with reads and takes no write transaction."""
    return (
        _AN_EVENT_NOT_FANNED_OUT.first(connection) is not None,
        _A_DELIVERY_DUE.first(connection, {"now": now}) is not None,
    )
