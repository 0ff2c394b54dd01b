"""The tags of one repository as a service: listing, history, policy, version tree.

The tag rules themselves (pushes, floating tags, immutable versions) are in
registry/tags.py, which this calls.
"""

from __future__ import annotations

import builtins

from cangku.content.names import validate_tag
from cangku.metadata import Connection
from cangku.metadata import tags as tag_rows
from cangku.registry.core import MAX_PAGE_SIZE, Core
from cangku.registry.manifests import known_repository_id
from cangku.registry.records import Page, TagChange, VersionTree
from cangku.registry.tags import TagPolicy, resolve_policy, set_policy


class Tags:
    """`TagService` of repository `name` (validated by `Registry.repository`)."""

    __slots__ = ("core", "name")

    def __init__(self, core: Core, name: str) -> None:
        self.core = core
        self.name = name

    async def list(self, limit: int | None, last: str | None) -> Page:
        name = self.name

        def page(connection: Connection) -> Page:
            repository_id = known_repository_id(connection, name)
            size = page_size(limit)
            return page_of(tag_rows.names(connection, repository_id, last, size + 1), size)

        return await self.core.metadata.read_cached(("tags", name, limit, last), page)

    async def history(self, tag: str) -> builtins.list[TagChange]:
        """Every move of a tag, newest first."""
        validate_tag(tag)
        name = self.name

        def history(connection: Connection) -> builtins.list[TagChange]:
            repository_id = known_repository_id(connection, name)
            return [
                TagChange(
                    tag=row.tag,
                    old_digest=row.old_digest,
                    new_digest=row.new_digest,
                    changed_at=row.changed_at,
                    actor=row.actor,
                    reason=row.reason,
                )
                for row in tag_rows.history(connection, repository_id, tag)
            ]

        return await self.core.metadata.read(history)

    async def policy(self) -> TagPolicy:
        name, defaults = self.name, self.core.tag_defaults
        return await self.core.metadata.read(
            lambda connection: resolve_policy(connection, name, defaults)
        )

    async def set_policy(
        self, *, floating: bool | None = None, immutable_versions: bool | None = None
    ) -> TagPolicy:
        """Set the repository's floating / immutable-versions switches (None: inherit)."""
        name, defaults = self.name, self.core.tag_defaults

        def store(connection: Connection) -> TagPolicy:
            set_policy(
                connection,
                "repository",
                name,
                floating=floating,
                immutable_versions=immutable_versions,
            )
            return resolve_policy(connection, name, defaults)

        return await self.core.metadata.write(store)

    async def version_tree(self) -> VersionTree:
        """Releases and pre-releases grouped major → minor → patch, with the floating tags."""
        name = self.name

        def tree(connection: Connection) -> VersionTree:
            repository_id = known_repository_id(connection, name)
            digests = tag_rows.digests_by_tag(connection, repository_id)
            policy = resolve_policy(connection, name, self.core.tag_defaults)
            return VersionTree.build(name, digests, policy)

        return await self.core.metadata.read(tree)


def page_size(limit: int | None) -> int:
    """The page size for a listing's `n` (OCI dist-spec: a registry may cap it)."""
    return MAX_PAGE_SIZE if limit is None else min(limit, MAX_PAGE_SIZE)


def page_of(rows: list[str], size: int) -> Page:
    """A page from up to `size + 1` rows: the extra row says that a next page exists."""
    if len(rows) > size:
        return Page(items=rows[:size], next_last=rows[size - 1] if size else None)
    return Page(items=rows, next_last=None)
