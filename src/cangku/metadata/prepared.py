"""Hot statements compiled once per database and run on the driver's cursor.

SQLAlchemy's `Connection.execute` costs ~7-15 µs per statement around ~3 µs of SQLite work
(cache-key lookup, execution context, result metadata, Row objects): a manifest PUT runs ~10
statements, an upload PUT ~8 (docs/performance.md, "Per-request CPU"). `Prepared` keeps the
statement a SQLAlchemy Core construct, written once at module level like every other, and
runs it on the DB-API connection under the SQLAlchemy `Connection` it is given:

- compiled once per dialect, and the SQL text with its parameter order once per *shape* (the
  lengths of its expanding `IN` lists), by SQLAlchemy itself (`construct_expanded_state`);
- parameters bound in the compiled order, each through the bind processor SQLAlchemy would
  apply (e.g. Boolean as 0/1 on SQLite), literal values of the statement included;
- inside the connection's transaction (it is begun first, as SQLAlchemy's autobegin would,
  so the "begin" hook of metadata/store.py still sends BEGIN IMMEDIATE on SQLite writes;
  SQLite's autocommit reads, `sqlite_autocommit`, have no transaction to begin);
- rows as named tuples (`row.name`, `row[0]`, equal to plain tuples), each column through the
  result processor of its type;
- a driver error raised as SQLAlchemy's (`IntegrityError`, …), the connection invalidated on
  a disconnect, exactly as `execute` does.

When anything listens to the engine's execution events (statement counters in the tests, an
instrumentation library), the statement goes through `Connection.execute` instead, so that
they see every statement; the results have the same shape either way.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

Parameters = Mapping[str, Any]
# One bound value: (parameter key or None for a literal of the statement, index in an
# expanding list or None, the literal value, the bind processor or None).
_Slot = tuple[str | None, int | None, Any, Callable[[Any], Any] | None]
_NO_PARAMETERS: Parameters = {}
# The plans kept per compiled statement: one per shape (lengths of its `IN` lists) up to
# MAX_PLANS, for lists of up to MAX_PLANNED_VALUES values in all. Longer or further shapes
# are planned on each call, as SQLAlchemy does for every call: the lengths come from request
# bodies (a manifest's descriptors), and a cache per length would grow with each new one.
MAX_PLANS = 128
MAX_PLANNED_VALUES = 256


class _Probe:
    """Stands for a caller's value while SQLAlchemy expands a statement, to learn where each
    value goes (literal values of the statement come back as themselves)."""

    __slots__ = ("index", "key")

    def __init__(self, key: str, index: int | None) -> None:
        self.key = key
        self.index = index


class _Compiled:
    __slots__ = (
        "columns",
        "compiled",
        "dialect",
        "expanding",
        "make_row",
        "plans",
        "positional",
        "results",
    )

    def __init__(self, statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> None:
        # An INSERT/UPDATE is compiled for the columns given, as `Connection.execute` does.
        compiled = cast(ClauseElement, statement).compile(
            dialect=dialect, column_keys=list(keys) if keys else None
        )
        assert isinstance(compiled, SQLCompiler)
        if compiled.literal_execute_params or compiled.post_compile_params - {
            bind for bind in compiled.binds.values() if bind.expanding
        }:
            raise ValueError("Prepared: statements with literal-rendered parameters are not run")
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise ValueError("Prepared: statements with Python-side column defaults are not run")
        self.compiled = compiled
        self.positional = compiled.positional
        # The caller's keys whose values are lists expanded into `IN (?, ?, …)`.
        self.expanding = tuple(key for key, bind in compiled.binds.items() if bind.expanding)
        self.dialect = dialect
        self.columns = tuple(getattr(statement, "exported_columns", ()))
        # Rows answer to their columns' keys as SQLAlchemy's Row does (`row.name`).
        fields = [column.key for column in self.columns]
        row_type: Any = namedtuple("Row", fields, rename=True)  # type: ignore[misc]
        self.make_row: Callable[[Sequence[Any]], tuple[Any, ...]] = row_type._make
        # Found on the first execution: some drivers' processors depend on the column's type
        # code in `cursor.description` (psycopg: float or numeric).
        self.results: tuple[Callable[[Any], Any] | None, ...] | None = None
        self.plans: dict[tuple[int, ...], tuple[str, tuple[_Slot, ...], tuple[str, ...]]] = {}

    def plan(
        self, parameters: Parameters, shape: tuple[int, ...]
    ) -> tuple[str, tuple[_Slot, ...], tuple[str, ...]]:
        """The SQL text, the slots in parameter order, and (named paramstyles) their names."""
        probes: dict[str, Any] = {}
        for key, bind in self.compiled.binds.items():
            if key in self.expanding:
                probes[key] = [_Probe(key, index) for index in range(len(parameters[key]))]
            elif key in parameters:
                probes[key] = _Probe(key, None)
            elif not bind.unique:
                # A named parameter left out would be planned as its default for good, and a
                # later call's value for it ignored.
                raise ValueError(f"Prepared: no value for the parameter {key!r}")
        state = self.compiled.construct_expanded_state(probes)
        ordered = tuple(state.positiontup or state.parameters)
        slots: list[_Slot] = []
        for name in ordered:
            value = state.parameters[name]
            processor = state.processors.get(name)
            if isinstance(value, _Probe):
                slots.append((value.key, value.index, None, processor))
            else:
                slots.append((None, None, value, processor))
        # Positional paramstyles (SQLite's `?`) take a tuple, named ones (psycopg's
        # `%(name)s`) a dict: `names` is empty for the former.
        names = () if self.positional else ordered
        plan = (state.statement, tuple(slots), names)
        if sum(shape) <= MAX_PLANNED_VALUES and len(self.plans) < MAX_PLANS:
            self.plans[shape] = plan
        return plan

    @staticmethod
    def bind(
        slots: tuple[_Slot, ...], names: tuple[str, ...], parameters: Parameters
    ) -> tuple[Any, ...] | dict[str, Any]:
        """The driver's parameters: a tuple in order, or a dict for named paramstyles."""
        values = []
        for key, index, literal, processor in slots:
            if key is None:
                value = literal
            elif index is None:
                value = parameters[key]
            else:
                value = parameters[key][index]
            values.append(value if processor is None else processor(value))
        return dict(zip(names, values, strict=True)) if names else tuple(values)

    def result_processors(self, cursor: Any) -> tuple[Callable[[Any], Any] | None, ...]:
        """Each result column's processor (None: the driver's value as it is)."""
        described = cursor.description or ()
        self.results = tuple(
            column.type._cached_result_processor(self.dialect, description[1])
            for column, description in zip(self.columns, described, strict=False)
        )
        return self.results


class Prepared:
    """A SQLAlchemy Core statement run on the driver's cursor; see the module docstring.

    Parameters are a mapping of the statement's `bindparam` keys; an expanding bindparam's
    value is a sequence. Statements whose parameters SQLAlchemy renders as literals are
    refused (ValueError) on first use."""

    __slots__ = ("_by_dialect", "_dml", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._dml = bool(getattr(statement, "is_dml", False))
        self._by_dialect: dict[tuple[int, tuple[str, ...]], tuple[Dialect, _Compiled]] = {}

    def rows(self, connection: Connection, parameters: Parameters = _NO_PARAMETERS) -> list[Any]:
        """Every result row, as a named tuple."""
        return self._execute(connection, parameters, _all_rows)  # type: ignore[no-any-return]

    def first(self, connection: Connection, parameters: Parameters = _NO_PARAMETERS) -> Any:
        """The first result row as a named tuple, None when there is none."""
        return self._execute(connection, parameters, _first_row)

    def scalar(self, connection: Connection, parameters: Parameters = _NO_PARAMETERS) -> Any:
        """The first column of the first row, None when there is no row."""
        row = self._execute(connection, parameters, _first_row)
        return None if row is None else row[0]

    def scalars(self, connection: Connection, parameters: Parameters = _NO_PARAMETERS) -> list[Any]:
        """The first column of every row."""
        return [row[0] for row in self._execute(connection, parameters, _all_rows)]

    def run(self, connection: Connection, parameters: Parameters = _NO_PARAMETERS) -> int:
        """Execute an INSERT/UPDATE/DELETE without RETURNING: the number of rows matched."""
        return self._execute(connection, parameters, _row_count)  # type: ignore[no-any-return]

    def run_many(self, connection: Connection, rows: Sequence[Parameters]) -> None:
        """Execute an INSERT/UPDATE/DELETE once per parameter set (DB-API `executemany`);
        every set has the keys of the first. No rows: no statement."""
        if rows:
            self._execute(connection, rows[0], _row_count, rows)

    def _compiled(self, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
        found = self._by_dialect.get((id(dialect), keys))
        if found is not None and found[0] is dialect:
            return found[1]
        compiled = _Compiled(self.statement, dialect, keys)
        # Keyed by identity, the dialect held so that its id is not reused while keyed.
        self._by_dialect[(id(dialect), keys)] = (dialect, compiled)
        return compiled

    def _execute(
        self,
        connection: Connection,
        parameters: Parameters,
        fetch: Callable[[Any, _Compiled], Any],
        many: Sequence[Parameters] | None = None,
    ) -> Any:
        keys = tuple(sorted(parameters)) if self._dml else ()
        compiled = self._compiled(connection.dialect, keys)
        dispatch = connection.dispatch
        if (
            dispatch.before_execute
            or dispatch.before_cursor_execute
            or dispatch.after_cursor_execute
            or dispatch.after_execute
        ):
            return _through_sqlalchemy(connection, self, compiled, parameters, fetch, many)
        shape = tuple(len(parameters[key]) for key in compiled.expanding)
        sql, slots, names = compiled.plans.get(shape) or compiled.plan(parameters, shape)
        if many is None:
            bound: Any = compiled.bind(slots, names, parameters)
        else:
            bound = [compiled.bind(slots, names, row) for row in many]
        if not connection.in_transaction() and not connection.get_execution_options().get(
            "sqlite_autocommit"
        ):
            # SQLAlchemy's autobegin: the engine's "begin" hook runs (metadata/store.py). Not
            # on SQLite's autocommit reads, where that hook sends nothing and the transaction
            # object (~15 µs with its rollback) would only be bookkeeping.
            connection.begin()
        driver = connection.connection.driver_connection
        assert driver is not None
        cursor = driver.cursor()
        try:
            if many is None:
                cursor.execute(sql, bound)
            else:
                cursor.executemany(sql, bound)
            return fetch(cursor, compiled)
        except connection.dialect.loaded_dbapi.Error as error:
            # Translated (IntegrityError, …) and a lost connection invalidated, as `execute`.
            connection._handle_dbapi_exception(error, sql, bound, cursor, None)
        finally:
            cursor.close()


def _all_rows(cursor: Any, compiled: _Compiled) -> list[tuple[Any, ...]]:
    rows = cursor.fetchall()
    processors = compiled.results
    if processors is None:
        processors = compiled.result_processors(cursor)
    make_row = compiled.make_row
    if not any(processors):
        return [make_row(row) for row in rows]
    return [make_row(_processed(row, processors)) for row in rows]


def _first_row(cursor: Any, compiled: _Compiled) -> tuple[Any, ...] | None:
    row = cursor.fetchone()
    if row is None:
        return None
    processors = compiled.results
    if processors is None:
        processors = compiled.result_processors(cursor)
    if not any(processors):
        return compiled.make_row(row)
    return compiled.make_row(_processed(row, processors))


def _processed(
    row: Sequence[Any], processors: tuple[Callable[[Any], Any] | None, ...]
) -> list[Any]:
    return [
        value if processor is None else processor(value)
        for value, processor in zip(row, processors, strict=True)
    ]


def _row_count(cursor: Any, _compiled: _Compiled) -> int:
    return int(cursor.rowcount)


def _through_sqlalchemy(
    connection: Connection,
    prepared: Prepared,
    compiled: _Compiled,
    parameters: Parameters,
    fetch: Callable[[Any, _Compiled], Any],
    many: Sequence[Parameters] | None,
) -> Any:
    """The same statement through `Connection.execute`, results in the same shapes."""
    if many is not None:
        connection.execute(prepared.statement, [dict(row) for row in many])
        return None
    result = connection.execute(prepared.statement, dict(parameters))
    if fetch is _row_count:
        return result.rowcount
    if fetch is _first_row:
        row = result.first()
        return None if row is None else compiled.make_row(row)
    return [compiled.make_row(row) for row in result.all()]
