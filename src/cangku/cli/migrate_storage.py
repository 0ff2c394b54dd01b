"""`cangku migrate-storage --to CONFIG`: copy a whole registry into other stores (issue 15).

The source is the registry `--data`/`--config` name (as for every command); the target is
the one the YAML file CONFIG describes: typically SQLite + the data directory into
PostgreSQL + S3, or back, but any pair of databases and blob drivers works. Run it with the
source's server stopped (or at least taking no pushes): what changes during the copy may
be missing from the target (docs/scale-out.md).

The order makes it safe to interrupt and resume:

1. Both schemas are brought to the newest migration (the target's created if empty).
2. The target is checked: it must hold nothing, or be an unfinished run from this same
   source (the `storage_migrations` row says which), or `--overwrite` was given.
3. Every recorded blob is copied, streamed and verified against its digest by the target
   driver's `write_blob` before it becomes visible there; a blob the target already holds at
   the recorded size is skipped (a driver never shows a blob whose bytes it did not verify),
   so a second run copies only what the first did not.
4. The metadata rows are synchronised in one transaction on the target (all or nothing):
   afterwards the target's tables hold exactly the source's rows (`metadata/copying.py`).
5. Blobs recorded meanwhile are copied too, and the run is marked finished.

The data directory's signing keys (`token-signing-key.pem`, `web-session-key`) are copied
into the target's data directory when it has none, so tokens and sign-ins stay valid.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from cangku.config import Settings, load_settings
from cangku.content.digest import Digest
from cangku.content.errors import DigestInvalid, SizeInvalid
from cangku.metadata import copying
from cangku.metadata.store import MetadataStore, describe_database, sqlite_url
from cangku.storage import BlobStorage, open_storage
from cangku.storage.base import UploadAborted

HELP = """\
Copy the registry of --data/--config (metadata rows and blobs) into the database and blob
store the YAML file CONFIG configures: e.g. SQLite + the data directory into PostgreSQL +
S3, or back. Every blob is verified against its digest while it streams. Interrupted, it
resumes where it stopped when run again. Stop the source's server first. See
docs/scale-out.md."""

# Blobs copied at once: enough to keep an object store busy, few enough for a small machine.
COPIES_AT_ONCE = 4
PAGE = 200
# Data-directory secrets the target's servers need to accept what the source's issued.
KEY_FILES = ("token-signing-key.pem", "web-session-key")


class MigrationRefused(Exception):
    """The target is not one this command may write to; the message says why and what to do."""


@dataclass
class Side:
    """One registry: its settings, metadata database and blob store."""

    settings: Settings
    url: str
    metadata: MetadataStore
    storage: BlobStorage

    @property
    def database(self) -> str:
        return describe_database(self.url)

    @property
    def blob_store(self) -> str:
        storage = self.settings.storage
        if storage.driver == "s3":
            assert storage.s3 is not None
            where = storage.s3.endpoint or "aws"
            return f"s3:{where}/{storage.s3.bucket}/{storage.s3.prefix}"
        return f"filesystem:{self.settings.data.resolve()}"

    @property
    def description(self) -> str:
        """Identifies the registry in the target's `storage_migrations` (no secrets)."""
        return f"{self.database} + {self.blob_store}"


@dataclass
class Report:
    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    rows: dict[str, copying.TableChanges] = field(default_factory=dict)


def add_command(command: argparse.ArgumentParser) -> None:
    command.description = HELP
    command.add_argument(
        "--to", type=Path, required=True, metavar="CONFIG", help="the target's YAML configuration"
    )
    command.add_argument(
        "--overwrite",
        action="store_true",
        help="make a target that already holds a registry a copy of the source: its rows are "
        "replaced (its blobs are kept; gc removes those nothing records)",
    )
    command.add_argument(
        "--no-progress", action="store_true", help="no progress bar (also off when not a terminal)"
    )


async def migrate_storage_run(settings: Settings, args: argparse.Namespace) -> int:
    # The target comes from its file alone: CANGKU_* variables describe the source.
    target_settings = load_settings(args.to, environment=False)
    console = Console(stderr=True, quiet=args.no_progress)
    try:
        report = await migrate(settings, target_settings, console=console, overwrite=args.overwrite)
    except MigrationRefused as refusal:
        print(f"cangku: {refusal}", file=sys.stderr)
        return 1
    rows = sum(changes.total for changes in report.rows.values())
    print(
        f"blobs: {report.copied} copied ({report.copied_bytes} bytes), {report.skipped} already "
        f"there ({report.skipped_bytes} bytes); rows: {rows} changed"
    )
    if report.missing or report.damaged:
        for digest in report.missing:
            print(f"missing in the source: {digest}", file=sys.stderr)
        for digest in report.damaged:
            print(f"damaged in the source (digest or size differs): {digest}", file=sys.stderr)
        print(
            "cangku: not finished: the source records blobs it cannot give whole; the rows "
            "were not copied (run `cangku gc` or delete the images that need them, then run "
            "migrate-storage again)",
            file=sys.stderr,
        )
        return 1
    return 0


def open_side(settings: Settings) -> Side:
    """A registry's stores, its schema migrated to the newest revision (created if empty)."""
    settings.data.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = settings.database_url or sqlite_url(settings.data)
    return Side(
        settings, url, MetadataStore.open(url), open_storage(settings.storage, settings.data)
    )


async def migrate(
    source_settings: Settings,
    target_settings: Settings,
    *,
    console: Console | None = None,
    overwrite: bool = False,
) -> Report:
    """Copy the registry `source_settings` name into the stores of `target_settings`.

    Raises MigrationRefused (before writing anything) when both name the same database, or
    the target holds a registry that is not an earlier run from this source and `overwrite`
    is false. Blobs the source records but cannot give whole are listed in the report's
    `missing` and `damaged`; then the rows are not copied and the run stays unfinished.
    """
    console = console or Console(stderr=True, quiet=True)
    source = await anyio.to_thread.run_sync(open_side, source_settings)
    try:
        target = await anyio.to_thread.run_sync(open_side, target_settings)
    except BaseException:
        await source.metadata.close()
        raise
    try:
        return await _migrate(source, target, console, overwrite)
    finally:
        await target.metadata.close()
        await source.metadata.close()


async def _migrate(source: Side, target: Side, console: Console, overwrite: bool) -> Report:
    if source.database == target.database:
        raise MigrationRefused(
            f"source and target are the same database ({source.database}): the target needs "
            "a database of its own"
        )
    runs = await target.metadata.read(copying.migration_sources)
    if not overwrite:
        if source.description not in runs:
            await _refuse_unless_empty(source, target, runs)
        elif (finished := runs[source.description]) is not None:
            # A finished copy may have taken pushes since; a new run would drop them.
            raise MigrationRefused(
                f"the target is a finished copy of this registry (finished "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(finished))}); pass "
                "--overwrite to copy again (rows written to the target since are replaced)"
            )
    await target.metadata.write(
        lambda connection: copying.start_migration(connection, source.description, time.time())
    )
    _copy_key_files(source.settings, target.settings, console)
    report = Report()
    await _copy_blobs(source, target, report, console, "blobs")
    if report.missing or report.damaged:
        return report
    report.rows = await anyio.to_thread.run_sync(
        copying.synchronise_databases, source.metadata.engine, target.metadata.engine
    )
    # Blobs recorded while the first pass ran (the source was not quiet): copy them too.
    await _copy_blobs(source, target, report, console, "blobs recorded meanwhile")
    if not (report.missing or report.damaged):
        await target.metadata.write(
            lambda connection: copying.finish_migration(connection, source.description, time.time())
        )
    return report


async def _refuse_unless_empty(source: Side, target: Side, runs: dict[str, float | None]) -> None:
    if runs:
        raise MigrationRefused(
            f"the target ({target.description}) was migrated into from another registry "
            f"({', '.join(sorted(runs))}); pass --overwrite to make it a copy of this one"
        )
    if await target.metadata.read(copying.holds_rows):
        raise MigrationRefused(
            f"the target database ({target.database}) already holds a registry; pass "
            "--overwrite to replace its rows with the source's"
        )
    if target.blob_store == source.blob_store:
        return  # Only the database moves: the blobs there are the source's own.
    async for digest, _, _ in target.storage.iterate():
        raise MigrationRefused(
            f"the target blob store ({target.blob_store}) already holds blobs ({digest}, …); "
            "pass --overwrite to copy into it anyway"
        )


def _copy_key_files(source: Settings, target: Settings, console: Console) -> None:
    if source.data.resolve() == target.data.resolve():
        return
    for name in KEY_FILES:
        if name == "token-signing-key.pem" and (source.auth.token_key or target.auth.token_key):
            continue  # Configured explicitly: the operator places it.
        origin, destination = source.data / name, target.data / name
        if not origin.is_file():
            continue
        if destination.exists():
            if destination.read_bytes() != origin.read_bytes():
                console.print(
                    f"[yellow]{destination} differs from {origin}: tokens or sign-ins the "
                    "source issued will not be accepted by the target[/]",
                )
            continue
        # Written aside and linked into place, mode 0600, as keyfiles.read_or_create does.
        temporary = destination.with_name(f".{name}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(origin.read_bytes())
        try:
            os.link(temporary, destination)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()


async def _copy_blobs(
    source: Side, target: Side, report: Report, console: Console, label: str
) -> None:
    count, total = await source.metadata.read(copying.blob_totals)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} B"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    limit = asyncio.Semaphore(COPIES_AT_ONCE)
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{label} ({count})", total=total)

        async def copy_one(digest: str, size: int) -> None:
            async with limit:
                await _copy_blob(source, target, digest, size, report, progress, task)

        after = ""
        while page := await source.metadata.read(
            functools.partial(copying.recorded_blobs_after, after=after, limit=PAGE)
        ):
            after = page[-1][0]
            todo = [(digest, size) for digest, size in page if digest not in report.done]
            progress.advance(task, sum(size for digest, size in page if digest in report.done))
            # A task group: when one copy fails unexpectedly, the others are cancelled
            # rather than left running behind the error.
            async with asyncio.TaskGroup() as group:
                for digest, size in todo:
                    group.create_task(copy_one(digest, size))


async def _copy_blob(
    source: Side,
    target: Side,
    recorded: str,
    size: int,
    report: Report,
    progress: Progress,
    task: TaskID,
) -> None:
    try:
        digest = Digest.parse(recorded)
    except DigestInvalid:
        report.damaged.append(recorded)
        return
    if await target.storage.stat(digest) == size:
        report.skipped += 1
        report.skipped_bytes += size
        report.done.add(recorded)
        progress.advance(task, size)
        return
    if await source.storage.stat(digest) is None:
        report.missing.append(recorded)
        return

    async def counted() -> AsyncIterator[bytes]:
        async for chunk in source.storage.read(digest):
            progress.advance(task, len(chunk))
            yield chunk

    try:
        # The target driver hashes the bytes as they stream and publishes the blob only if
        # they match `digest` and `size` (DigestInvalid, SizeInvalid, UploadAborted if not).
        await target.storage.write_blob(counted(), digest, size)
    except (DigestInvalid, SizeInvalid, UploadAborted):
        report.damaged.append(recorded)
        return
    report.copied += 1
    report.copied_bytes += size
    report.done.add(recorded)
