"""SQL of retention (registry/retention.py): policies, the tags a policy judges, deleting a
tag with its tag-history line."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from cangku.metadata.pull_stats import DIGEST, TAG
from cangku.metadata.schema import (
    pull_statistics,
    repositories,
    retention_policies,
    tag_history,
    tags,
)
from cangku.metadata.upserts import upsert


@dataclass(frozen=True, slots=True)
class TagFacts:
    """A tag as retention sees it: times in Unix seconds; `last_pulled_at` the newer of the
    tag's and its digest's last pull (by digest counts too), None if never pulled."""

    tag: str
    digest: str
    pushed_at: float
    last_pulled_at: float | None


def policies(connection: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The stored rules (JSON) of each (scope, name) that has any."""
    rows = connection.execute(
        select(retention_policies.c.scope, retention_policies.c.name, retention_policies.c.rules)
    ).all()
    wanted = set(keys)
    return {(r.scope, r.name): r.rules for r in rows if (r.scope, r.name) in wanted}


def all_policies(connection: Connection) -> list[tuple[str, str, str]]:
    rows = connection.execute(
        select(
            retention_policies.c.scope, retention_policies.c.name, retention_policies.c.rules
        ).order_by(retention_policies.c.scope, retention_policies.c.name)
    )
    return [(row.scope, row.name, row.rules) for row in rows]


def set_policy(connection: Connection, scope: str, name: str, rules: str | None) -> None:
    """Store (or with None remove) the rules of one scope."""
    where = (retention_policies.c.scope == scope) & (retention_policies.c.name == name)
    if rules is None:
        connection.execute(delete(retention_policies).where(where))
        return
    upsert(
        connection,
        retention_policies,
        {"scope": scope, "name": name},
        {"rules": rules, "updated_at": time.time()},
    )


def repositories_with_tags(connection: Connection) -> list[tuple[int, str]]:
    query = (
        select(repositories.c.id, repositories.c.name)
        .where(select(tags.c.name).where(tags.c.repository_id == repositories.c.id).exists())
        .order_by(repositories.c.name)
    )
    return [(row.id, row.name) for row in connection.execute(query)]


def repository_id(connection: Connection, name: str) -> int | None:
    found: int | None = connection.execute(
        select(repositories.c.id).where(repositories.c.name == name)
    ).scalar()
    return found


def tag_facts(connection: Connection, repository_id: int) -> list[TagFacts]:
    """Every tag of a repository with its push time (when it last moved) and last pull."""
    by_tag = (
        select(pull_statistics.c.reference, pull_statistics.c.last_pulled_at)
        .where(pull_statistics.c.repository_id == repository_id, pull_statistics.c.kind == TAG)
        .subquery()
    )
    by_digest = (
        select(pull_statistics.c.reference, pull_statistics.c.last_pulled_at)
        .where(pull_statistics.c.repository_id == repository_id, pull_statistics.c.kind == DIGEST)
        .subquery()
    )
    rows = connection.execute(
        select(
            tags.c.name,
            tags.c.manifest_digest,
            tags.c.updated_at,
            by_tag.c.last_pulled_at.label("tag_pulled"),
            by_digest.c.last_pulled_at.label("digest_pulled"),
        )
        .select_from(tags)
        .outerjoin(by_tag, by_tag.c.reference == tags.c.name)
        .outerjoin(by_digest, by_digest.c.reference == tags.c.manifest_digest)
        .where(tags.c.repository_id == repository_id)
        .order_by(tags.c.name)
    )
    facts = []
    for row in rows:
        pulled = [t for t in (row.tag_pulled, row.digest_pulled) if t is not None]
        facts.append(
            TagFacts(row.name, row.manifest_digest, row.updated_at, max(pulled, default=None))
        )
    return facts


def delete_tag(
    connection: Connection, repository_id: int, tag: str, digest: str, reason: str
) -> bool:
    """Delete the tag if it still points at `digest`; record the deletion and its reason."""
    removed = connection.execute(
        delete(tags).where(
            tags.c.repository_id == repository_id,
            tags.c.name == tag,
            tags.c.manifest_digest == digest,
        )
    ).rowcount
    if not removed:
        return False
    connection.execute(
        insert(tag_history).values(
            repository_id=repository_id,
            tag=tag,
            old_digest=digest,
            new_digest=None,
            changed_at=time.time(),
            actor=None,
            reason=reason[:500],
        )
    )
    return True
