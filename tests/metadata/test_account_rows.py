"""The account row modules on a real database (SQLite, or PostgreSQL per tests/databases.py):
users, browser sessions, visibility and what a namespace holds."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select

from cangku.metadata import Connection, MetadataStore, namespaces, visibility, web_sessions
from cangku.metadata import accounts as rows
from cangku.metadata.schema import quotas, repositories, tag_policies


async def test_a_user_update_without_a_field_is_refused_and_changes_nothing(
    store: MetadataStore,
) -> None:
    await store.write(lambda c: rows.insert_user(c, "jimo", "hash", admin=False, now=1.0))
    with pytest.raises(ValueError, match="at least one field"):
        await store.write(lambda c: rows.update_user(c, "jimo"))
    assert await store.read(lambda c: rows.stored_password(c, "jimo")) == rows.StoredPassword(
        "hash", False
    )
    assert await store.write(lambda c: rows.update_user(c, "nobody", disabled=True)) == 0


async def test_a_new_session_sweeps_expired_ones_and_the_one_it_replaces(
    store: MetadataStore,
) -> None:
    def setup(connection: Connection) -> None:
        rows.insert_user(connection, "jimo", "hash", admin=False, now=0.0)
        rows.insert_user(connection, "lee", "hash", admin=False, now=0.0)
        jimo, lee = rows.user_id(connection, "jimo"), rows.user_id(connection, "lee")
        assert jimo is not None and lee is not None
        web_sessions.start(connection, "old-lee", lee, now=10.0, expired_before=0.0)
        web_sessions.start(connection, "fresh-lee", lee, now=100.0, expired_before=0.0)
        web_sessions.start(connection, "jimo-1", jimo, now=100.0, expired_before=0.0)

    await store.write(setup)
    jimo = await store.read(lambda c: rows.user_id(c, "jimo"))
    assert jimo is not None
    await store.write(
        lambda c: web_sessions.start(
            c, "jimo-2", jimo, now=110.0, expired_before=50.0, replaces="jimo-1"
        )
    )
    owners = await store.read(
        lambda c: {
            key: web_sessions.owner(c, key) for key in ("old-lee", "fresh-lee", "jimo-1", "jimo-2")
        }
    )
    assert owners == {"old-lee": None, "fresh-lee": "lee", "jimo-1": None, "jimo-2": "jimo"}
    await store.write(lambda c: web_sessions.end(c, "jimo-2"))
    assert await store.read(lambda c: web_sessions.owner(c, "jimo-2")) is None


async def test_visibility_is_unchosen_until_set_and_set_creates_the_row(
    store: MetadataStore,
) -> None:
    assert await store.read(lambda c: visibility.chosen_public(c, "jimo/app")) is None
    await store.write(lambda c: visibility.set_public(c, "jimo/app", True, now=1.0))
    await store.write(lambda c: visibility.set_public(c, "jimo/app", False, now=2.0))
    assert await store.read(lambda c: visibility.chosen_public(c, "jimo/app")) is False
    created = await store.read(
        lambda c: c.execute(select(repositories.c.name, repositories.c.created_at)).all()
    )
    assert [tuple(row) for row in created] == [("jimo/app", 1.0)]


async def test_a_namespace_holds_only_its_own_names_even_with_like_wildcards(
    store: MetadataStore,
) -> None:
    """`a_b` must not reach `axb/...` (`_` is a LIKE wildcard) nor `a_bc` (a longer name)."""
    names = ["a_b", "a_b/app", "a_b/team/app", "axb/app", "a_bc/app", "a_bc"]

    def setup(connection: Connection) -> None:
        for name in names:
            connection.execute(insert(repositories).values(name=name, created_at=0.0))
            connection.execute(
                insert(tag_policies).values(scope="repository", name=name, floating=True)
            )
        for namespace in ("a_b", "axb", "a_bc"):
            connection.execute(
                insert(quotas).values(namespace=namespace, limit_bytes=1, updated_at=0.0)
            )
            connection.execute(
                insert(tag_policies).values(scope="namespace", name=namespace, floating=True)
            )

    await store.write(setup)
    held = await store.read(lambda c: namespaces.repository_ids(c, "a_b"))
    assert len(held) == 3
    await store.write(lambda c: namespaces.forget(c, "a_b", held))

    def left(connection: Connection) -> tuple[list[str], list[tuple[str, str]], list[str]]:
        return (
            sorted(connection.scalars(select(repositories.c.name))),
            sorted((row.scope, row.name) for row in connection.execute(select(tag_policies))),
            sorted(connection.scalars(select(quotas.c.namespace))),
        )

    assert await store.read(left) == (
        ["a_bc", "a_bc/app", "axb/app"],
        [
            ("namespace", "a_bc"),
            ("namespace", "axb"),
            ("repository", "a_bc"),
            ("repository", "a_bc/app"),
            ("repository", "axb/app"),
        ],
        ["a_bc", "axb"],
    )
