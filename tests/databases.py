"""The metadata database a test runs on: SQLite in the test's data directory, or, with
CANGKU_TEST_POSTGRES set to a PostgreSQL URL of a role that may create databases, a fresh
PostgreSQL database per test, dropped afterwards (`.ci/run` runs the API and account tests
both ways).

A database is migrated to the newest schema as a copy of one migrated once per test run (a
file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL): migrating each test's
own took ~0.1 s on SQLite and ~0.4 s on PostgreSQL, minutes of a CI run. Tests of the
migrations themselves ask for an empty one (`migrated=False`).

On PostgreSQL the copy itself takes 0.2-0.5 s, up to most of a typical test's setup, so the
next test's copy is made in a background thread while the current test runs."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from cangku.metadata.store import MetadataStore, create_database_engine, migrate, sqlite_url

POSTGRES_ADMIN_URL = os.environ.get("CANGKU_TEST_POSTGRES")

# The migrated originals, made on first use: a SQLite file, a PostgreSQL database's name.
_sqlite_template: Path | None = None
_postgres_template: str | None = None
# PostgreSQL: the copy of the template the next test gets, being made in the background.
_copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-database-copy")
_next_copy: Future[str] | None = None


@contextlib.contextmanager
def fresh_database(data_dir: Path, *, migrated: bool = True) -> Iterator[str]:
    """The URL of a metadata database of the test's own: at the newest schema, or, with
    `migrated=False`, empty."""
    if not POSTGRES_ADMIN_URL:
        if migrated:
            shutil.copyfile(_migrated_sqlite(), data_dir / "cangku.db")
        yield sqlite_url(data_dir)
        return
    with _admin_engine() as admin:
        if migrated:
            name = _take_migrated_copy(admin)
        else:
            name = _new_name()
            _create(admin, f'CREATE DATABASE "{name}"')
        try:
            yield _url_of(name)
        finally:
            _drop(admin, name)


@contextlib.contextmanager
def _admin_engine() -> Iterator[Engine]:
    """An engine on the administrative URL, outside transactions (CREATE and DROP DATABASE
    run only there)."""
    admin = create_engine(POSTGRES_ADMIN_URL or "", isolation_level="AUTOCOMMIT")
    try:
        yield admin
    finally:
        admin.dispose()


def _new_name() -> str:
    return f"cangku_test_{uuid.uuid4().hex}"


def _take_migrated_copy(admin: Engine) -> str:
    """A fresh copy of the migrated template, and the start of the next test's copy.
    A copy that failed fails one test: the next one starts a copy of its own."""
    global _next_copy
    template = _migrated_postgres(admin)
    pending, _next_copy = _next_copy, None
    name = _copy_of(template) if pending is None else pending.result()
    _next_copy = _copier.submit(_copy_of, template)
    return name


def _copy_of(template: str) -> str:
    name = _new_name()
    with _admin_engine() as admin:
        _create(admin, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def _drop_unused_copy() -> None:
    # concurrent.futures joins its thread before atexit's handlers run: the copy is done.
    if _next_copy is not None and _next_copy.exception() is None:
        _drop_database(_next_copy.result())


def _at_exit_of_this_process(drop: Callable[[], None]) -> None:
    """Runs `drop` at exit, but not in a child forked from this process (it would drop the
    parent's databases)."""
    owner = os.getpid()
    atexit.register(lambda: drop() if os.getpid() == owner else None)


def _url_of(name: str) -> str:
    assert POSTGRES_ADMIN_URL
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _migrated_sqlite() -> Path:
    global _sqlite_template
    if _sqlite_template is None:
        directory = Path(tempfile.mkdtemp(prefix="cangku-test-template-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        engine = create_database_engine(sqlite_url(directory))
        try:
            migrate(engine)
        finally:
            engine.dispose()  # The last connection's close folds the WAL into the file.
        if (directory / "cangku.db-wal").exists():
            raise RuntimeError("the migrated SQLite template kept a WAL file: not copyable")
        _sqlite_template = directory / "cangku.db"
    return _sqlite_template


def _migrated_postgres(admin: Engine) -> str:
    global _postgres_template
    if _postgres_template is None:
        name = f"cangku_test_template_{uuid.uuid4().hex}"
        _create(admin, f'CREATE DATABASE "{name}"')
        _at_exit_of_this_process(lambda: _drop_database(name))
        # Registered after the template's drop, so it runs first (atexit runs in reverse).
        _at_exit_of_this_process(_drop_unused_copy)
        engine = create_database_engine(_url_of(name))
        try:
            migrate(engine)
        finally:
            engine.dispose()  # A session left in the template would fail every copy.
        with admin.connect() as connection:
            # Keeps clients out of the template, as a copy fails while a session is in it.
            # An autovacuum worker may still enter; CREATE DATABASE stops it, and _create
            # retries.
            connection.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
        _postgres_template = name
    return _postgres_template


def _create(admin: Engine, statement: str) -> None:
    # A copy fails while another session is in its template; retried as _drop is.
    for attempt in range(5):
        try:
            with admin.connect() as connection:
                connection.execute(text(statement))
            return
        except OperationalError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def _drop_database(name: str) -> None:
    with _admin_engine() as admin:
        _drop(admin, name)


def _drop(admin: Engine, name: str) -> None:
    # Not WITH (FORCE): that would have to end autovacuum's session, which only a superuser
    # may; a plain DROP cancels autovacuum itself. A database left behind fails no test.
    for attempt in range(5):
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            return
        except OperationalError:
            time.sleep(0.2 * (attempt + 1))


def same_database(store: MetadataStore) -> str:
    """The URL of `store`'s database, for a second store on it (as another process)."""
    return store.engine.url.render_as_string(hide_password=False)
