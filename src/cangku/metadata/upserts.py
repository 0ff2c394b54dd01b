"""One statement that inserts a row or updates the one already there: INSERT … ON CONFLICT
DO UPDATE (SQLite 3.24+, PostgreSQL 9.5+).

"UPDATE, and INSERT when no row changed" is two statements: on PostgreSQL two replicas
setting the same thing at once both find no row and both insert, and the second ends in a
unique violation (a 500) instead of the value it set. The upsert waits for the first's row
and updates it. For settings written by people (quotas, policies, descriptions), not hot
paths: the statement is built per call.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def upsert(
    connection: Connection, table: Table, keys: dict[str, Any], values: dict[str, Any]
) -> None:
    """Insert `keys` + `values` into `table`, or set `values` on the row with `keys` (its
    primary key or another unique index)."""
    statement: Any = _INSERTS[connection.dialect.name](table).values(**keys, **values)
    if values:
        statement = statement.on_conflict_do_update(index_elements=list(keys), set_=values)
    else:
        statement = statement.on_conflict_do_nothing(index_elements=list(keys))
    connection.execute(statement)
