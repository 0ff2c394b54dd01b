"""`cangku db upgrade`: migrate the metadata database's schema to this version's newest."""

from __future__ import annotations

import argparse

from cangku.config import Settings

DB_UPGRADE_HELP = """\
Apply the schema migrations the metadata database lacks, in one transaction. With the
embedded SQLite database `serve` does this itself at start; on a shared database (PostgreSQL,
several replicas) run it once, from one machine, before starting servers of the new version:
they refuse a schema other than their own. See docs/scale-out.md."""


async def db_upgrade_run(settings: Settings, args: argparse.Namespace) -> int:
    from cangku.metadata.store import create_database_engine, migrate, sqlite_url

    settings.data.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_database_engine(settings.database_url or sqlite_url(settings.data))
    try:
        before, after = migrate(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"the database schema is at revision {after} already: nothing to do")
    else:
        print(f"the database schema went from revision {before or '(none)'} to {after}")
    return 0
