"""SQL of pull statistics (`pull_statistics`): adding a batch of counts, reading them back.

A row per (repository, kind, reference): kind "tag" counts pulls by that tag, kind "digest"
every GET that served that manifest, kind "total" (reference "") the repository's pulls.
Counts only grow; `last_pulled_at` only moves on.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from cangku.metadata.schema import pull_statistics, repositories

TAG = "tag"
DIGEST = "digest"
TOTAL = "total"  # the repository's pulls, reference ""


@dataclass(frozen=True, slots=True)
class PullCount:
    """Pulls of one repository, tag or digest; `last_pulled_at` in Unix seconds or None."""

    pulls: int
    last_pulled_at: float | None

    def to_json(self) -> dict[str, object]:
        return {"pulls": self.pulls, "last_pulled_at": self.last_pulled_at}


def add_pulls(connection: Connection, counts: Iterable[tuple[str, str, str, int, float]]) -> int:
    """Add (repository name, kind, reference, pulls, last pulled at) rows; counts of
    repositories that no longer exist are dropped. Returns how many rows were written."""
    ids: dict[str, int | None] = {}
    written = 0
    for name, kind, reference, pulls, last in counts:
        if name not in ids:
            ids[name] = connection.execute(
                select(repositories.c.id).where(repositories.c.name == name)
            ).scalar()
        repository_id = ids[name]
        if repository_id is None:
            continue
        key = {"repository_id": repository_id, "kind": kind, "reference": reference}
        current = connection.execute(
            select(pull_statistics.c.last_pulled_at).where(
                *(getattr(pull_statistics.c, column) == value for column, value in key.items())
            )
        ).first()
        if current is None:
            connection.execute(
                insert(pull_statistics).values(**key, pulls=pulls, last_pulled_at=last)
            )
        else:
            connection.execute(
                _INCREMENT,
                {
                    "b_repository_id": repository_id,
                    "b_kind": kind,
                    "b_reference": reference,
                    "b_pulls": pulls,
                    "b_last": max(last, current.last_pulled_at),
                },
            )
        written += 1
    return written


_INCREMENT = (
    update(pull_statistics)
    .where(
        pull_statistics.c.repository_id == bindparam("b_repository_id"),
        pull_statistics.c.kind == bindparam("b_kind"),
        pull_statistics.c.reference == bindparam("b_reference"),
    )
    .values(
        pulls=pull_statistics.c.pulls + bindparam("b_pulls"),
        last_pulled_at=bindparam("b_last"),
    )
)


def repository_pulls(
    connection: Connection, name: str, tags: Collection[str] | None = None
) -> dict[tuple[str, str], PullCount]:
    """Every row of one repository, keyed by (kind, reference); with `tags` given, only its
    total and the rows of those tags (primary-key seeks, however many tags were pulled)."""
    query = (
        select(
            pull_statistics.c.kind,
            pull_statistics.c.reference,
            pull_statistics.c.pulls,
            pull_statistics.c.last_pulled_at,
        )
        .join(repositories, repositories.c.id == pull_statistics.c.repository_id)
        .where(repositories.c.name == name)
    )
    if tags is not None:
        query = query.where(
            (pull_statistics.c.kind == TOTAL)
            | ((pull_statistics.c.kind == TAG) & pull_statistics.c.reference.in_(sorted(tags)))
        )
    rows = connection.execute(query)
    return {(row.kind, row.reference): PullCount(row.pulls, row.last_pulled_at) for row in rows}


def forget_repository(connection: Connection, repository_id: int) -> None:
    connection.execute(
        delete(pull_statistics).where(pull_statistics.c.repository_id == repository_id)
    )
