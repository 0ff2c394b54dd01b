"""`cangku migrate-storage`: a whole registry copied between databases and blob stores.

SQLite + filesystem to SQLite + filesystem always runs; the PostgreSQL + S3 (Ceph) legs
(marked `postgresql`: `make test-postgresql` runs them) need CANGKU_TEST_POSTGRES and
CANGKU_TEST_S3, and skip without them (fail under CANGKU_REQUIRE_CLIENTS=1).
tests/e2e/test_e2e_migrate_storage.py pulls from a copy with docker and skopeo.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from cangku.app import build_registry, create_app
from cangku.cli import main
from cangku.cli import migrate_storage as command
from cangku.config import Settings, StorageSettings
from cangku.content.digest import Digest
from cangku.metadata import copying
from cangku.metadata.store import sqlite_url
from cangku.storage import open_storage
from cangku.storage.filesystem import FilesystemStorage
from cangku.storage.s3 import S3Storage
from tests.api.helpers import pull_image, push_image
from tests.databases import _drop
from tests.s3 import remove_everything, s3_settings

POSTGRES_ADMIN_URL = os.environ.get("CANGKU_TEST_POSTGRES")


async def stream(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Interrupted(Exception):
    """Stands in for the process being stopped half-way."""


def embedded(data: Path) -> Settings:
    return Settings(data=data, auth={"open": True})


@contextlib.contextmanager
def postgresql_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; skips (or fails) without one."""
    if not POSTGRES_ADMIN_URL:
        message = "no PostgreSQL for tests: CANGKU_TEST_POSTGRES is not set"
        if os.environ.get("CANGKU_REQUIRE_CLIENTS") == "1":
            pytest.fail(f"{message} (CANGKU_REQUIRE_CLIENTS=1)", pytrace=False)
        pytest.skip(message)
    name = f"cangku_test_{uuid.uuid4().hex}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _drop(admin, name)
        admin.dispose()


@contextlib.contextmanager
def postgresql_and_s3(data: Path) -> Iterator[Settings]:
    """Settings for PostgreSQL + S3 on Ceph, both emptied afterwards."""
    with postgresql_database() as url:
        s3 = s3_settings()
        try:
            yield Settings(
                data=data,
                database_url=url,
                storage=StorageSettings(driver="s3", s3=s3),
                auth={"open": True},
            )
        finally:
            remove_everything(S3Storage.from_settings(s3))


@contextlib.asynccontextmanager
async def client_of(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The registry API of `settings`, in process."""
    registry = build_registry(settings)
    transport = httpx.ASGITransport(app=create_app(settings, registry))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://registry.test"
        ) as client:
            yield client
    finally:
        await registry.metadata.close()


async def populate(settings: Settings) -> dict[str, str]:
    """Three images in two repositories, one of them pushed twice under one tag (history)."""
    pushed: dict[str, str] = {}
    async with client_of(settings) as client:
        pushed["jimo/app:1.0"], _ = await push_image(client, "jimo/app", "1.0", layers=3)
        pushed["jimo/app:1.1"], _ = await push_image(client, "jimo/app", "1.1")
        pushed["jimo/app:latest"], _ = await push_image(client, "jimo/app", "latest")
        pushed["jimo/app:latest"], _ = await push_image(client, "jimo/app", "latest")
        pushed["tools/cli:v1"], _ = await push_image(client, "tools/cli", "v1", layers=1)
    return pushed


def database_url(settings: Settings) -> str:
    return settings.database_url or sqlite_url(settings.data)


def dump(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every copied table's rows, in an order independent of the database."""
    engine = create_engine(database_url(settings))
    try:
        with engine.connect() as connection:
            return {
                table.name: sorted(
                    (
                        tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                        for row in connection.execute(select(table))
                    ),
                    key=repr,
                )
                for table in copying.COPIED_TABLES
            }
    finally:
        engine.dispose()


def migrations_recorded(settings: Settings) -> dict[str, float | None]:
    engine = create_engine(database_url(settings))
    try:
        with engine.connect() as connection:
            return copying.migration_sources(connection)
    finally:
        engine.dispose()


async def stored(settings: Settings) -> dict[str, int]:
    storage = open_storage(settings.storage, settings.data)
    return {str(digest): size async for digest, size, _ in storage.iterate()}


async def assert_copy_of(source: Settings, target: Settings, pushed: dict[str, str]) -> None:
    source_rows, target_rows = dump(source), dump(target)
    assert target_rows == source_rows
    assert source_rows["blobs"] and source_rows["tag_history"]  # the check compares something
    recorded = {row[0]: row[1] for row in target_rows["blobs"]}
    blobs = await stored(target)
    assert {digest: blobs.get(digest) for digest in recorded} == recorded
    async with client_of(target) as client:
        for reference, digest in pushed.items():
            name, _, tag = reference.partition(":")
            response = await client.head(f"/v2/{name}/manifests/{tag}")
            assert response.headers["Docker-Content-Digest"] == digest
            await pull_image(client, name, tag)  # every blob, its digest checked


# -- SQLite + filesystem on both sides: always runs --------------------------------------------


async def test_copy_holds_every_row_and_blob_of_the_source(tmp_path: Path) -> None:
    source, target = embedded(tmp_path / "source"), embedded(tmp_path / "target")
    pushed = await populate(source)

    report = await command.migrate(source, target)

    await assert_copy_of(source, target, pushed)
    assert await stored(target) == await stored(source)
    assert report.copied == len(dump(source)["blobs"]) and report.skipped == 0
    assert not report.missing and not report.damaged
    assert None not in migrations_recorded(target).values()  # finished


async def test_interrupted_run_resumes_copying_only_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = embedded(tmp_path / "source"), embedded(tmp_path / "target")
    pushed = await populate(source)
    blobs = len(dump(source)["blobs"])
    monkeypatch.setattr(command, "COPIES_AT_ONCE", 1)
    write_blob = FilesystemStorage.write_blob
    written = 0

    async def stopped_after_three(self: FilesystemStorage, *args: Any, **kwargs: Any) -> int:
        nonlocal written
        if written == 3:
            raise Interrupted
        written += 1
        return await write_blob(self, *args, **kwargs)

    monkeypatch.setattr(FilesystemStorage, "write_blob", stopped_after_three)
    with pytest.raises(ExceptionGroup) as interrupted:
        await command.migrate(source, target)
    assert interrupted.group_contains(Interrupted)
    monkeypatch.setattr(FilesystemStorage, "write_blob", write_blob)

    # Three blobs made it, no row did, and the run is recorded as unfinished.
    assert len(await stored(target)) == 3
    assert not any(dump(target).values())
    assert list(migrations_recorded(target).values()) == [None]

    report = await command.migrate(source, target)

    assert (report.skipped, report.copied) == (3, blobs - 3)
    await assert_copy_of(source, target, pushed)
    assert None not in migrations_recorded(target).values()

    # A finished copy may have taken pushes since: a third run must be told to overwrite,
    # and then finds nothing to do.
    with pytest.raises(command.MigrationRefused, match="finished copy"):
        await command.migrate(source, target)
    again = await command.migrate(source, target, overwrite=True)
    assert (again.skipped, again.copied) == (blobs, 0)
    assert sum(changes.total for changes in again.rows.values()) == 0
    await assert_copy_of(source, target, pushed)


async def test_a_target_holding_another_registry_is_refused_unless_overwritten(
    tmp_path: Path,
) -> None:
    source, target = embedded(tmp_path / "source"), embedded(tmp_path / "target")
    pushed = await populate(source)
    await populate(target)
    before = dump(target)

    with pytest.raises(command.MigrationRefused, match="already holds a registry"):
        await command.migrate(source, target)
    assert dump(target) == before
    assert migrations_recorded(target) == {}

    await command.migrate(source, target, overwrite=True)
    await assert_copy_of(source, target, pushed)


async def test_a_target_holding_only_blobs_is_refused(tmp_path: Path) -> None:
    source, target = embedded(tmp_path / "source"), embedded(tmp_path / "target")
    await populate(source)
    data = b"left by something else"
    await FilesystemStorage(target.data).write_blob(stream(data), Digest.of(data), len(data))

    with pytest.raises(command.MigrationRefused, match="already holds blobs"):
        await command.migrate(source, target)


async def test_moving_only_the_database_keeps_the_blobs_where_they_are(tmp_path: Path) -> None:
    source = embedded(tmp_path / "source")
    pushed = await populate(source)
    # The same data directory (its blobs), another database.
    target = Settings(
        data=source.data, database_url=sqlite_url(tmp_path / "elsewhere"), auth={"open": True}
    )
    (tmp_path / "elsewhere").mkdir()

    report = await command.migrate(source, target)

    assert (report.copied, report.skipped) == (0, len(dump(source)["blobs"]))
    await assert_copy_of(source, target, pushed)


async def test_a_target_migrated_from_another_source_is_refused(tmp_path: Path) -> None:
    first, second = embedded(tmp_path / "first"), embedded(tmp_path / "second")
    target = embedded(tmp_path / "target")
    await populate(first)
    await populate(second)
    await command.migrate(first, target)

    with pytest.raises(command.MigrationRefused, match="from another registry"):
        await command.migrate(second, target)


async def test_the_same_database_on_both_sides_is_refused(tmp_path: Path) -> None:
    source = embedded(tmp_path / "source")
    await populate(source)
    target = Settings(data=tmp_path / "target", database_url=sqlite_url(source.data))

    with pytest.raises(command.MigrationRefused, match="same database"):
        await command.migrate(source, target)


async def test_a_damaged_source_blob_is_reported_and_no_row_is_copied(tmp_path: Path) -> None:
    source, target = embedded(tmp_path / "source"), embedded(tmp_path / "target")
    await populate(source)
    damaged, missing = sorted(await stored(source))[:2]
    path = FilesystemStorage(source.data).blob_path(Digest.parse(damaged))
    path.write_bytes(b"x" * path.stat().st_size)  # same size, other bytes
    FilesystemStorage(source.data).blob_path(Digest.parse(missing)).unlink()

    report = await command.migrate(source, target)

    assert report.damaged == [damaged]
    assert report.missing == [missing]
    assert damaged not in await stored(target)
    assert not any(dump(target).values())
    assert list(migrations_recorded(target).values()) == [None]


async def test_signing_keys_follow_into_the_target_data_directory(tmp_path: Path) -> None:
    source, target = embedded(tmp_path / "source"), embedded(tmp_path / "target")
    await populate(source)
    for name in command.KEY_FILES:
        (source.data / name).write_bytes(os.urandom(32))

    await command.migrate(source, target)

    for name in command.KEY_FILES:
        assert (target.data / name).read_bytes() == (source.data / name).read_bytes()
        assert (target.data / name).stat().st_mode & 0o777 == 0o600


async def test_the_progress_bar_counts_the_bytes_copied(tmp_path: Path) -> None:
    source, target = embedded(tmp_path / "source"), embedded(tmp_path / "target")
    await populate(source)
    total = sum(row[1] for row in dump(source)["blobs"])
    output = io.StringIO()

    await command.migrate(
        source, target, console=Console(file=output, force_terminal=True, width=120)
    )

    assert f"{total:,}/{total:,} B" in output.getvalue()


def test_the_command_reads_the_target_from_its_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    config = tmp_path / "target.yaml"
    config.write_text(f"data: {target}\n")
    # Describes the source; the target's file says nothing of a database, so SQLite in `target`.
    monkeypatch.setenv("CANGKU_DATABASE_URL", sqlite_url(source))

    assert main(["migrate-storage", "--data", str(source), "--to", str(config)]) == 0

    assert (target / "cangku.db").is_file()
    assert "rows: 0 changed" in capsys.readouterr().out


def test_the_command_exits_1_with_the_reason_when_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "same.yaml"
    config.write_text(f"data: {tmp_path / 'other'}\ndatabase_url: {sqlite_url(tmp_path / 'd')}\n")

    assert main(["migrate-storage", "--data", str(tmp_path / "d"), "--to", str(config)]) == 1

    assert "same database" in capsys.readouterr().err


# -- PostgreSQL + S3 (Ceph) -------------------------------------------------------------------


@pytest.mark.postgresql
async def test_round_trip_through_postgresql_and_s3_ends_identical(tmp_path: Path) -> None:
    source = embedded(tmp_path / "source")
    pushed = await populate(source)
    with postgresql_and_s3(tmp_path / "scaled") as scaled:
        report = await command.migrate(source, scaled)
        assert report.copied == len(dump(source)["blobs"])
        await assert_copy_of(source, scaled, pushed)

        # The copied ids do not collide with the next rows PostgreSQL numbers itself.
        async with client_of(scaled) as client:
            pushed["jimo/app:2.0"], _ = await push_image(client, "jimo/app", "2.0")
            pushed["jimo/app:latest"], _ = await push_image(client, "jimo/app", "latest")

        back = embedded(tmp_path / "back")
        await command.migrate(scaled, back)
        await assert_copy_of(scaled, back, pushed)


@pytest.mark.postgresql
async def test_interrupted_run_into_s3_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = embedded(tmp_path / "source")
    pushed = await populate(source)
    blobs = len(dump(source)["blobs"])
    monkeypatch.setattr(command, "COPIES_AT_ONCE", 1)
    with postgresql_and_s3(tmp_path / "scaled") as scaled:
        write_blob = S3Storage.write_blob
        written = 0

        async def stopped_after_two(self: S3Storage, *args: Any, **kwargs: Any) -> int:
            nonlocal written
            if written == 2:
                raise Interrupted
            written += 1
            return await write_blob(self, *args, **kwargs)

        monkeypatch.setattr(S3Storage, "write_blob", stopped_after_two)
        with pytest.raises(ExceptionGroup) as interrupted:
            await command.migrate(source, scaled)
        assert interrupted.group_contains(Interrupted)
        monkeypatch.setattr(S3Storage, "write_blob", write_blob)
        assert len(await stored(scaled)) == 2

        report = await command.migrate(source, scaled)

        assert (report.skipped, report.copied) == (2, blobs - 2)
        await assert_copy_of(source, scaled, pushed)
