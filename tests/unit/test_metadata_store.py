"""MetadataStore: concurrent writes are committed together, each refused one alone; SQLite
reads on the event loop keep one connection and still see every commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError

from cangku.metadata.schema import repositories
from cangku.metadata.store import MetadataStore, sqlite_url


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MetadataStore]:
    opened = MetadataStore.open(sqlite_url(tmp_path))
    yield opened
    await opened.close()


def add(name: str) -> Callable[[Connection], str]:
    def work(connection: Connection) -> str:
        connection.execute(insert(repositories).values(name=name, created_at=0.0))
        return name

    return work


async def test_concurrent_writes_each_get_their_own_outcome(store: MetadataStore) -> None:
    await store.write(add("taken"))
    names = [f"repo{i}" for i in range(40)]
    outcomes = await asyncio.gather(
        *(store.write(add(name)) for name in [*names[:20], "taken", *names[20:]]),
        return_exceptions=True,
    )
    assert [o for o in outcomes if isinstance(o, Exception)] and isinstance(
        outcomes[20], IntegrityError
    )
    assert [o for o in outcomes if not isinstance(o, Exception)] == names
    count = await store.read(lambda c: c.scalar(select(func.count()).select_from(repositories)))
    assert count == 41  # every write but the refused one, and nothing of that one


async def test_a_refused_write_leaves_nothing_half_written(store: MetadataStore) -> None:
    def half(connection: Connection) -> None:
        connection.execute(insert(repositories).values(name="first-half", created_at=0.0))
        raise ValueError("refused after the first insert")

    results = await asyncio.gather(
        store.write(half), store.write(add("other")), return_exceptions=True
    )
    assert isinstance(results[0], ValueError) and results[1] == "other"
    names = await store.read(lambda c: c.scalars(select(repositories.c.name)).all())
    assert names == ["other"]


async def test_a_refused_lone_write_rolls_back_and_the_writer_goes_on(
    store: MetadataStore,
) -> None:
    def half(connection: Connection) -> None:
        connection.execute(insert(repositories).values(name="first-half", created_at=0.0))
        raise ValueError("refused after the first insert")

    with pytest.raises(ValueError):
        await store.write(half)
    assert await store.write(add("next")) == "next"
    names = await store.read(lambda c: c.scalars(select(repositories.c.name)).all())
    assert names == ["next"]


async def test_writes_after_close_open_a_new_writer(store: MetadataStore) -> None:
    await store.write(add("before"))
    await store.close()
    await store.write(add("after"))
    names = await store.read(lambda c: c.scalars(select(repositories.c.name)).all())
    assert names == ["before", "after"]


async def test_close_lets_queued_writes_commit_first(store: MetadataStore) -> None:
    queued = [asyncio.ensure_future(store.write(add(f"queued{i}"))) for i in range(5)]
    await asyncio.sleep(0)  # queued, perhaps running
    await store.close()
    assert all(task.done() for task in queued)
    names = await store.read(lambda c: c.scalars(select(repositories.c.name)).all())
    assert sorted(names) == [f"queued{i}" for i in range(5)]


class Halt(BaseException):
    """Not an Exception: it ends the writer task, as a cancellation would."""


async def test_writes_queued_behind_a_fatal_error_end_instead_of_waiting(
    store: MetadataStore,
) -> None:
    def fatal(connection: Connection) -> None:
        raise Halt

    first = asyncio.ensure_future(store.write(fatal))
    await asyncio.sleep(0)  # its batch is on the way to the writer thread
    behind = asyncio.ensure_future(store.write(add("behind")))
    _, pending = await asyncio.wait([first, behind], timeout=10)
    assert not pending, "a write queued behind the fatal one was left waiting"
    assert isinstance(first.exception(), Halt)
    assert behind.cancelled()
    assert await store.write(add("later")) == "later"  # a new writer task takes over


def count_checkouts(store: MetadataStore) -> list[int]:
    checkouts = [0]

    def checked_out(*_: object) -> None:
        checkouts[0] += 1

    event.listen(store.engine, "checkout", checked_out)
    return checkouts


async def test_reads_on_the_event_loop_keep_one_connection(store: MetadataStore) -> None:
    # A pool checkout and checkin cost ~30 µs, more than a typical read.
    await store.read(lambda c: c.scalar(select(func.count()).select_from(repositories)))
    checkouts = count_checkouts(store)
    for _ in range(10):
        await store.read(lambda c: c.scalar(select(func.count()).select_from(repositories)))
        await store.read_cached(
            ("names", _), lambda c: c.scalars(select(repositories.c.name)).all()
        )
    assert checkouts[0] == 0


async def test_the_kept_read_connection_sees_every_commit(
    store: MetadataStore, tmp_path: Path
) -> None:
    def count(connection: Connection) -> int:
        return int(connection.scalar(select(func.count()).select_from(repositories)) or 0)

    assert await store.read(count) == 0
    await store.write(add("ours"))
    assert await store.read(count) == 1
    other = MetadataStore.open(sqlite_url(tmp_path))  # another process's connections
    try:
        await other.write(add("theirs"))
    finally:
        await other.close()
    assert await store.read(count) == 2
    assert await store.read(lambda c: c.scalars(select(repositories.c.name)).all()) == [
        "ours",
        "theirs",
    ]


async def test_a_failed_read_does_not_spoil_the_next(store: MetadataStore) -> None:
    await store.write(add("one"))

    def broken(connection: Connection) -> None:
        connection.execute(text("SELECT no_such_column FROM repositories"))

    with pytest.raises(OperationalError):
        await store.read(broken)
    assert await store.read(lambda c: c.scalars(select(repositories.c.name)).all()) == ["one"]


async def test_reads_on_another_thread_use_a_connection_of_their_own(
    store: MetadataStore,
) -> None:
    await store.write(add("one"))
    names = await store.read(lambda c: c.scalars(select(repositories.c.name)).all())
    checkouts = count_checkouts(store)

    def elsewhere() -> list[str]:
        # Another event loop in another thread (a metrics scrape, a test's own loop).
        return asyncio.run(store.read(lambda c: list(c.scalars(select(repositories.c.name)))))

    assert await asyncio.to_thread(elsewhere) == names == ["one"]
    assert checkouts[0] == 1


async def test_a_write_transaction_holds_the_write_lock_from_its_start(
    store: MetadataStore, tmp_path: Path
) -> None:
    # BEGIN IMMEDIATE: another process's writer waits (busy timeout) from the first moment,
    # not only once this transaction has written something.
    def attempt_elsewhere(connection: Connection) -> str:
        assert connection.connection.driver_connection.in_transaction  # type: ignore[union-attr]
        other = sqlite3.connect(tmp_path / "cangku.db", timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            return str(error)
        finally:
            other.close()
        return "not locked"

    assert await store.write(attempt_elsewhere) == "database is locked"
