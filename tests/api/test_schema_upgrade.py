"""`cangku db upgrade`, and `serve` refusing a schema it does not know (issue 15).

On a shared database (PostgreSQL: CANGKU_TEST_POSTGRES) the server never migrates; with the
embedded SQLite database it still does, at start.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from alembic import command
from sqlalchemy import create_engine, text

from cangku import cli
from cangku.app import build_registry
from cangku.cli.serve import serve_forever
from cangku.config import Settings, load_settings
from cangku.metadata.store import (
    SchemaMismatch,
    _alembic_config,
    head_revision,
    schema_revision,
    sqlite_url,
)
from tests.databases import POSTGRES_ADMIN_URL

postgresql_only = pytest.mark.skipif(
    not POSTGRES_ADMIN_URL, reason="a shared database: PostgreSQL (CANGKU_TEST_POSTGRES)"
)


def _config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "cangku.yaml"
    path.write_text(yaml.safe_dump({"data": str(tmp_path / "data"), "database_url": database_url}))
    return path


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        return schema_revision(engine)
    finally:
        engine.dispose()


@postgresql_only
def test_serve_refuses_an_empty_shared_database_and_db_upgrade_makes_it_usable(
    tmp_path: Path, empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, empty_database_url)
    settings = load_settings(config)
    assert serve_forever(settings) == 2
    assert "run `cangku db upgrade`" in capsys.readouterr().err
    assert _revision(empty_database_url) is None  # The server did not migrate it.

    assert cli.main(["db", "upgrade", "--config", str(config)]) == 0
    assert f"to {head_revision()}" in capsys.readouterr().out
    assert _revision(empty_database_url) == head_revision()
    registry = build_registry(settings)  # What serve starts with: accepted now.
    registry.metadata.engine.dispose()

    assert cli.main(["db", "upgrade", "--config", str(config)]) == 0
    assert "nothing to do" in capsys.readouterr().out


@postgresql_only
def test_serve_refuses_an_older_schema_and_says_what_to_run(
    tmp_path: Path, empty_database_url: str
) -> None:
    engine = create_engine(empty_database_url)
    try:
        alembic = _alembic_config()
        with engine.begin() as connection:
            alembic.attributes["connection"] = connection
            command.upgrade(alembic, "0010")
    finally:
        engine.dispose()
    settings = load_settings(_config(tmp_path, empty_database_url))
    with pytest.raises(SchemaMismatch, match=r"at revision 0010, this cangku needs .*db upgrade"):
        build_registry(settings)
    assert _revision(empty_database_url) == "0010"
    assert cli.main(["db", "upgrade", "--config", str(_config(tmp_path, empty_database_url))]) == 0
    assert _revision(empty_database_url) == head_revision()


@postgresql_only
def test_serve_refuses_a_schema_newer_than_its_migrations(
    tmp_path: Path, empty_database_url: str
) -> None:
    config = _config(tmp_path, empty_database_url)
    assert cli.main(["db", "upgrade", "--config", str(config)]) == 0
    engine = create_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaMismatch, match="9999, which this cangku does not know"):
        build_registry(load_settings(config))


def test_the_embedded_database_still_migrates_itself_at_start(tmp_path: Path) -> None:
    settings = Settings(data=tmp_path / "data")
    registry = build_registry(settings)
    registry.metadata.engine.dispose()
    assert _revision(sqlite_url(settings.data)) == head_revision()
