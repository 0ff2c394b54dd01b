"""Tag moves and the floating-tag policy, inside the caller's transaction.

Every tag change goes through `push_tag` or `remove_tags`, so every change is recorded in the
tag history and the floating tags (`1.9`, `1`, `latest`) move in the same transaction as the
push or delete that caused them: a puller never sees a half-moved set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from cangku.content.errors import Denied
from cangku.content.versions import Version, highest_release, is_floating_tag, parse_version
from cangku.metadata.schema import tag_history, tag_policies, tags

# Statements built once (building one costs more than running it on SQLite).
_POLICY_ROWS = select(
    tag_policies.c.scope, tag_policies.c.floating, tag_policies.c.immutable_versions
).where(
    ((tag_policies.c.scope == "repository") & (tag_policies.c.name == bindparam("repository")))
    | ((tag_policies.c.scope == "namespace") & (tag_policies.c.name == bindparam("namespace")))
)
_TAG_DIGEST = select(tags.c.manifest_digest).where(
    tags.c.repository_id == bindparam("repository_id"), tags.c.name == bindparam("tag")
)
_REPOSITORY_TAGS = (
    select(tags.c.name, tags.c.manifest_digest)
    .where(tags.c.repository_id == bindparam("repository_id"))
    .order_by(tags.c.updated_at, tags.c.name)
)
_INSERT_TAG = insert(tags)
_UPDATE_TAG = (
    update(tags)
    .where(tags.c.repository_id == bindparam("b_repository_id"), tags.c.name == bindparam("b_tag"))
    .values(manifest_digest=bindparam("digest"), updated_at=bindparam("now"))
)
_DELETE_TAG = delete(tags).where(
    tags.c.repository_id == bindparam("repository_id"), tags.c.name == bindparam("tag")
)
_INSERT_HISTORY = insert(tag_history)


@dataclass(frozen=True, slots=True)
class TagPolicy:
    floating: bool = True
    immutable_versions: bool = False


@dataclass(frozen=True, slots=True)
class VersionTag:
    version: Version
    digest: str


def resolve_policy(connection: Connection, name: str, defaults: TagPolicy) -> TagPolicy:
    """The repository's own setting, else its namespace's, else the server's default."""
    rows = connection.execute(
        _POLICY_ROWS, {"repository": name, "namespace": name.split("/")[0]}
    ).all()
    by_scope = {row.scope: row for row in rows}
    floating, immutable = defaults.floating, defaults.immutable_versions
    for scope in ("namespace", "repository"):
        row = by_scope.get(scope)
        if row is not None and row.floating is not None:
            floating = row.floating
        if row is not None and row.immutable_versions is not None:
            immutable = row.immutable_versions
    return TagPolicy(floating=floating, immutable_versions=immutable)


def set_policy(
    connection: Connection,
    scope: str,
    name: str,
    *,
    floating: bool | None,
    immutable_versions: bool | None,
) -> None:
    """Set the given switches of a repository or namespace (None leaves one as it is)."""
    values = {
        key: value
        for key, value in (("floating", floating), ("immutable_versions", immutable_versions))
        if value is not None
    }
    where = (tag_policies.c.scope == scope) & (tag_policies.c.name == name)
    if connection.execute(select(tag_policies.c.name).where(where)).first() is None:
        connection.execute(insert(tag_policies).values(scope=scope, name=name, **values))
    elif values:
        connection.execute(update(tag_policies).where(where).values(**values))


def version_tags(connection: Connection, repository_id: int) -> list[VersionTag]:
    """The repository's version tags, oldest change first (so the newest wins a tie)."""
    rows = connection.execute(_REPOSITORY_TAGS, {"repository_id": repository_id}).all()
    found = []
    for row in rows:
        version = parse_version(row.name)
        if version is not None:
            found.append(VersionTag(version, row.manifest_digest))
    return found


def current_digest(connection: Connection, repository_id: int, tag: str) -> str | None:
    return connection.scalar(_TAG_DIGEST, {"repository_id": repository_id, "tag": tag})


def push_tag(
    connection: Connection,
    repository_id: int,
    name: str,
    tag: str,
    digest: str,
    policy: TagPolicy,
    actor: str | None,
) -> None:
    """A client pushed `tag` → `digest`: check the policy, move it, move the floating tags."""
    version = parse_version(tag)
    if policy.floating and version is None and is_floating_tag(tag):
        _check_floating_push(connection, repository_id, name, tag, digest)
    previous = current_digest(connection, repository_id, tag)
    if version is not None and policy.immutable_versions and previous not in (None, digest):
        raise Denied(
            f"version {tag} of {name} is immutable: it already points at {previous}. Push a new "
            f"version, or turn this off with `cangku repo policy {name} --immutable-versions off`"
        )
    _move(connection, repository_id, tag, previous, digest, actor, "pushed")
    if version is None or not version.is_release or not policy.floating:
        return
    versions = version_tags(connection, repository_id)
    for floating in version.floating_tags():
        best = highest_release([v.version for v in versions], floating)
        if best is not None and best.tag == tag:
            previous_floating = current_digest(connection, repository_id, floating)
            _move(
                connection,
                repository_id,
                floating,
                previous_floating,
                digest,
                actor,
                f"follows {tag}",
            )


def remove_tags(
    connection: Connection,
    repository_id: int,
    removed: dict[str, str],
    policy: TagPolicy,
    actor: str | None,
) -> None:
    """Tags were deleted (tag → the digest it had): record it, fall floating tags back."""
    for tag, digest in removed.items():
        connection.execute(_DELETE_TAG, {"repository_id": repository_id, "tag": tag})
        _record(connection, repository_id, tag, digest, None, actor, "deleted")
    if not policy.floating:
        return
    # Floating tags that pointed at a deleted release follow the highest one left in their line.
    affected: dict[str, str] = {}
    for tag, digest in removed.items():
        version = parse_version(tag)
        if version is None or not version.is_release:
            continue
        for floating in version.floating_tags():
            was_removed_with_it = removed.get(floating) == digest
            still_points_at_it = current_digest(connection, repository_id, floating) == digest
            if was_removed_with_it or still_points_at_it:
                affected.setdefault(floating, tag)
    if not affected:
        return
    versions = version_tags(connection, repository_id)
    for floating, deleted_tag in affected.items():
        best = highest_release([v.version for v in versions], floating)
        previous = current_digest(connection, repository_id, floating)
        if best is None:
            if previous is not None:
                connection.execute(_DELETE_TAG, {"repository_id": repository_id, "tag": floating})
                _record(
                    connection,
                    repository_id,
                    floating,
                    previous,
                    None,
                    actor,
                    f"{deleted_tag} was deleted; no release left in its line",
                )
            continue
        target = next(v.digest for v in reversed(versions) if v.version.tag == best.tag)
        _move(
            connection,
            repository_id,
            floating,
            previous,
            target,
            actor,
            f"{deleted_tag} was deleted; follows {best.tag}",
        )


def _check_floating_push(
    connection: Connection, repository_id: int, name: str, tag: str, digest: str
) -> None:
    """A client may set a floating tag only while its line has no release, or to the same
    digest the policy would choose."""
    versions = version_tags(connection, repository_id)
    best = highest_release([v.version for v in versions], tag)
    if best is None:
        return
    chosen = next(v.digest for v in reversed(versions) if v.version.tag == best.tag)
    if chosen != digest:
        line = "all releases" if tag == "latest" else f"the {tag}.x line"
        raise Denied(
            f"tag {tag} of {name} follows the newest release of {line}, now {best.tag} "
            f"({chosen}); push a version tag instead, or turn floating tags off for this "
            f"repository with `cangku repo policy {name} --floating off`"
        )


def _move(
    connection: Connection,
    repository_id: int,
    tag: str,
    previous: str | None,
    digest: str,
    actor: str | None,
    reason: str,
) -> None:
    now = time.time()
    if previous is None:
        connection.execute(
            _INSERT_TAG,
            {
                "repository_id": repository_id,
                "name": tag,
                "manifest_digest": digest,
                "updated_at": now,
            },
        )
    else:
        connection.execute(
            _UPDATE_TAG,
            {"b_repository_id": repository_id, "b_tag": tag, "digest": digest, "now": now},
        )
    if previous != digest:
        _record(connection, repository_id, tag, previous, digest, actor, reason)


def _record(
    connection: Connection,
    repository_id: int,
    tag: str,
    old: str | None,
    new: str | None,
    actor: str | None,
    reason: str,
) -> None:
    connection.execute(
        _INSERT_HISTORY,
        {
            "repository_id": repository_id,
            "tag": tag,
            "old_digest": old,
            "new_digest": new,
            "changed_at": time.time(),
            "actor": actor,
            "reason": reason,
        },
    )
