"""PostgreSQL: a read transaction keeps the pooled connection's prepared statements.

psycopg prepares a statement run five times on a connection, and forgets them all on a
ROLLBACK; the pool ended every read with one, so every statement was planned again after
any read (issue 20). Checked to fail when a read ends with a rollback.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from cangku.metadata import Connection
from cangku.metadata import repositories as repository_rows
from cangku.metadata.schema import repositories
from cangku.registry import Registry
from tests.databases import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.skipif(
    not POSTGRES_ADMIN_URL, reason="PostgreSQL only (CANGKU_TEST_POSTGRES): psycopg's statements"
)

_QUERY = select(repositories.c.id).where(repositories.c.name == "jimo/none")
_PREPARED = text(
    "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%repositories.name =%'"
)


def _prepared(connection: Connection) -> int:
    return int(connection.execute(_PREPARED).scalar_one())


async def test_reads_keep_the_connections_prepared_statements(registry: Registry) -> None:
    store = registry.metadata
    # Sequential transactions take the pool's one connection in turn.
    for _ in range(8):
        assert await store.read(lambda connection: connection.execute(_QUERY).all()) == []
    assert await store.read(_prepared) == 1
    # A write in between (committed) keeps them too; so does the read after it.
    await store.write(lambda connection: connection.execute(_QUERY).all())
    assert await store.read(_prepared) == 1


async def test_reads_that_run_only_prepared_statements_keep_them_too(registry: Registry) -> None:
    # The hot reads run on the driver's cursor (metadata/prepared.py): they must end with a
    # COMMIT as well, not leave psycopg's implicit transaction to the pool's ROLLBACK.
    store = registry.metadata
    for _ in range(8):
        found = await store.read(lambda c: repository_rows.repository_id(c, "jimo/none"))
        assert found is None
    assert await store.read(_prepared) == 1
