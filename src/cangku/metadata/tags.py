"""Rows of `tags`, `tag_history` and `tag_policies`: every SQL statement on tags.

The rules (which tags move, the floating-tag policy, the history's reasons) live in
registry/tags.py, which calls these. Plain functions over a `Connection`; the caller holds
the transaction. The floating-tag reads are index seeks (ix_tags_release, ix_tags_version,
issue 20): their cost does not grow with the number of versions a repository holds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BindParameter,
    Boolean,
    Float,
    LargeBinary,
    Row,
    Select,
    String,
    bindparam,
    cast,
    delete,
    insert,
    literal,
    null,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import tag_history, tag_policies, tags
from cangku.metadata.upserts import upsert

# Statements built once (building one costs more than running it on SQLite).
_POLICY_ROWS = select(
    tag_policies.c.scope, tag_policies.c.floating, tag_policies.c.immutable_versions
).where(
    ((tag_policies.c.scope == "repository") & (tag_policies.c.name == bindparam("repository")))
    | ((tag_policies.c.scope == "namespace") & (tag_policies.c.name == bindparam("namespace")))
)
_NAMES = (
    select(tags.c.name)
    .where(tags.c.repository_id == bindparam("repository_id"), tags.c.name > bindparam("after"))
    .order_by(tags.c.name)
    .limit(bindparam("limit"))
)
_TAG_DIGEST = select(tags.c.manifest_digest).where(
    tags.c.repository_id == bindparam("repository_id"), tags.c.name == bindparam("tag")
)


# The newest release of a line: one seek in ix_tags_release. Among releases of equal
# precedence (they differ in build metadata) the one changed last wins.
def _newest_release_of(prefix: str | BindParameter[str]) -> Select[str, str, bytes, float]:
    return (
        select(tags.c.name, tags.c.manifest_digest, tags.c.release_key, tags.c.updated_at)
        .where(
            tags.c.repository_id == bindparam("repository_id"),
            tags.c.version_prefix == prefix,
            tags.c.release_key >= bindparam("low"),
            tags.c.release_key < bindparam("high"),
        )
        .order_by(tags.c.release_key.desc(), tags.c.updated_at.desc(), tags.c.name.desc())
        .limit(1)
    )


_NEWEST_RELEASE = _newest_release_of(bindparam("prefix"))
# `latest` follows both spellings: the newest of each (one seek each), then the newer.
_NEWEST_RELEASE_OF_BOTH = union_all(
    select(_newest_release_of("").subquery()), select(_newest_release_of("v").subquery())
)
_TAG_STATES = select(tags.c.name, tags.c.manifest_digest, tags.c.client_managed).where(
    tags.c.repository_id == bindparam("repository_id"),
    tags.c.name.in_(bindparam("names", expanding=True)),
)


# The release ranked next above a pushed one (rank: release key, updated_at, name), spelt
# with `prefix`, other than the pushed tag itself: one seek in ix_tags_release, reading only
# the index's columns. A release's lines are contiguous ranges of release keys, so this one
# row tells which of the pushed release's lines (MAJOR.MINOR, MAJOR, all) have a newer one.
def _next_release_above(prefix: str) -> Select[str, bytes]:
    return (
        select(literal(prefix).label("line"), tags.c.release_key)
        .where(
            tags.c.repository_id == bindparam("repository_id"),
            tags.c.version_prefix == prefix,
            tuple_(tags.c.release_key, tags.c.updated_at, tags.c.name)
            > tuple_(
                bindparam("key", type_=LargeBinary),
                bindparam("now", type_=Float),
                bindparam("tag"),
            ),
            tags.c.release_key < bindparam("high", type_=LargeBinary),
            tags.c.name != bindparam("tag"),
        )
        .order_by(tags.c.release_key, tags.c.updated_at, tags.c.name)
        .limit(1)
    )


# A pushed release's tags' states and the next release above it of each spelling in one
# statement (the push's only read of tags): a row per spelling that has one, labelled by
# its prefix with a NULL client_managed; and the states, labelled "state".
_STATES_AND_ABOVE = union_all(
    *(
        select(
            line.c.line,
            cast(null(), String).label("name"),
            cast(null(), String).label("manifest_digest"),
            line.c.release_key,
            cast(null(), Boolean).label("client_managed"),
        )
        for line in (_next_release_above("").subquery(), _next_release_above("v").subquery())
    ),
    select(
        literal("state").label("line"),
        tags.c.name,
        tags.c.manifest_digest,
        cast(null(), LargeBinary).label("release_key"),
        tags.c.client_managed,
    ).where(
        tags.c.repository_id == bindparam("repository_id"),
        tags.c.name.in_(bindparam("names", expanding=True)),
    ),
)


def _upsert(dialect_insert: Any) -> Any:
    # A tag's version columns follow from its name, so an existing row keeps them as they
    # are; only where it points, when and whether a client manages it change.
    statement = dialect_insert(tags)
    return statement.on_conflict_do_update(
        index_elements=[tags.c.repository_id, tags.c.name],
        set_={
            "manifest_digest": statement.excluded.manifest_digest,
            "updated_at": statement.excluded.updated_at,
            "client_managed": statement.excluded.client_managed,
        },
    )


# New and existing tags pointed in one statement (INSERT … ON CONFLICT DO UPDATE, SQLite 3.24+
# and PostgreSQL 9.5+), by dialect name.
_POINT_TAGS = {"sqlite": _upsert(sqlite.insert), "postgresql": _upsert(postgresql.insert)}
_RELEASE_TAG = (
    update(tags)
    .where(tags.c.repository_id == bindparam("b_repository_id"), tags.c.name == bindparam("b_tag"))
    .values(client_managed=None)
)
_DELETE_TAG = delete(tags).where(
    tags.c.repository_id == bindparam("repository_id"), tags.c.name == bindparam("tag")
)
_INSERT_HISTORY = insert(tag_history)
# The push's statements, run on the driver's cursor (metadata/prepared.py).
_PREPARED_POLICY_ROWS = Prepared(_POLICY_ROWS)
_PREPARED_STATES = Prepared(_TAG_STATES)
_PREPARED_STATES_AND_ABOVE = Prepared(_STATES_AND_ABOVE)
_PREPARED_POINT_TAGS = {name: Prepared(statement) for name, statement in _POINT_TAGS.items()}
_PREPARED_INSERT_HISTORY = Prepared(_INSERT_HISTORY)
_HISTORY = (
    select(tag_history)
    .where(
        tag_history.c.repository_id == bindparam("repository_id"),
        tag_history.c.tag == bindparam("tag"),
    )
    .order_by(tag_history.c.id.desc())
    .limit(bindparam("limit"))
)
_HISTORY_BEFORE = _HISTORY.where(tag_history.c.id < bindparam("before"))
# The change that put a tag on the digest it has now is its newest change: one row read.
_NEWEST_MOVE = (
    select(tag_history)
    .where(
        tag_history.c.repository_id == bindparam("repository_id"),
        tag_history.c.tag == bindparam("tag"),
        tag_history.c.new_digest == bindparam("digest"),
    )
    .order_by(tag_history.c.id.desc())
    .limit(1)
)
_VERSIONS = (
    select(tags.c.name, tags.c.manifest_digest)
    .where(
        tags.c.repository_id == bindparam("repository_id"),
        tuple_(tags.c.version_key, tags.c.name) < tuple_(bindparam("key"), bindparam("last")),
        tags.c.version_key >= b"\x01",  # every version's key; excludes NULL (other tags)
    )
    .order_by(tags.c.version_key.desc(), tags.c.name.desc())
    .limit(bindparam("limit"))
)


def names(connection: Connection, repository_id: int, after: str | None, limit: int) -> list[str]:
    """Up to `limit` tag names of the repository after `after`, in name order (a range of
    the primary key; every tag name is above "")."""
    parameters = {"repository_id": repository_id, "after": after or "", "limit": limit}
    return list(connection.scalars(_NAMES, parameters).all())


def on_manifest(connection: Connection, repository_id: int, digest: str) -> list[str]:
    """The names of the repository's tags pointing at manifest `digest`."""
    query = select(tags.c.name).where(
        tags.c.repository_id == repository_id, tags.c.manifest_digest == digest
    )
    return list(connection.scalars(query).all())


def policy_rows(
    connection: Connection, repository: str, namespace: str
) -> list[Row[Any, Any, Any]]:
    """The `tag_policies` rows (scope, floating, immutable_versions) of repository
    `repository` and of namespace `namespace`: at most two, in one statement."""
    return _PREPARED_POLICY_ROWS.rows(
        connection, {"repository": repository, "namespace": namespace}
    )


def write_policy(connection: Connection, scope: str, name: str, values: dict[str, bool]) -> None:
    """Set these columns (`floating`, `immutable_versions`) of the policy of `scope`
    ("repository" or "namespace") `name`, creating its row if it has none."""
    upsert(connection, tag_policies, {"scope": scope, "name": name}, values)


def newest_releases_of_line(
    connection: Connection, repository_id: int, prefix: str | None, low: bytes, high: bytes
) -> list[Row[Any, Any, Any, Any]]:
    """The newest release tag (name, manifest_digest, release_key, updated_at) whose release
    key lies in [low, high), spelt with `prefix` ("" or "v"), or of each spelling when
    `prefix` is None: at most two rows, one index seek each (ix_tags_release)."""
    parameters = {"repository_id": repository_id, "low": low, "high": high}
    if prefix is not None:
        return list(connection.execute(_NEWEST_RELEASE, {**parameters, "prefix": prefix}).all())
    return list(connection.execute(_NEWEST_RELEASE_OF_BOTH, parameters).all())


def states_and_releases_above(
    connection: Connection,
    repository_id: int,
    names: Sequence[str],
    rank: tuple[bytes, float, str],
    high: bytes,
) -> tuple[list[Row[Any, Any, Any]], dict[str, bytes]]:
    """`states` of the tags `names`, and of each spelling ("" and "v") the release key of the
    lowest-ranked release above `rank` (release key, updated_at, name: the pushed release as
    its write will leave it) with a release key below `high`, other than the tag named in
    `rank`. One statement: one index seek per spelling (ix_tags_release, its columns only).
    Returns (the states, prefix → that release key, for the spellings that have one)."""
    key, now, tag = rank
    rows = _PREPARED_STATES_AND_ABOVE.rows(
        connection,
        {
            "repository_id": repository_id,
            "names": list(names),
            "key": key,
            "now": now,
            "tag": tag,
            "high": high,
        },
    )
    return (
        [row for row in rows if row.line == "state"],
        {row.line: row.release_key for row in rows if row.line != "state"},
    )


def states(
    connection: Connection, repository_id: int, names: Sequence[str]
) -> list[Row[Any, Any, Any]]:
    """(name, manifest_digest, client_managed) of those of the tags `names` that exist: one
    statement."""
    return _PREPARED_STATES.rows(connection, {"repository_id": repository_id, "names": list(names)})


def digest_of(connection: Connection, repository_id: int, tag: str) -> str | None:
    """The manifest digest `tag` points at, or None when there is no such tag."""
    return connection.scalar(_TAG_DIGEST, {"repository_id": repository_id, "tag": tag})


@functools.lru_cache(maxsize=8)
def _point_many_tags(count: int) -> Prepared:
    # `count` rows of bound parameters `<column>_<row>` in one VALUES list (PostgreSQL).
    rows = [
        {column.name: bindparam(f"{column.name}_{index}", type_=column.type) for column in tags.c}
        for index in range(count)
    ]
    return Prepared(_upsert(lambda table: postgresql.insert(table).values(rows)))


def point_tags(connection: Connection, rows: list[dict[str, object]]) -> None:
    """Point these tags where the rows say (all `tags` columns given: see
    `registry.tags.version_columns`), creating those that do not exist: one statement,
    however many of each (an `executemany`; on PostgreSQL one multi-row execution)."""
    dialect = connection.dialect.name
    if (
        dialect == "postgresql"
        and len(rows) > 1
        and len({row["name"] for row in rows}) == len(rows)
    ):
        # psycopg runs an executemany as one execution per row, and SQLAlchemy's multi-row
        # INSERT leaves out statements with ON CONFLICT (a VALUES list that names a row twice
        # fails there); these rows name distinct tags, so one VALUES list, one execution.
        parameters = {
            f"{key}_{index}": value for index, row in enumerate(rows) for key, value in row.items()
        }
        _point_many_tags(len(rows)).run(connection, parameters)
        return
    _PREPARED_POINT_TAGS[dialect].run_many(connection, rows)


def clear_client_managed(connection: Connection, repository_id: int, tag: str) -> None:
    """Hand `tag` back to the policy: its `client_managed` flag becomes NULL."""
    connection.execute(_RELEASE_TAG, {"b_repository_id": repository_id, "b_tag": tag})


def delete_tag(connection: Connection, repository_id: int, tag: str) -> None:
    """Remove the `tags` row of `tag` (its history stays)."""
    connection.execute(_DELETE_TAG, {"repository_id": repository_id, "tag": tag})


def insert_history(connection: Connection, changes: list[dict[str, object]]) -> None:
    """Append these `tag_history` rows, in order, in one `executemany` (none: no statement)."""
    if changes:
        _PREPARED_INSERT_HISTORY.run_many(connection, changes)


def history_page(
    connection: Connection, repository_id: int, tag: str, limit: int, before: int | None
) -> list[Row[Any]]:
    """Up to `limit` `tag_history` rows of `tag`, newest first, with ids below `before` if
    given."""
    parameters = {"repository_id": repository_id, "tag": tag, "limit": limit}
    if before is None:
        return list(connection.execute(_HISTORY, parameters).all())
    return list(connection.execute(_HISTORY_BEFORE, {**parameters, "before": before}).all())


def newest_move(
    connection: Connection, repository_id: int, tag: str, digest: str
) -> Row[Any] | None:
    """The newest `tag_history` row that moved `tag` onto `digest`, or None: one row read."""
    return connection.execute(
        _NEWEST_MOVE, {"repository_id": repository_id, "tag": tag, "digest": digest}
    ).first()


def versions_below(
    connection: Connection, repository_id: int, key: bytes, last: str, limit: int
) -> list[Row[Any, Any]]:
    """Up to `limit` version tags (name, manifest_digest) ordered below (key, last) by
    (version_key, name), descending: one range read in ix_tags_version."""
    return list(
        connection.execute(
            _VERSIONS, {"repository_id": repository_id, "key": key, "last": last, "limit": limit}
        ).all()
    )
