"""Connections and transactions on the metadata database.

SQLite (the embedded default) allows one writer at a time: writers in this process queue on
an asyncio lock and start with BEGIN IMMEDIATE, so a second process (the `cangku` CLI while
the server runs) waits on the busy timeout instead of failing half-way through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir.resolve() / 'cangku.db'}"


class MetadataStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @classmethod
    def open(cls, url: str) -> MetadataStore:
        """Migrate the schema to the newest revision, then open an async engine."""
        migrate(url)
        options: dict[str, Any] = {}
        if make_url(url).get_backend_name() == "sqlite":
            options["connect_args"] = {"timeout": 30}
        engine = create_async_engine(url, **options)
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        if self._write_lock is None:
            async with self.engine.begin() as connection:
                yield connection
            return
        async with self._write_lock, self.engine.connect() as connection:
            connection = await connection.execution_options(sqlite_immediate=True)
            async with connection.begin():
                yield connection


def migrate(url: str) -> None:
    sync_url = make_url(url)
    if sync_url.drivername == "sqlite+aiosqlite":
        sync_url = sync_url.set(drivername="sqlite")
    elif sync_url.drivername in ("postgresql+asyncpg", "postgresql+psycopg_async"):
        sync_url = sync_url.set(drivername="postgresql+psycopg")
    engine = create_engine(sync_url)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def _configure_sqlite(engine: AsyncEngine | Any) -> None:
    sync_engine = getattr(engine, "sync_engine", engine)

    @event.listens_for(sync_engine, "connect")
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

    @event.listens_for(sync_engine, "begin")
    def on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
