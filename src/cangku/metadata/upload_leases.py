"""Rows of `upload_leases`: which request may write to an upload session right now
(registry/upload_leases.py holds the rules).

Plain functions over a `Connection`; the caller holds the transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cangku.metadata.schema import upload_leases


def _take(dialect_insert: Any) -> Any:
    # One statement decides: a new row, or an expired lease taken over; a live lease of
    # another holder stays as it is (no row changed). Two replicas taking at once: the
    # second waits for the first's row (the primary key) and then sees it live.
    statement = dialect_insert(upload_leases).values(
        session=bindparam("b_session"),
        holder=bindparam("b_holder"),
        expires_at=bindparam("b_expires_at"),
    )
    # RETURNING, not rowcount: a PostgreSQL driver may not report one for an upsert.
    return statement.on_conflict_do_update(
        index_elements=[upload_leases.c.session],
        set_={
            "holder": statement.excluded.holder,
            "expires_at": statement.excluded.expires_at,
        },
        where=upload_leases.c.expires_at < bindparam("b_now"),
    ).returning(upload_leases.c.holder)


# INSERT … ON CONFLICT DO UPDATE … WHERE (SQLite 3.24+, PostgreSQL 9.5+), by dialect name.
_TAKE = {"sqlite": _take(sqlite.insert), "postgresql": _take(postgresql.insert)}
_RENEW = (
    update(upload_leases)
    .where(
        upload_leases.c.session == bindparam("b_session"),
        upload_leases.c.holder == bindparam("b_holder"),
    )
    .values(expires_at=bindparam("b_expires_at"))
)
_RELEASE = delete(upload_leases).where(
    upload_leases.c.session == bindparam("b_session"),
    upload_leases.c.holder == bindparam("b_holder"),
)


def take(connection: Connection, session: str, holder: str, now: float, until: float) -> bool:
    """Lease `session` to `holder` until `until` (seconds since the epoch) unless another
    holder's lease is still live at `now`; True when taken."""
    result = connection.execute(
        _TAKE[connection.dialect.name],
        {"b_session": session, "b_holder": holder, "b_expires_at": until, "b_now": now},
    )
    return result.first() is not None


def renew(connection: Connection, session: str, holder: str, until: float) -> bool:
    """Extend `holder`'s lease to `until`; False when it is no longer `holder`'s."""
    result = connection.execute(
        _RENEW, {"b_session": session, "b_holder": holder, "b_expires_at": until}
    )
    return result.rowcount == 1


def release(connection: Connection, session: str, holder: str) -> None:
    connection.execute(_RELEASE, {"b_session": session, "b_holder": holder})


def delete_expired(connection: Connection, before: float) -> int:
    """Leases of requests that died (expired before `before`); how many were deleted."""
    result = connection.execute(delete(upload_leases).where(upload_leases.c.expires_at < before))
    return result.rowcount
