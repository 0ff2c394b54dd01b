"""The metadata database a test runs on: SQLite in the test's data directory, or, with
CANGKU_TEST_POSTGRES set to a PostgreSQL URL of a role that may create databases, a fresh
PostgreSQL database per test, dropped afterwards (`.ci/run` runs the API and account tests
both ways)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from cangku.metadata.store import MetadataStore, sqlite_url

POSTGRES_ADMIN_URL = os.environ.get("CANGKU_TEST_POSTGRES")


@contextlib.contextmanager
def fresh_database(data_dir: Path) -> Iterator[str]:
    """The URL of an empty metadata database for one test."""
    if not POSTGRES_ADMIN_URL:
        yield sqlite_url(data_dir)
        return
    name = f"cangku_test_{uuid.uuid4().hex}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield (
                make_url(POSTGRES_ADMIN_URL)
                .set(database=name)
                .render_as_string(hide_password=False)
            )
        finally:
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
