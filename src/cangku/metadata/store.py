"""Connections and transactions on the metadata database.

Each use case hands the store one function that does all of its SQL on a connection, and
the store runs it as one unit: one thread hop per transaction instead of one per statement
(an async driver pays a hop for every execute and fetch, which dominated manifest GETs).

- SQLite reads run inline on the event loop: they are a few microseconds of page-cache
  work, cheaper than any hop, and in WAL mode they never wait for a writer. They use one
  connection kept open for the event loop's thread: checking a connection out of the pool
  and back in costs ~30 µs, more than a typical read.
- SQLite writes run in one writer thread on one connection kept open for it (SQLite has a
  single writer anyway), and start with BEGIN IMMEDIATE, so a second process (the `cangku`
  CLI while the server runs) waits on the busy timeout instead of failing half-way through.
- Other databases (PostgreSQL) run reads and writes in worker threads, write transactions
  concurrently (READ COMMITTED) across threads and processes: no lock that every write
  takes. A use case whose rules need it to run alone against some other writes (the
  floating tags of one repository, a quota, garbage collection against pushes) first takes
  transaction-scoped advisory locks on exactly those things (metadata/locks.py).

Read cache (SQLite): results of hot reads are kept in memory and thrown away as soon as any
connection — of this process or another one, the CLI included — commits to the database.
SQLite tells: `PRAGMA data_version` on a connection of our own changes whenever another
connection has committed. So a cached answer is never older than the last commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url

from cangku.metadata import locks

MIGRATIONS = Path(__file__).parent / "migrations"

T = TypeVar("T")
READ_CACHE_ENTRIES = 4096
MAX_WRITE_BATCH = 64
# A garbage collection waits for another replica's in PostgreSQL's lock queue, in waits this
# long (seconds), so that a server shutting down stops waiting soon.
COLLECTOR_WAIT = 2.0
_MISSING = object()


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir.resolve() / 'cangku.db'}"


def is_sqlite_url(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def describe_database(url: str) -> str:
    """The database `url` names, without its password: for messages and bookkeeping."""
    return make_url(url).render_as_string(hide_password=True)


class MetadataStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # SQLite: every write transaction runs in one thread, on `_writer_connection`.
        self._writer_thread: ThreadPoolExecutor | None = None
        self._writer_connection: Connection | None = None
        self._queued_writes: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._write_task: asyncio.Future[None] | None = None
        # Other databases: reads and writes each run in a worker thread; close() waits for
        # them, since a connection still checked out when the engine is disposed never closes.
        self._threads_working = 0
        # SQLite: the connection the event loop's thread reads on (`_read_inline`), and that
        # thread's id; opened on first use.
        self._inline_reader: Connection | None = None
        self._inline_thread: int | None = None
        self._cache: OrderedDict[Hashable, object] = OrderedDict()
        self._cache_version: int | None = None
        self._watch: sqlite3.Connection | None = None
        if self.is_sqlite and engine.url.database not in (None, "", ":memory:"):
            # Used only on the event loop thread, only for PRAGMA data_version.
            self._watch = sqlite3.connect(engine.url.database, check_same_thread=False)
        # Observers (observability.py, tracing.py), None when off. The first two are called
        # from the thread that ran the transaction: (kind "read"/"write", seconds) and the
        # number of writes in one group commit. `span` makes a tracing span named "db.read"
        # or "db.write" around a transaction, on the event loop.
        self.on_transaction: Callable[[str, float], None] | None = None
        self.on_group_commit: Callable[[int], None] | None = None
        self.span: Callable[[str], AbstractContextManager[None]] | None = None

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> MetadataStore:
        """Open the database; with `upgrade`, migrate its schema to the newest revision,
        else raise SchemaMismatch unless it is at exactly that revision (`serve` on a shared
        database: `cangku db upgrade` migrates it, once, for every replica)."""
        engine = create_database_engine(url)
        try:
            if upgrade:
                migrate(engine)
            else:
                check_schema(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._close_inline_reader()
        if self._write_task is not None and not self._write_task.done():
            await asyncio.shield(self._write_task)  # Writes queued before the close commit.
        while self._threads_working:
            await asyncio.sleep(0.01)
        if self._writer_thread is not None:
            await self._in_writer_thread(self._close_writer_connection)
            # Idle now; a write after the close starts a new thread and connection.
            self._writer_thread.shutdown(wait=False)
            self._writer_thread = None
        self.engine.dispose()

    async def ping(self) -> None:
        """Raise unless the database answers a query (the readiness check)."""
        await self.read(lambda connection: connection.execute(text("SELECT 1")).scalar())

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on a connection without a write transaction."""
        with self.span("db.read") if self.span is not None else contextlib.nullcontext():
            if self.is_sqlite:
                return self._read_inline(work)
            return await self._in_a_thread(self.read_now, work)

    async def read_cached(self, key: Hashable, work: Callable[[Connection], T]) -> T:
        """`read`, remembered under `key` until anything commits to the database.

        Only for results that are immutable values; errors are not remembered."""
        if self._watch is None:
            return await self.read(work)
        version = self._watch.execute("PRAGMA data_version").fetchone()[0]
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        cached = self._cache.get(key, _MISSING)
        if cached is not _MISSING:
            self._cache.move_to_end(key)
            return cached  # type: ignore[return-value]
        if self.span is not None:
            with self.span("db.read"):
                value = self._read_inline(work)
        else:
            value = self._read_inline(work)
        self._cache[key] = value
        if len(self._cache) > READ_CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return value

    def _read_inline(self, work: Callable[[Connection], T]) -> T:
        """SQLite: `work` on the connection kept for the calling thread (the event loop's:
        `read` and `read_cached` run there), opened on first use; any other thread reads as
        `read_now` does. Each statement is its own snapshot (no BEGIN), as on a pooled
        connection. After an error the connection is closed (the next read opens another):
        whatever state the error left it in does not reach the next read."""
        reader = self._inline_reader
        if reader is None:
            if self._inline_thread is not None and self._inline_thread != threading.get_ident():
                return self.read_now(work)
            reader = self.engine.connect().execution_options(sqlite_autocommit=True)
            self._inline_reader, self._inline_thread = reader, threading.get_ident()
        elif self._inline_thread != threading.get_ident():
            return self.read_now(work)
        started = time.perf_counter() if self.on_transaction is not None else 0.0
        try:
            value = work(reader)
            # Ends SQLAlchemy's implicit transaction (no BEGIN was sent: a no-op for SQLite).
            reader.rollback()
        except BaseException:
            self._close_inline_reader()
            raise
        finally:
            if self.on_transaction is not None:
                self.on_transaction("read", time.perf_counter() - started)
        return value

    def _close_inline_reader(self) -> None:
        reader, self._inline_reader = self._inline_reader, None
        if reader is not None:
            with contextlib.suppress(Exception):
                reader.close()

    def read_now(self, work: Callable[[Connection], T]) -> T:
        if self.on_transaction is None:
            return self._read_now(work)
        started = time.perf_counter()
        try:
            return self._read_now(work)
        finally:
            self.on_transaction("read", time.perf_counter() - started)

    def _read_now(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as connection:
            if self.is_sqlite:
                connection = connection.execution_options(sqlite_autocommit=True)
            value = work(connection)
            # A read ends with COMMIT, not the pool's ROLLBACK: it wrote nothing, so both end
            # it alike, but psycopg forgets every prepared statement of the connection on a
            # ROLLBACK (DEALLOCATE ALL), and each read did that to the pool: the next
            # transaction on it planned all its statements again (issue 20: 68 % of a
            # PostgreSQL push's statements were planned, ~0.2 ms for the floating-tag read).
            # SQLite: no BEGIN was sent, a no-op.
            connection.commit()
            return value

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction: committed when it returns, rolled back if it raises.

        SQLite: writes queued while another runs are committed together (group commit), each
        in its own SAVEPOINT, so one refused write rolls back alone. Under concurrent pushes
        that saves a thread hop, a BEGIN and a COMMIT per write.
        """
        with self.span("db.write") if self.span is not None else contextlib.nullcontext():
            if not self.is_sqlite:
                return await self._in_a_thread(self.write_now, work)
            done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._queued_writes.append((work, done))
            if self._write_task is None or self._write_task.done():
                self._write_task = asyncio.ensure_future(self._write_queued())
            return await done

    async def _write_queued(self) -> None:
        try:
            while self._queued_writes:
                batch = self._queued_writes[:MAX_WRITE_BATCH]
                del self._queued_writes[:MAX_WRITE_BATCH]
                try:
                    outcomes = await self._in_writer_thread(self._write_batch, batch)
                except BaseException as error:  # The commit itself failed: every write did.
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                    if not isinstance(error, Exception):
                        raise
                    continue
                for (_, done), (value, refusal) in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue  # The caller was cancelled.
                    if refusal is not None:
                        done.set_exception(refusal)
                    else:
                        done.set_result(value)
        finally:
            # Ended by cancellation or a non-Exception error: the writes still queued would
            # wait for some later write to start a new task. They are cancelled instead.
            stranded, self._queued_writes = self._queued_writes, []
            for _, done in stranded:
                done.cancel()

    async def _in_a_thread(
        self, run: Callable[[Callable[[Connection], T]], T], work: Callable[[Connection], T]
    ) -> T:
        self._threads_working += 1
        try:
            # A cancelled caller still waits here until the thread is done (anyio's default).
            return await anyio.to_thread.run_sync(run, work)
        finally:
            self._threads_working -= 1

    async def _in_writer_thread(self, function: Callable[..., T], *arguments: Any) -> T:
        if self._writer_thread is None:
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="cangku-db-writer")
        loop = asyncio.get_running_loop()
        # Shielded: a cancelled caller must not free the thread while a transaction runs.
        return await asyncio.shield(loop.run_in_executor(self._writer_thread, function, *arguments))

    def _close_writer_connection(self) -> None:
        if self._writer_connection is not None:
            self._writer_connection.close()
            self._writer_connection = None

    def _on_writer_connection(self, use: Callable[[Connection], T]) -> T:
        """Run `use` (in the writer thread) on the writer's connection, opened on first use.

        A failed BEGIN/COMMIT/ROLLBACK leaves the connection in doubt: it is closed, and the
        next use opens a new one."""
        if self._writer_connection is None:
            self._writer_connection = self.engine.connect().execution_options(sqlite_immediate=True)
        try:
            return use(self._writer_connection)
        except BaseException:
            self._close_writer_connection()
            raise

    def _write_batch(
        self, batch: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]]
    ) -> list[tuple[Any, Exception | None]]:
        if self.on_transaction is None:
            return self._write_batch_now(batch)
        started = time.perf_counter()
        try:
            return self._write_batch_now(batch)
        finally:
            self.on_transaction("write", time.perf_counter() - started)
            if self.on_group_commit is not None:
                self.on_group_commit(len(batch))

    def _write_batch_now(
        self, batch: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]]
    ) -> list[tuple[Any, Exception | None]]:
        if len(batch) == 1:
            work = batch[0][0]
            return [self._on_writer_connection(lambda c: self._write_alone(c, work))]
        works = [work for work, _ in batch]
        return self._on_writer_connection(lambda c: self._write_together(c, works))

    @staticmethod
    def _write_alone(
        connection: Connection, work: Callable[[Connection], Any]
    ) -> tuple[Any, Exception | None]:
        transaction = connection.begin()
        try:
            value = work(connection)
        except Exception as error:
            transaction.rollback()
            return None, error
        transaction.commit()
        return value, None

    @staticmethod
    def _write_together(
        connection: Connection, works: list[Callable[[Connection], Any]]
    ) -> list[tuple[Any, Exception | None]]:
        # Savepoints on the driver connection: SQLAlchemy's nested transactions cost ~0.25 ms
        # each, as much as a typical write.
        savepoints = connection.connection.driver_connection
        assert savepoints is not None
        outcomes: list[tuple[Any, Exception | None]] = []
        with connection.begin():
            for work in works:
                savepoints.execute("SAVEPOINT cangku_write")
                try:
                    value = work(connection)
                except Exception as error:
                    savepoints.execute("ROLLBACK TO cangku_write")
                    savepoints.execute("RELEASE cangku_write")
                    outcomes.append((None, error))
                else:
                    savepoints.execute("RELEASE cangku_write")
                    outcomes.append((value, None))
        return outcomes

    def write_now(self, work: Callable[[Connection], T]) -> T:
        if self.on_transaction is None:
            return self._write_now(work)
        started = time.perf_counter()
        try:
            return self._write_now(work)
        finally:
            self.on_transaction("write", time.perf_counter() - started)

    def _write_now(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as connection:
            connection = connection.execution_options(sqlite_immediate=True)
            with connection.begin():
                return work(connection)

    @contextlib.asynccontextmanager
    async def collector_lock(self) -> AsyncIterator[None]:
        """Hold the garbage collector's lock for the block: one collection at a time across
        every process on this database. PostgreSQL: a session-level advisory lock on a
        connection of its own, waited for in PostgreSQL's queue (collectors take turns in
        order) in bounded waits of `COLLECTOR_WAIT` seconds; a process that dies loses it
        with its connection. SQLite: nothing (a collection's steps are writes, one at a time)."""
        if self.is_sqlite:
            yield
            return
        connection = await anyio.to_thread.run_sync(self.engine.connect)
        try:
            while not await anyio.to_thread.run_sync(
                locks.wait_for_collector, connection, COLLECTOR_WAIT
            ):
                pass  # Waited COLLECTOR_WAIT in the queue: a cancellation may land here.
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(locks.release_collector, connection)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(connection.close)

    async def rehearse(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a write transaction and roll it back: what it would do (dry runs)."""
        if not self.is_sqlite:
            return await self._in_a_thread(self._rehearse_now, work)
        return await self._in_writer_thread(
            self._on_writer_connection, lambda connection: _rehearse(connection, work)
        )

    def _rehearse_now(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as connection:
            connection = connection.execution_options(sqlite_immediate=True)
            return _rehearse(connection, work)


def _rehearse(connection: Connection, work: Callable[[Connection], T]) -> T:
    transaction = connection.begin()
    try:
        return work(connection)
    finally:
        transaction.rollback()


def create_database_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(parsed, pool_pre_ping=True)
        # Many rows to INSERT go as one multi-row VALUES statement (SQLAlchemy's
        # "insertmanyvalues", as its psycopg2 dialect does by default): psycopg 3 runs an
        # executemany as one execution per row on the server, so a version push's four tag
        # history rows and four events were eight executions (issue 20). Statements with
        # ON CONFLICT are left out by SQLAlchemy; metadata/tags.py `point_tags` does its own.
        engine.dialect.use_insertmanyvalues_wo_returning = True
        return engine
    engine = create_engine(
        parsed,
        # Connections move between the event loop and worker threads (never concurrently).
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=8,
        max_overflow=16,
    )
    _configure_sqlite(engine)
    return engine


class SchemaMismatch(ValueError):
    """The database's schema is not the one this cangku's migrations end at."""


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration this cangku has."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at; None for a database without cangku's schema."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise SchemaMismatch, saying what to do, unless the schema is at `head_revision()`."""
    current, head = schema_revision(engine), head_revision()
    if current == head:
        return
    script = ScriptDirectory.from_config(_alembic_config())
    if current is None:
        problem = "the database has no cangku schema yet"
    else:
        try:
            known = script.get_revision(current) is not None
        except CommandError:
            known = False
        if not known:
            raise SchemaMismatch(
                f"the database schema is at revision {current}, which this cangku does not "
                f"know (its newest is {head}): a newer cangku migrated it; run that version"
            )
        problem = f"the database schema is at revision {current}, this cangku needs {head}"
    raise SchemaMismatch(
        f"{problem}: run `cangku db upgrade` with the same configuration (once, from one "
        "machine), then start the server again"
    )


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Apply every migration the database lacks; returns (revision before, after)."""
    config = _alembic_config()
    before = schema_revision(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return before, head_revision()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" below decide when transactions start (pysqlite's own
        # implicit transactions would defer BEGIN and break IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("sqlite_autocommit"):
            return  # Reads: each statement is its own snapshot; no BEGIN/ROLLBACK round.
        # On the driver's connection: through `exec_driver_sql` the BEGIN alone cost ~10 µs
        # of SQLAlchemy's statement machinery, a sixth of an empty write transaction.
        driver = connection.connection.driver_connection
        assert driver is not None
        driver.execute("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")
