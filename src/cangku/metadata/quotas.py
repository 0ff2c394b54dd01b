"""Rows of `quotas`, and the usage figures over blobs, manifests and tags they limit.

What a repository *holds* is `metadata/blobs.py`'s `held_blobs`; this counts it two ways:

- deduplicated: each distinct blob once within the scope (repository, namespace, registry);
  what the scope costs on disk, and what quotas limit.
- apparent: every manifest counted with all of its blobs, as if nothing were shared (the sum
  of the image sizes a client sees), plus the blobs no manifest of the repository uses yet.

Plain functions over a `Connection`; the caller holds the transaction. The rules that refuse
a push over quota are registry/usage.py's.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    bindparam,
    cast,
    delete,
    func,
    select,
)
from sqlalchemy.engine import Connection

from cangku.metadata.blobs import held_blobs, used_by_a_manifest_of
from cangku.metadata.prepared import Prepared
from cangku.metadata.schema import (
    blobs,
    manifest_references,
    manifests,
    quotas,
    repositories,
    repository_blobs,
    tags,
)
from cangku.metadata.upserts import upsert


def namespace_of(name: str) -> str:
    """The first path component of a repository name: `jimo` for `jimo/tools/app`."""
    return name.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class RepositoryUsage:
    repository: str
    namespace: str
    deduplicated_bytes: int
    apparent_bytes: int
    manifests: int
    tags: int
    blobs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "namespace": self.namespace,
            "deduplicated_bytes": self.deduplicated_bytes,
            "apparent_bytes": self.apparent_bytes,
            "manifests": self.manifests,
            "tags": self.tags,
            "blobs": self.blobs,
        }


@dataclass(frozen=True, slots=True)
class NamespaceUsage:
    namespace: str
    repositories: list[RepositoryUsage]
    deduplicated_bytes: int
    apparent_bytes: int
    quota_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "deduplicated_bytes": self.deduplicated_bytes,
            "apparent_bytes": self.apparent_bytes,
            "quota_bytes": self.quota_bytes,
            "repositories": [repository.to_json() for repository in self.repositories],
        }


@dataclass(frozen=True, slots=True)
class UsageReport:
    namespaces: list[NamespaceUsage]
    # Every distinct blob held by some repository counted once, plus all manifests.
    deduplicated_bytes: int
    apparent_bytes: int
    # Every recorded blob, held or not (what is awaiting collection included).
    blob_store_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "deduplicated_bytes": self.deduplicated_bytes,
            "apparent_bytes": self.apparent_bytes,
            "blob_store_bytes": self.blob_store_bytes,
            "namespaces": [namespace.to_json() for namespace in self.namespaces],
        }


@dataclass(frozen=True, slots=True)
class Quota:
    namespace: str
    limit_bytes: int
    usage_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "limit_bytes": self.limit_bytes,
            "usage_bytes": self.usage_bytes,
        }


# -- measuring -------------------------------------------------------------------------------
def usage_report(connection: Connection, repository_ids: list[int] | None = None) -> UsageReport:
    """Usage of every repository (or of those given), grouped by namespace."""
    names: dict[int, str] = dict(
        connection.execute(
            _only(select(repositories.c.id, repositories.c.name), repositories.c.id, repository_ids)
        ).all()
    )
    manifest_counts: dict[int, tuple[int, int]] = {
        row.repository_id: (row.manifest_count, row.bytes)
        for row in connection.execute(
            _only(
                select(
                    manifests.c.repository_id,
                    func.count().label("manifest_count"),
                    _total(manifests.c.size).label("bytes"),
                ),
                manifests.c.repository_id,
                repository_ids,
            ).group_by(manifests.c.repository_id)
        )
    }
    tag_counts: dict[int, int] = {
        row.repository_id: row.tag_count
        for row in connection.execute(
            _only(
                select(tags.c.repository_id, func.count().label("tag_count")),
                tags.c.repository_id,
                repository_ids,
            ).group_by(tags.c.repository_id)
        )
    }
    # Each manifest's blobs, counted per manifest: the apparent size of its images.
    referenced_bytes: dict[int, int] = {
        row.repository_id: row.bytes
        for row in connection.execute(
            _only(
                select(
                    manifest_references.c.repository_id,
                    _total(blobs.c.size).label("bytes"),
                )
                .select_from(
                    manifest_references.join(
                        blobs, blobs.c.digest == manifest_references.c.target_digest
                    )
                )
                .where(manifest_references.c.kind == "blob"),
                manifest_references.c.repository_id,
                repository_ids,
            ).group_by(manifest_references.c.repository_id)
        )
    }
    # Blobs linked into a repository that none of its manifests uses (yet).
    referenced_here = used_by_a_manifest_of(
        repository_blobs.c.repository_id, repository_blobs.c.digest
    )
    pending_bytes: dict[int, int] = {
        row.repository_id: row.bytes
        for row in connection.execute(
            _only(
                select(
                    repository_blobs.c.repository_id,
                    _total(blobs.c.size).label("bytes"),
                )
                .select_from(
                    repository_blobs.join(blobs, blobs.c.digest == repository_blobs.c.digest)
                )
                .where(~referenced_here),
                repository_blobs.c.repository_id,
                repository_ids,
            ).group_by(repository_blobs.c.repository_id)
        )
    }
    held = held_blobs(repository_ids)
    held_rows = connection.execute(
        select(held.c.repository_id, held.c.digest, blobs.c.size).select_from(
            held.join(blobs, blobs.c.digest == held.c.digest)
        )
    ).all()

    repository_blob_bytes: dict[int, int] = defaultdict(int)
    repository_blob_counts: dict[int, int] = defaultdict(int)
    namespace_blobs: dict[str, dict[str, int]] = defaultdict(dict)
    all_blobs: dict[str, int] = {}
    for row in held_rows:
        repository_blob_bytes[row.repository_id] += row.size
        repository_blob_counts[row.repository_id] += 1
        namespace_blobs[namespace_of(names[row.repository_id])][row.digest] = row.size
        all_blobs[row.digest] = row.size

    by_namespace: dict[str, list[RepositoryUsage]] = defaultdict(list)
    namespace_manifest_bytes: dict[str, int] = defaultdict(int)
    for repository_id, name in sorted(names.items(), key=lambda item: item[1]):
        count, manifest_bytes = manifest_counts.get(repository_id, (0, 0))
        namespace_manifest_bytes[namespace_of(name)] += manifest_bytes
        by_namespace[namespace_of(name)].append(
            RepositoryUsage(
                repository=name,
                namespace=namespace_of(name),
                deduplicated_bytes=manifest_bytes + repository_blob_bytes[repository_id],
                apparent_bytes=manifest_bytes
                + referenced_bytes.get(repository_id, 0)
                + pending_bytes.get(repository_id, 0),
                manifests=count,
                tags=tag_counts.get(repository_id, 0),
                blobs=repository_blob_counts[repository_id],
            )
        )
    limits = dict(connection.execute(select(quotas.c.namespace, quotas.c.limit_bytes)).all())
    if repository_ids is None:
        for namespace in limits:
            by_namespace.setdefault(namespace, [])  # a quota set ahead of the first push
    namespaces = [
        NamespaceUsage(
            namespace=namespace,
            repositories=members,
            deduplicated_bytes=namespace_manifest_bytes[namespace]
            + sum(namespace_blobs[namespace].values()),
            apparent_bytes=sum(member.apparent_bytes for member in members),
            quota_bytes=limits.get(namespace),
        )
        for namespace, members in sorted(by_namespace.items())
    ]
    all_manifest_bytes = sum(manifest_bytes for _, manifest_bytes in manifest_counts.values())
    store_bytes = connection.scalar(select(_total(blobs.c.size)))
    return UsageReport(
        namespaces=namespaces,
        deduplicated_bytes=all_manifest_bytes + sum(all_blobs.values()),
        apparent_bytes=sum(namespace.apparent_bytes for namespace in namespaces),
        blob_store_bytes=int(store_bytes or 0),
    )


def namespace_usage(connection: Connection, namespace: str) -> int:
    """The namespace's deduplicated bytes: what its quota limits."""
    members = _namespace_repository_ids(namespace)
    held = held_blobs(members)
    blob_bytes = connection.scalar(
        select(_total(blobs.c.size)).where(blobs.c.digest.in_(select(held.c.digest)))
    )
    manifest_bytes = connection.scalar(
        select(_total(manifests.c.size)).where(manifests.c.repository_id.in_(members))
    )
    return int(blob_bytes or 0) + int(manifest_bytes or 0)


# -- quotas ------------------------------------------------------------------------------------
def namespace_holds(connection: Connection, namespace: str, digest: str) -> bool:
    """Whether a repository of the namespace holds blob `digest` (metadata/blobs.py)."""
    held = held_blobs(_namespace_repository_ids(namespace))
    return bool(connection.scalar(select(held.c.digest).where(held.c.digest == digest).limit(1)))


# On every blob upload request and every push's transaction (registry/blobs.py, usage.py):
# built once (building it costs more than running it).
QUOTA_LIMIT = Prepared(
    select(quotas.c.limit_bytes).where(quotas.c.namespace == bindparam("quota_namespace"))
)


def quota_limit(connection: Connection, namespace: str) -> int | None:
    """The namespace's quota in bytes, None without one."""
    limit = QUOTA_LIMIT.scalar(connection, {"quota_namespace": namespace})
    return None if limit is None else int(limit)


def set_quota(connection: Connection, namespace: str, limit_bytes: int) -> None:
    upsert(
        connection,
        quotas,
        {"namespace": namespace},
        {"limit_bytes": limit_bytes, "updated_at": time.time()},
    )


def unset_quota(connection: Connection, namespace: str) -> bool:
    return bool(connection.execute(delete(quotas).where(quotas.c.namespace == namespace)).rowcount)


def list_quotas(connection: Connection) -> list[Quota]:
    rows = connection.execute(
        select(quotas.c.namespace, quotas.c.limit_bytes).order_by(quotas.c.namespace)
    ).all()
    return [
        Quota(row.namespace, int(row.limit_bytes), namespace_usage(connection, row.namespace))
        for row in rows
    ]


# -- query parts -------------------------------------------------------------------------------
def _namespace_repository_ids(namespace: str) -> Select[tuple[int]]:
    return select(repositories.c.id).where(
        (repositories.c.name == namespace)
        | repositories.c.name.startswith(f"{namespace}/", autoescape=True)
    )


def _only(query: Select[Any], column: Any, repository_ids: list[int] | None) -> Select[Any]:
    return query if repository_ids is None else query.where(column.in_(repository_ids))


def _total(sizes: ColumnElement[int]) -> ColumnElement[int]:
    """SUM of sizes, 0 for none, as an integer (PostgreSQL sums BIGINTs into NUMERIC)."""
    return cast(func.coalesce(func.sum(sizes), 0), BigInteger)


@dataclass(frozen=True, slots=True)
class StoredContent:
    """What the whole registry holds: for the `/metrics` gauges."""

    blobs: int
    blob_bytes: int
    manifests: int  # manifest records: one per repository that holds the manifest
    repositories: int


_STORED_BLOBS = select(func.count(), func.coalesce(func.sum(blobs.c.size), 0)).select_from(blobs)
_STORED_MANIFESTS = select(func.count()).select_from(manifests)
_REPOSITORIES = select(func.count()).select_from(repositories)


def stored_content(connection: Connection) -> StoredContent:
    """Counts over the metadata database (each a single aggregate query)."""
    blob_count, blob_bytes = connection.execute(_STORED_BLOBS).one()
    return StoredContent(
        blobs=int(blob_count),
        blob_bytes=int(blob_bytes),
        manifests=int(connection.scalar(_STORED_MANIFESTS) or 0),
        repositories=int(connection.scalar(_REPOSITORIES) or 0),
    )
