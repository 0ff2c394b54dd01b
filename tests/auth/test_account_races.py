"""Accounts created at the same moment on two replicas over one database: the clean refusal a
single process gives ("already a user"), never a unique violation (a 500), and never a user
and an organization of one name."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from cangku.auth.accounts import AccountError, Accounts
from cangku.metadata import accounts as account_rows
from cangku.metadata import locks
from cangku.metadata.store import MetadataStore
from tests.databases import fresh_database

PASSWORD = "a long enough password 1"


@pytest.fixture
async def two_replicas(tmp_path: Path) -> AsyncIterator[tuple[Accounts, Accounts]]:
    with fresh_database(tmp_path) as url:
        first, second = MetadataStore.open(url), MetadataStore.open(url)
        try:
            yield Accounts(first), Accounts(second)
        finally:
            await first.close()
            await second.close()


@pytest.fixture
def checks_meet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each "is the name taken?" waits (up to a second) for another: without a lock both
    transactions have checked before either inserts, the race at its worst."""
    barrier = threading.Barrier(2, timeout=1.0)
    holder = account_rows.namespace_holder

    def meeting(connection, name):
        found = holder(connection, name)
        # Broken: the other waits for our lock, nothing to meet.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return found

    monkeypatch.setattr(account_rows, "namespace_holder", meeting)


async def outcomes(*attempts: Awaitable[None]) -> list[str]:
    results = await asyncio.gather(*attempts, return_exceptions=True)
    described = []
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, AccountError):
            raise result
        described.append("refused" if isinstance(result, AccountError) else "created")
    return sorted(described)


async def test_one_user_created_on_two_replicas_at_once_is_created_once(
    two_replicas: tuple[Accounts, Accounts], checks_meet: None
) -> None:
    first, second = two_replicas
    assert await outcomes(first.add_user("jimo", PASSWORD), second.add_user("jimo", PASSWORD)) == [
        "created",
        "refused",
    ]
    assert [user.name for user in await first.list_users()] == ["jimo"]


async def test_a_user_and_an_organization_of_one_name_at_once_end_with_one_of_them(
    two_replicas: tuple[Accounts, Accounts], checks_meet: None
) -> None:
    first, second = two_replicas
    assert await outcomes(first.add_user("jimo", PASSWORD), second.add_organization("jimo")) == [
        "created",
        "refused",
    ]


async def test_one_organization_created_on_two_replicas_at_once_is_created_once(
    two_replicas: tuple[Accounts, Accounts], checks_meet: None
) -> None:
    first, second = two_replicas
    assert await outcomes(first.add_organization("crew"), second.add_organization("crew")) == [
        "created",
        "refused",
    ]


async def test_a_large_htpasswd_import_takes_its_name_locks_in_bounded_batches(
    two_replicas: tuple[Accounts, Accounts], monkeypatch: pytest.MonkeyPatch
) -> None:
    """7,000 names, one advisory lock each: one transaction took them all, and PostgreSQL's
    shared lock table (max_locks_per_transaction 64 x max_connections 100 by default, with
    some slack: one transaction failed between 12,000 and 20,000 on the test server) ran
    out ("out of shared memory"), sooner with other sessions holding locks. Now at most a
    batch's worth per transaction. Two replicas import overlapping files at once: every
    name is created once, the other's refusal is a skip, never a unique violation."""
    first, second = two_replicas
    taken: list[int] = []
    hold = locks.hold

    def counting(connection, **arguments):
        taken.append(len(arguments.get("namespaces") or []))
        return hold(connection, **arguments)

    monkeypatch.setattr(locks, "hold", counting)
    hashed = "$2y$04$" + "a" * 53  # Never checked on import: only stored.
    names = [f"imported{number}" for number in range(7000)]
    text = "".join(f"{name}:{hashed}\n" for name in names)
    overlap = "".join(f"{name}:{hashed}\n" for name in names[6500:]) + f"late:{hashed}\n"
    (added, skipped), (other_added, other_skipped) = await asyncio.gather(
        first.import_htpasswd(text), second.import_htpasswd(overlap)
    )
    assert sorted(added + other_added) == sorted([*names, "late"])
    assert len(skipped) + len(other_skipped) == 500
    assert all("already a user" in reason for reason in skipped + other_skipped)
    assert max(taken) <= 1000  # Not 7,000 in one transaction.
    assert len(taken) >= 8
    assert len(await first.list_users()) == 7001
