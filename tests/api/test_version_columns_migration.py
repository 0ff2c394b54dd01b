"""Migration 0007 fills the version columns of the tags that existed before it (issue 20)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from cangku.metadata.store import MIGRATIONS, create_database_engine
from cangku.registry.tags import newest_release, version_page

A, B, C = (f"sha256:{letter * 64}" for letter in "abc")
BEFORE = {
    "1.9.2": A,
    "v1.9.3": C,
    "2.0.0": B,
    "2.1.0-rc.1": C,
    "2.0.0_build7": A,
    "latest": B,
    "stable": A,
}


def upgrade(engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_existing_version_tags_are_indexed_by_the_migration(
    data_dir: Path, database_url: str
) -> None:
    engine = create_database_engine(database_url)
    try:
        upgrade(engine, "0006")
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO repositories (id, name, created_at) VALUES (7, 'jimo/old', 0)")
            )
            for updated_at, (tag, digest) in enumerate(BEFORE.items()):
                connection.execute(
                    text(
                        "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) "
                        "VALUES (7, :tag, :digest, :updated_at)"
                    ),
                    {"tag": tag, "digest": digest, "updated_at": updated_at},
                )
            # More than one of the migration's batches (1,000 tags).
            connection.execute(
                text("INSERT INTO repositories (id, name, created_at) VALUES (8, 'jimo/big', 0)")
            )
            connection.execute(
                text(
                    "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) "
                    "VALUES (8, :tag, :digest, 0)"
                ),
                [{"tag": f"0.0.{patch}", "digest": A} for patch in range(2_500)],
            )
        upgrade(engine, "head")
        with engine.connect() as connection:
            assert newest_release(connection, 7, "1") == newest_release(connection, 7, "1.9")
            assert newest_release(connection, 7, "1").tag == "1.9.2"  # type: ignore[union-attr]
            assert newest_release(connection, 7, "v1").tag == "v1.9.3"  # type: ignore[union-attr]
            # 2.0.0 and 2.0.0_build7 rank the same; the one changed last wins.
            latest = newest_release(connection, 7, "latest")
            assert latest is not None and (latest.tag, latest.digest) == ("2.0.0_build7", A)
            versions, more = version_page(connection, 7, 10, None)
            assert [tag for tag, _ in versions] == [
                "2.1.0-rc.1",
                "2.0.0_build7",
                "2.0.0",
                "v1.9.3",
                "1.9.2",
            ]
            assert more is None
            other = connection.execute(
                text("SELECT count(*) FROM tags WHERE version_key IS NULL")
            ).scalar()
            assert other == 2  # latest and stable
            assert newest_release(connection, 8, "latest").tag == "0.0.2499"  # type: ignore[union-attr]
            assert len(version_page(connection, 8, 1000, "0.0.1000")[0]) == 1000
    finally:
        engine.dispose()
