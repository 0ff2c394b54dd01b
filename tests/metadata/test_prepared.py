"""metadata/prepared.py on a real database (SQLite, or PostgreSQL per tests/databases.py):
the same results as `Connection.execute`, in the caller's transaction, errors translated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, event, insert, select, update
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.exc import IntegrityError

from cangku.metadata import Connection, MetadataStore
from cangku.metadata import prepared as prepared_module
from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import repositories, tags, users
from tests.databases import same_database

_REPOSITORY = insert(repositories).values(name=bindparam("name"), created_at=bindparam("at"))
_TAG = insert(tags).values(
    repository_id=bindparam("repository_id"),
    name=bindparam("name"),
    manifest_digest=bindparam("digest"),
    updated_at=1.5,
    version_key=bindparam("key"),
    client_managed=bindparam("managed"),
)
# Types with processors on some database (Boolean, LargeBinary, Float), a literal of the
# statement (`== True`), an expanding IN list and a LIMIT parameter.
_TAGS = (
    select(tags.c.name, tags.c.client_managed, tags.c.version_key, tags.c.updated_at)
    .where(
        tags.c.repository_id == bindparam("repository_id"),
        tags.c.name.in_(bindparam("names", expanding=True)),
    )
    .order_by(tags.c.name)
    .limit(bindparam("limit"))
)
_MANAGED = select(tags.c.name).where(tags.c.client_managed == True)  # noqa: E712
_REPOSITORY_ID = select(repositories.c.id).where(repositories.c.name == bindparam("name"))
_RENAME = update(repositories).where(repositories.c.name == bindparam("old")).values(name="renamed")


@contextmanager
def sqlalchemy_execute_refused() -> Iterator[None]:
    """`Connection.execute` raises inside the block: proof that the driver's cursor ran."""
    original = SAConnection.execute

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("went through Connection.execute")

    SAConnection.execute = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        SAConnection.execute = original  # type: ignore[method-assign]


async def fill(store: MetadataStore) -> int:
    def work(connection: Connection) -> int:
        connection.execute(_REPOSITORY, {"name": "jimo/app", "at": 1.0})
        repository_id = int(connection.execute(_REPOSITORY_ID, {"name": "jimo/app"}).scalar_one())
        for name, managed, key in (("a", True, b"\x00\x01"), ("b", False, None), ("c", None, b"")):
            parameters = {"name": name, "managed": managed, "key": key}
            connection.execute(
                _TAG, {**parameters, "repository_id": repository_id, "digest": f"sha256:{name}"}
            )
        return repository_id

    return await store.write(work)


async def test_results_are_those_of_sqlalchemy_for_every_shape_and_type(
    store: MetadataStore,
) -> None:
    repository_id = await fill(store)
    prepared = Prepared(_TAGS)
    for names, limit in (
        (["a", "b", "c"], 10),
        (["c", "a"], 10),
        (["b"], 10),
        ([], 10),
        (["a", "b", "c"], 2),
    ):
        parameters = {"repository_id": repository_id, "names": names, "limit": limit}
        expected = await store.read(
            lambda c, p=parameters: [tuple(row) for row in c.execute(_TAGS, p)]  # type: ignore[misc]
        )
        with sqlalchemy_execute_refused():
            got = await store.read(lambda c, p=parameters: prepared.rows(c, p))  # type: ignore[misc]
        assert got == expected
        assert all(
            type(g) is type(e)
            for row, other in zip(got, expected, strict=True)
            for g, e in zip(row, other, strict=True)
        )
    with sqlalchemy_execute_refused():
        rows = await store.read(
            lambda c: prepared.rows(
                c, {"repository_id": repository_id, "names": ["a", "b", "c"], "limit": 9}
            )
        )
        assert rows == [
            ("a", True, b"\x00\x01", 1.5),
            ("b", False, None, 1.5),
            ("c", None, b"", 1.5),
        ]
        assert await store.read(lambda c: Prepared(_MANAGED).scalars(c)) == ["a"]
        assert await store.read(
            lambda c: Prepared(_REPOSITORY_ID).first(c, {"name": "jimo/app"})
        ) == (repository_id,)
        assert (
            await store.read(lambda c: Prepared(_REPOSITORY_ID).scalar(c, {"name": "nothing"}))
            is None
        )


async def test_it_runs_inside_the_callers_transaction(store: MetadataStore) -> None:
    await fill(store)
    rename = Prepared(_RENAME)

    def rename_then_fail(connection: Connection) -> None:
        assert rename.run(connection, {"old": "jimo/app"}) == 1
        assert connection.scalar(_REPOSITORY_ID, {"name": "renamed"}) is not None
        raise RuntimeError("refused after the update")

    with pytest.raises(RuntimeError):
        await store.write(rename_then_fail)
    names = await store.read(lambda c: list(c.scalars(select(repositories.c.name))))
    assert names == ["jimo/app"]
    with sqlalchemy_execute_refused():
        assert await store.write(lambda c: rename.run(c, {"old": "jimo/app"})) == 1
    assert await store.read(lambda c: list(c.scalars(select(repositories.c.name)))) == ["renamed"]


async def test_a_driver_error_is_sqlalchemys_and_the_connection_stays_usable(
    store: MetadataStore,
) -> None:
    await fill(store)
    insert_repository = Prepared(_REPOSITORY)
    with pytest.raises(IntegrityError):
        await store.write(lambda c: insert_repository.run(c, {"name": "jimo/app", "at": 2.0}))
    assert await store.write(lambda c: insert_repository.run(c, {"name": "jimo/b", "at": 2.0})) == 1
    count = await store.read(lambda c: len(Prepared(_REPOSITORY_ID).rows(c, {"name": "jimo/b"})))
    assert count == 1


async def test_statement_listeners_see_every_statement(store: MetadataStore) -> None:
    repository_id = await fill(store)
    seen: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    parameters = {"repository_id": repository_id, "names": ["a", "c"], "limit": 5}
    event.listen(store.engine, "before_cursor_execute", record)
    try:
        rows = await store.read(lambda c: Prepared(_TAGS).rows(c, parameters))
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert [row[0] for row in rows] == ["a", "c"]
    assert len(seen) == 1 and "FROM tags" in seen[0]


def test_a_statement_with_literal_rendered_parameters_is_refused(tmp_path: Path) -> None:
    literal = select(tags.c.name).limit(bindparam("limit", literal_execute=True))
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with store.engine.connect() as connection, pytest.raises(ValueError, match="literal"):
            Prepared(literal).rows(connection, {"limit": 1})
    finally:
        store.engine.dispose()


async def test_rows_answer_to_column_names_and_inserts_take_the_columns_given(
    store: MetadataStore,
) -> None:
    repository_id = await fill(store)
    bare_insert = Prepared(insert(repositories))  # Compiled for the keys given, as execute.
    rows = [{"name": "jimo/b", "created_at": 2.0}, {"name": "jimo/c", "created_at": 3.0}]
    with sqlalchemy_execute_refused():
        await store.write(lambda c: bare_insert.run_many(c, rows))
        await store.write(lambda c: bare_insert.run_many(c, []))
        await store.write(lambda c: bare_insert.run(c, {"name": "jimo/d", "created_at": 4.0}))
        row = await store.read(
            lambda c: Prepared(_TAGS).first(
                c, {"repository_id": repository_id, "names": ["a"], "limit": 1}
            )
        )
    assert (row.name, row.client_managed, row.version_key) == ("a", True, b"\x00\x01")
    found = await store.read(
        lambda c: [tuple(r) for r in c.execute(select(repositories.c.name, repositories.c.public))]
    )
    assert sorted(found) == [
        ("jimo/app", None),
        ("jimo/b", None),
        ("jimo/c", None),
        ("jimo/d", None),
    ]


def test_a_statement_with_python_side_defaults_is_refused(tmp_path: Path) -> None:
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with store.engine.connect() as connection, pytest.raises(ValueError, match="defaults"):
            Prepared(insert(users)).run(connection, {"name": "jimo", "password_hash": "x"})
    finally:
        store.engine.dispose()


async def test_reads_see_what_another_connection_committed_in_between(
    store: MetadataStore,
) -> None:
    await fill(store)
    other = MetadataStore.open(same_database(store))
    lookup = Prepared(_REPOSITORY_ID)
    try:
        assert await store.read(lambda c: lookup.scalar(c, {"name": "jimo/other"})) is None
        await other.write(lambda c: c.execute(_REPOSITORY, {"name": "jimo/other", "at": 2.0}))
        assert await store.read(lambda c: lookup.scalar(c, {"name": "jimo/other"})) is not None
    finally:
        await other.close()


def test_a_named_parameter_left_out_is_refused(tmp_path: Path) -> None:
    # Planned without it, a later call's value for it would be ignored.
    with_default = select(tags.c.name).where(tags.c.name == bindparam("name", value="a"))
    store = MetadataStore.open(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with store.engine.connect() as connection:
            with pytest.raises(ValueError, match="'name'"):
                Prepared(with_default).rows(connection, {})
            assert Prepared(with_default).rows(connection, {"name": "b"}) == []
    finally:
        store.engine.dispose()


async def test_the_plans_kept_per_statement_stay_bounded_whatever_the_list_lengths(
    store: MetadataStore,
) -> None:
    # The lengths of IN lists come from request bodies (a manifest's descriptors): a plan kept
    # for each new length grew without bound (1,500 lengths held 119 MB).
    repository_id = await fill(store)
    prepared = Prepared(_TAGS)

    def run_every_length(connection: Connection) -> list[list[Any]]:
        return [
            prepared.rows(
                connection,
                {
                    "repository_id": repository_id,
                    "names": ["a", *(f"absent-{index}" for index in range(length)), "c"],
                    "limit": 9,
                },
            )
            for length in range(0, 2 * prepared_module.MAX_PLANS + 300, 3)
        ]

    with sqlalchemy_execute_refused():
        answers = await store.read(run_every_length)
    assert all([row.name for row in rows] == ["a", "c"] for rows in answers)
    (compiled,) = [found for _dialect, found in prepared._by_dialect.values()]
    assert 0 < len(compiled.plans) <= prepared_module.MAX_PLANS
    assert all(sum(shape) <= prepared_module.MAX_PLANNED_VALUES for shape in compiled.plans)
