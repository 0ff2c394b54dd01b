"""Copying one registry's metadata rows into another database (`cangku migrate-storage`).

The copy is a synchronisation, not an append: afterwards every copied table of the target
holds exactly the source's rows, whatever the target held before (an interrupted run, or
content the operator chose to overwrite). It is memory-bounded: rows are compared in batches
by primary key, never by sort order, so SQLite's and PostgreSQL's different collations do
not matter. Values go through the schema's column types both ways (`schema.py`), so
booleans, floats and bytes arrive as they left.

Not copied: `upload_sessions` (their bytes stay in the source's store; clients restart an
interrupted upload) and `storage_migrations` (this command's own bookkeeping).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Table, delete, func, insert, select, text, tuple_, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ColumnElement

from cangku.metadata import schema

BATCH = 500
NOT_COPIED = frozenset({"upload_sessions", "storage_migrations"})
# Parents before children (foreign keys): inserts in this order, deletes in the reverse.
COPIED_TABLES: tuple[Table, ...] = tuple(
    table for table in schema.metadata.sorted_tables if table.name not in NOT_COPIED
)


@dataclass
class TableChanges:
    """What synchronising one table did to the target, in rows."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.deleted


# -- the command's own bookkeeping -----------------------------------------------------------


def migration_sources(connection: Connection) -> dict[str, float | None]:
    """Every source migrated into this database: its description -> finished_at (Unix
    seconds), None while a run is unfinished."""
    table = schema.storage_migrations
    rows = connection.execute(select(table.c.source, table.c.finished_at))
    return {row.source: row.finished_at for row in rows}


def start_migration(connection: Connection, source: str, now: float) -> None:
    """Record that a run from `source` started (again): unfinished until `finish_migration`."""
    table = schema.storage_migrations
    changed = connection.execute(
        update(table).where(table.c.source == source).values(started_at=now, finished_at=None)
    ).rowcount
    if not changed:
        connection.execute(insert(table).values(source=source, started_at=now, finished_at=None))


def finish_migration(connection: Connection, source: str, now: float) -> None:
    table = schema.storage_migrations
    connection.execute(update(table).where(table.c.source == source).values(finished_at=now))


def holds_rows(connection: Connection) -> bool:
    """Whether any copied table has a row (an empty registry has none: accounts, too, are
    created only when the server first starts)."""
    return any(
        connection.execute(select(table).limit(1)).first() is not None for table in COPIED_TABLES
    )


# -- blobs to copy ---------------------------------------------------------------------------


def blob_totals(connection: Connection) -> tuple[int, int]:
    """(number of recorded blobs, their bytes)."""
    table = schema.blobs
    row = connection.execute(select(func.count(), func.coalesce(func.sum(table.c.size), 0))).one()
    return int(row[0]), int(row[1])


def recorded_blobs_after(connection: Connection, after: str, limit: int) -> list[tuple[str, int]]:
    """Recorded blobs as (digest, size in bytes), the next `limit` after `after` in the
    database's own order of digests (keyset paging: one short read per page)."""
    table = schema.blobs
    rows = connection.execute(
        select(table.c.digest, table.c.size)
        .where(table.c.digest > after)
        .order_by(table.c.digest)
        .limit(limit)
    )
    return [(row.digest, int(row.size)) for row in rows]


# -- rows ------------------------------------------------------------------------------------


def synchronise(source: Connection, target: Connection) -> dict[str, TableChanges]:
    """Make every copied table of `target` hold exactly the rows of `source`.

    Run it inside one transaction on `target` (all of it or none) and one read transaction
    on `source` (one snapshot). Returns the changes per table name. Afterwards PostgreSQL's
    id sequences continue after the copied ids.
    """
    changes = {table.name: TableChanges() for table in COPIED_TABLES}
    # Children first, so no delete trips a foreign key (or cascades into rows kept).
    for table in reversed(COPIED_TABLES):
        changes[table.name].deleted = _delete_missing(source, target, table)
    for table in COPIED_TABLES:
        inserted, updated = _insert_or_update(source, target, table)
        changes[table.name].inserted, changes[table.name].updated = inserted, updated
    if target.dialect.name == "postgresql":
        _continue_sequences(target)
    return changes


def _key_columns(table: Table) -> list[Column[Any]]:
    return list(table.primary_key.columns)


def _key_in(table: Table, keys: Sequence[tuple[Any, ...]]) -> ColumnElement[bool]:
    columns = _key_columns(table)
    if len(columns) == 1:
        return columns[0].in_([key[0] for key in keys])
    return tuple_(*columns).in_(keys)


def _batches(connection: Connection, statement: Any) -> Iterator[Sequence[Any]]:
    # On the statement: a Connection's execution_options would change the connection itself.
    result = connection.execute(statement.execution_options(stream_results=True, yield_per=BATCH))
    yield from result.partitions()


def _delete_missing(source: Connection, target: Connection, table: Table) -> int:
    columns = _key_columns(table)
    missing: list[tuple[Any, ...]] = []
    for batch in _batches(target, select(*columns)):
        keys = [tuple(row) for row in batch]
        present = {
            tuple(row) for row in source.execute(select(*columns).where(_key_in(table, keys)))
        }
        missing.extend(key for key in keys if key not in present)
    # Deleted after the target's cursor is closed, in batches.
    for start in range(0, len(missing), BATCH):
        target.execute(delete(table).where(_key_in(table, missing[start : start + BATCH])))
    return len(missing)


def _normal(value: Any) -> Any:
    # psycopg answers memoryview for bytea; compare (and write) bytes.
    return bytes(value) if isinstance(value, memoryview) else value


def _insert_or_update(source: Connection, target: Connection, table: Table) -> tuple[int, int]:
    key_names = [column.name for column in _key_columns(table)]
    inserted = updated = 0
    for batch in _batches(source, select(table)):
        rows = [{name: _normal(value) for name, value in row._mapping.items()} for row in batch]
        keys = [tuple(row[name] for name in key_names) for row in rows]
        existing = {
            tuple(_normal(value) for value in (row._mapping[name] for name in key_names)): {
                name: _normal(value) for name, value in row._mapping.items()
            }
            for row in target.execute(select(table).where(_key_in(table, keys)))
        }
        new = [row for key, row in zip(keys, rows, strict=True) if key not in existing]
        if new:
            target.execute(insert(table), new)
            inserted += len(new)
        for key, row in zip(keys, rows, strict=True):
            if key in existing and existing[key] != row:
                condition = [
                    table.c[name] == value for name, value in zip(key_names, key, strict=True)
                ]
                values = {name: value for name, value in row.items() if name not in key_names}
                target.execute(update(table).where(*condition).values(**values))
                updated += 1
    return inserted, updated


def _continue_sequences(target: Connection) -> None:
    # Explicit ids do not advance a serial column's sequence; without this, the next row
    # the server inserts would collide with a copied one.
    for table in COPIED_TABLES:
        for column in _key_columns(table):
            if column.autoincrement is True:
                target.execute(
                    text(
                        "SELECT setval(pg_get_serial_sequence(:table, :column), "
                        f'COALESCE(MAX("{column.name}"), 1), MAX("{column.name}") IS NOT NULL) '
                        f'FROM "{table.name}"'
                    ),
                    {"table": table.name, "column": column.name},
                )


def synchronise_databases(source: Engine, target: Engine) -> dict[str, TableChanges]:
    """`synchronise`, in one read transaction on `source` (one snapshot: REPEATABLE READ on
    PostgreSQL; SQLite's WAL gives one) and one write transaction on `target`. Blocking."""
    with source.connect() as reading:
        if reading.dialect.name == "postgresql":
            reading = reading.execution_options(isolation_level="REPEATABLE READ")
        with reading.begin(), target.connect() as writing:
            # SQLite: take the write lock at BEGIN, as the store's own writes do.
            writing.execution_options(sqlite_immediate=True)
            with writing.begin():
                return synchronise(reading, writing)
