"""Settings written on two replicas at once (PostgreSQL, where writes run concurrently): the
second waits for the first's row and sets its value, never ends in a unique violation (a
500). The first transaction is held open after writing its row, so the second certainly
finds no committed row and then meets the first's (the race at its worst)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from cangku.auth.accounts import Accounts
from cangku.metadata import Connection, MetadataStore, locks, quotas, retention, visibility
from cangku.metadata import accounts as account_rows
from cangku.metadata import descriptions as description_rows
from cangku.metadata import repositories as repository_rows
from cangku.metadata import tags as tag_rows
from cangku.metadata.schema import (
    organization_members,
    repository_descriptions,
    retention_policies,
    tag_policies,
)
from cangku.metadata.schema import (
    quotas as quota_table,
)
from tests.databases import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.skipif(
    not POSTGRES_ADMIN_URL, reason="SQLite runs one write at a time: no race to lose"
)

Write = Callable[[Connection, int], None]  # (connection, value): sets the value


@pytest.fixture
async def store(store: MetadataStore) -> MetadataStore:
    """tests/metadata/conftest.py's store, prepared as `prepare` says."""
    await store.write(prepare)
    return store


def prepare(connection: Connection) -> None:
    repository_rows.ensure_repository(connection, "jimo/app")
    account_rows.insert_user(connection, "jimo", "hash", admin=False, now=1.0)
    account_rows.insert_organization(connection, "crew", now=1.0)


def set_quota(connection: Connection, value: int) -> None:
    quotas.set_quota(connection, "jimo", value)


def set_retention(connection: Connection, value: int) -> None:
    retention.set_policy(connection, "namespace", "jimo", f'{{"keep": {value}}}')


def set_description(connection: Connection, value: int) -> None:
    repository_id = repository_rows.repository_id(connection, "jimo/app")
    assert repository_id is not None
    description_rows.write_description(
        connection, repository_id, f"version {value}", None, now=1.0, actor=None
    )


def set_tag_policy(connection: Connection, value: int) -> None:
    tag_rows.write_policy(connection, "namespace", "jimo", {"floating": value == 2})


def set_membership(connection: Connection, value: int) -> None:
    organization = account_rows.organization_id(connection, "crew")
    user = account_rows.user_id(connection, "jimo")
    assert organization is not None and user is not None
    account_rows.set_membership(connection, organization, user, "admin" if value == 2 else "pull")


def stored(connection: Connection, write: Write) -> Any:
    columns: dict[Write, Any] = {
        set_quota: quota_table.c.limit_bytes,
        set_retention: retention_policies.c.rules,
        set_description: repository_descriptions.c.description,
        set_tag_policy: tag_policies.c.floating,
        set_membership: organization_members.c.role,
    }
    return connection.scalars(select(columns[write])).all()


@pytest.mark.parametrize(
    "write", [set_quota, set_retention, set_description, set_tag_policy, set_membership]
)
def test_a_setting_written_on_two_replicas_at_once_ends_with_the_second_value(
    store: MetadataStore, write: Write
) -> None:
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with store.engine.begin() as connection:
                write(connection, 2)
        except BaseException as error:  # Reported below, on the test's thread.
            errors.append(error)

    with store.engine.connect() as first:
        write(first, 1)  # Its row written, not committed.
        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.5)  # The second has found no committed row and meets the first's.
        first.commit()
        other.join(30)
    assert errors == []
    with store.engine.connect() as connection:
        expectations: dict[Write, list[object]] = {
            set_quota: [2],
            set_retention: ['{"keep": 2}'],
            set_description: ["version 2"],
            set_tag_policy: [True],
            set_membership: ["admin"],
        }
        assert stored(connection, write) == expectations[write]


async def test_visibility_chosen_while_a_first_push_creates_the_repository_is_kept(
    store: MetadataStore,
) -> None:
    accounts = Accounts(store)
    with store.engine.connect() as push:
        # A first push: the repository's lock, then its row, not committed yet.
        locks.for_repository_content(push, "jimo/new")
        repository_rows.ensure_repository(push, "jimo/new")
        choosing = asyncio.create_task(accounts.set_public("jimo/new", True))
        await asyncio.sleep(0.5)
        push.commit()
        await asyncio.wait_for(choosing, 30)
    assert await store.read(lambda c: visibility.chosen_public(c, "jimo/new")) is True
