"""The metadata database a test runs on: SQLite in the test's data directory, or, with
CANGKU_TEST_POSTGRES set to a PostgreSQL URL of a role that may create databases, a fresh
PostgreSQL database per test, dropped afterwards (`.ci/run` runs the API and account tests
both ways).

A database is migrated to the newest schema as a copy of one migrated once per test run (a
file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL): migrating each test's
own took ~0.1 s on SQLite and ~0.4 s on PostgreSQL, minutes of a CI run. Tests of the
migrations themselves ask for an empty one (`migrated=False`)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from cangku.metadata.store import MetadataStore, create_database_engine, migrate, sqlite_url

POSTGRES_ADMIN_URL = os.environ.get("CANGKU_TEST_POSTGRES")

# The migrated originals, made on first use: a SQLite file, a PostgreSQL database's name.
_sqlite_template: Path | None = None
_postgres_template: str | None = None


@contextlib.contextmanager
def fresh_database(data_dir: Path, *, migrated: bool = True) -> Iterator[str]:
    """The URL of a metadata database of the test's own: at the newest schema, or, with
    `migrated=False`, empty."""
    if not POSTGRES_ADMIN_URL:
        if migrated:
            shutil.copyfile(_migrated_sqlite(), data_dir / "cangku.db")
        yield sqlite_url(data_dir)
        return
    name = f"cangku_test_{uuid.uuid4().hex}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        template = f' TEMPLATE "{_migrated_postgres(admin)}"' if migrated else ""
        _create(admin, f'CREATE DATABASE "{name}"{template}')
        try:
            yield _url_of(name)
        finally:
            _drop(admin, name)
    finally:
        admin.dispose()


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
        atexit.register(_drop_template, name)
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


def _drop_template(name: str) -> None:
    admin = create_engine(POSTGRES_ADMIN_URL or "", isolation_level="AUTOCOMMIT")
    try:
        _drop(admin, name)
    finally:
        admin.dispose()


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
