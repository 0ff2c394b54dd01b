"""Repository visibility: the `public` column of the `repositories` table.

This module is that column's one owner (the registry's row modules own the rest of the
row). `public` is NULL when nobody chose: the server's `public_by_default` then decides.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from sqlalchemy import ColumnElement, bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection

from cangku.metadata.namespaces import in_namespace
from cangku.metadata.prepared import Prepared
from cangku.metadata.proxy_cache import in_mirrors
from cangku.metadata.schema import repositories

PUBLIC = Prepared(select(repositories.c.public).where(repositories.c.name == bindparam("name")))


def chosen_public(connection: Connection, repository: str) -> bool | None:
    """True or False as chosen for the repository; None when nobody chose or it has no row."""
    public = PUBLIC.scalar(connection, {"name": repository})
    return None if public is None else bool(public)


def set_public(connection: Connection, repository: str, public: bool, *, now: float) -> None:
    """Choose the repository's visibility, creating its row (created at `now`) if needed."""
    changed = connection.execute(
        update(repositories).where(repositories.c.name == repository).values(public=public)
    )
    if not changed.rowcount:
        connection.execute(
            insert(repositories).values(name=repository, created_at=now, public=public)
        )


def visible_to(
    namespaces: Iterable[str],
    *,
    public_by_default: bool,
    mirrors: Collection[str] = (),
    hidden_mirrors: Collection[str] = (),
) -> ColumnElement[bool]:
    """A condition on `repositories` rows: those a caller may pull, the public ones and
    those of the caller's `namespaces` (a namespace owns `ns/...` and the repository `ns`);
    and the mirrors of the upstreams in `mirrors` (`<upstream>/...`) that have no visibility
    of their own (their upstream's `public` decides for them), but not those of the
    upstreams in `hidden_mirrors` (whatever `public_by_default` says)."""
    public: ColumnElement[bool] = (
        repositories.c.public.is_not(False)
        if public_by_default
        else repositories.c.public.is_(True)
    )
    if hidden_mirrors:
        public = public & ~(repositories.c.public.is_(None) & in_mirrors(hidden_mirrors))
    owned = [in_namespace(repositories.c.name, namespace) for namespace in sorted(namespaces)]
    conditions = [public, *owned]
    if mirrors:
        conditions.append(repositories.c.public.is_(None) & in_mirrors(mirrors))
    return or_(*conditions)
