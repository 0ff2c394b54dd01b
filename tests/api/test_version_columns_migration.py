"""Migration 0007 fills the version columns of the tags that existed before it (issue 20)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from cangku.metadata.store import MIGRATIONS, create_database_engine
from cangku.registry.tags import newest_release, version_columns, version_page

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


def assert_releases_of_before(connection: Connection) -> None:
    """Repository 7 holds BEFORE's tags: `latest` and the version page read them in order."""
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


def test_existing_version_tags_are_indexed_by_the_migration(
    data_dir: Path, empty_database_url: str
) -> None:
    engine = create_database_engine(empty_database_url)
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
            assert_releases_of_before(connection)
            other = connection.execute(
                text("SELECT count(*) FROM tags WHERE version_key IS NULL")
            ).scalar()
            assert other == 2  # latest and stable
            assert newest_release(connection, 8, "latest").tag == "0.0.2499"  # type: ignore[union-attr]
            assert len(version_page(connection, 8, 1000, "0.0.1000")[0]) == 1000
    finally:
        engine.dispose()


def _index_sql(engine, name: str) -> str:
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
        return str(connection.execute(text(query), {"name": name}).scalar_one())


def test_the_version_indexes_hold_version_tags_only_after_0017(
    data_dir: Path, empty_database_url: str
) -> None:
    """Migration 0017: other tags (floating, plain) are no longer written to the two version
    indexes; the floating-tag reads still find their rows, through those indexes."""
    engine = create_database_engine(empty_database_url)
    try:
        upgrade(engine, "0016")
        assert "NOT NULL" not in _index_sql(engine, "ix_tags_release").upper()
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO repositories (id, name, created_at) VALUES (7, 'jimo/old', 0)")
            )
            for updated_at, (tag, digest) in enumerate(BEFORE.items()):
                connection.execute(
                    text(
                        "INSERT INTO tags (repository_id, name, manifest_digest, updated_at, "
                        "version_prefix, version_key, release_key) "
                        "VALUES (7, :tag, :digest, :updated_at, :prefix, :key, :release)"
                    ),
                    {"tag": tag, "digest": digest, "updated_at": updated_at, **_columns(tag)},
                )
        upgrade(engine, "0017")
        for name, column in (
            ("ix_tags_release", "release_key"),
            ("ix_tags_version", "version_key"),
        ):
            assert f"{column} IS NOT NULL" in _index_sql(engine, name)
        with engine.begin() as connection:
            assert_releases_of_before(connection)
            plan = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
            rows = connection.execute(
                text(
                    plan + "SELECT name FROM tags WHERE repository_id = 7 AND version_prefix = '' "
                    "AND release_key >= :low AND release_key < :high "
                    "ORDER BY release_key DESC LIMIT 1"
                ),
                {"low": b"\x01", "high": b"\xff"},
            ).all()
            if engine.dialect.name == "sqlite":  # the planner's choice, on PostgreSQL by cost
                assert "ix_tags_release" in " ".join(str(row[-1]) for row in rows), rows
    finally:
        engine.dispose()


def _columns(tag: str) -> dict[str, object]:
    found = version_columns(tag)
    return {
        "prefix": found["version_prefix"],
        "key": found["version_key"],
        "release": found["release_key"],
    }
