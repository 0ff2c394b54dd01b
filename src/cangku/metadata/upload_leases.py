"""Rows of `upload_leases`: which request may write to an upload session right now
(registry/upload_leases.py holds the rules).

Plain functions over a `Connection`; the caller holds the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Float, bindparam, delete, func, literal_column, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cangku.metadata.schema import upload_leases


def _database_now(dialect: str) -> ColumnElement[float]:
    """The database's clock in seconds since the epoch: every replica's leases expire by one
    clock, whatever the skew between the replicas' own (PostgreSQL `clock_timestamp()`,
    SQLite `julianday('now')`, both UTC)."""
    if dialect == "postgresql":
        return func.extract("epoch", func.clock_timestamp()).cast(Float)
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)


def _take_for(dialect_insert: Any, dialect: str) -> Any:
    # One statement decides: a new row, or an expired lease taken over; a live lease of
    # another holder stays as it is (no row changed). Two replicas taking at once: the
    # second waits for the first's row (the primary key) and then sees it live. The expiry
    # and "now" are the database's clock.
    now = _database_now(dialect)
    statement = dialect_insert(upload_leases).values(
        session=bindparam("b_session"),
        holder=bindparam("b_holder"),
        expires_at=now + bindparam("b_seconds", type_=Float),
    )
    # RETURNING, not rowcount: a PostgreSQL driver may not report one for an upsert.
    return statement.on_conflict_do_update(
        index_elements=[upload_leases.c.session],
        set_={
            "holder": statement.excluded.holder,
            "expires_at": statement.excluded.expires_at,
        },
        where=upload_leases.c.expires_at < now,
    ).returning(upload_leases.c.holder)


# INSERT … ON CONFLICT DO UPDATE … WHERE (SQLite 3.24+, PostgreSQL 9.5+), by dialect name.
_TAKE_FOR = {
    "sqlite": _take_for(sqlite.insert, "sqlite"),
    "postgresql": _take_for(postgresql.insert, "postgresql"),
}
_RENEW_FOR = {
    dialect: update(upload_leases)
    .where(
        upload_leases.c.session == bindparam("b_session"),
        upload_leases.c.holder == bindparam("b_holder"),
    )
    .values(expires_at=_database_now(dialect) + bindparam("b_seconds", type_=Float))
    for dialect in ("sqlite", "postgresql")
}
_RELEASE = delete(upload_leases).where(
    upload_leases.c.session == bindparam("b_session"),
    upload_leases.c.holder == bindparam("b_holder"),
)


def take_for(connection: Connection, session: str, holder: str, seconds: float) -> bool:
    """Lease `session` to `holder` for `seconds` from now by the database's clock unless
    another holder's lease is still live by that clock; True when taken."""
    result = connection.execute(
        _TAKE_FOR[connection.dialect.name],
        {"b_session": session, "b_holder": holder, "b_seconds": seconds},
    )
    return result.first() is not None


def renew_for(connection: Connection, session: str, holder: str, seconds: float) -> bool:
    """Extend `holder`'s lease to `seconds` from now by the database's clock; False when it
    is no longer `holder`'s."""
    result = connection.execute(
        _RENEW_FOR[connection.dialect.name],
        {"b_session": session, "b_holder": holder, "b_seconds": seconds},
    )
    return result.rowcount == 1


def release(connection: Connection, session: str, holder: str) -> None:
    connection.execute(_RELEASE, {"b_session": session, "b_holder": holder})


def delete_expired(connection: Connection, before: float) -> int:
    """Leases of requests that died (expired before `before`); how many were deleted."""
    result = connection.execute(delete(upload_leases).where(upload_leases.c.expires_at < before))
    return result.rowcount
