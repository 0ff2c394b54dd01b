"""The quota rules: a push that would take a namespace's usage over its quota is refused
(DENIED, with the figures). The rows and the usage figures are `metadata/quotas.py`'s
(re-exported here for the callers of the use cases).

Bytes stop counting when garbage collection unlinks them: deleting an image gives its
quota back at the next collection (docs/garbage-collection.md).
"""

from __future__ import annotations

from cangku.content.digest import Digest
from cangku.content.errors import Denied
from cangku.content.units import format_size
from cangku.metadata import Connection, quotas
from cangku.metadata.quotas import (
    NamespaceUsage,
    Quota,
    RepositoryUsage,
    StoredContent,
    UsageReport,
    list_quotas,
    namespace_of,
    namespace_usage,
    quota_limit,
    set_quota,
    stored_content,
    unset_quota,
    usage_report,
)

__all__ = [
    "NamespaceUsage",
    "Quota",
    "RepositoryUsage",
    "StoredContent",
    "UsageReport",
    "check_blob_quota",
    "check_manifest_quota",
    "list_quotas",
    "namespace_of",
    "namespace_usage",
    "over_quota",
    "quota_limit",
    "set_quota",
    "stored_content",
    "unset_quota",
    "usage_report",
]


def check_blob_quota(
    connection: Connection, repository: str, digest: Digest, size: int
) -> Denied | None:
    """The refusal if holding this blob in `repository` would take its namespace over quota.

    A blob the namespace already holds adds nothing, so it is never refused.
    """
    namespace = quotas.namespace_of(repository)
    limit = quotas.quota_limit(connection, namespace)
    if limit is None:
        return None
    if quotas.namespace_holds(connection, namespace, str(digest)):
        return None
    return over_quota(namespace, limit, quotas.namespace_usage(connection, namespace), size)


def check_manifest_quota(connection: Connection, repository: str, size: int) -> Denied | None:
    """The refusal if a new manifest of `size` bytes would take the namespace over quota."""
    namespace = quotas.namespace_of(repository)
    limit = quotas.quota_limit(connection, namespace)
    if limit is None:
        return None
    return over_quota(namespace, limit, quotas.namespace_usage(connection, namespace), size)


def over_quota(namespace: str, limit: int, usage: int, size: int) -> Denied | None:
    """The refusal if `size` more bytes on top of `usage` exceed `limit` (all in bytes)."""
    if usage + size <= limit:
        return None
    return Denied(
        f"namespace {namespace!r} is over its storage quota: the quota is {format_size(limit)} "
        f"({limit} bytes), {format_size(usage)} ({usage} bytes) are used and this push needs "
        f"{format_size(size)} ({size} bytes) more",
        {"namespace": namespace, "quota_bytes": limit, "usage_bytes": usage, "push_bytes": size},
    )
