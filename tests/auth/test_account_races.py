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
