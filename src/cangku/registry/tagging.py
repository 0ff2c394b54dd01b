"""The tags of one repository as a service: listing, history, policy, version tree.

The tag rules themselves (pushes, floating tags, immutable versions) are in
registry/tags.py, which this calls.
"""

from __future__ import annotations

import builtins

from cangku.content.errors import ManifestUnknown
from cangku.content.names import validate_tag
from cangku.metadata import Connection, locks
from cangku.metadata import tags as tag_rows
from cangku.registry.context import RequestContext
from cangku.registry.core import MAX_PAGE_SIZE, Core
from cangku.registry.manifests import known_repository_id
from cangku.registry.records import Page, TagChange, VersionTree
from cangku.registry.tags import (
    HISTORY_PAGE,
    VERSIONS_PAGE,
    TagPolicy,
    current_digest,
    floating_states,
    floating_tags_of,
    history_page,
    newest_move,
    release_tag,
    resolve_policy,
    set_policy,
    version_page,
)


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

    async def history(
        self, tag: str, limit: int = HISTORY_PAGE, before: int | None = None
    ) -> builtins.list[TagChange]:
        """Up to `limit` moves of a tag, newest first; with `before`, those older than that
        change's id. See `history_page` for the `before` of the next page."""
        return (await self.history_page(tag, limit, before))[0]

    async def history_page(
        self, tag: str, limit: int = HISTORY_PAGE, before: int | None = None
    ) -> tuple[builtins.list[TagChange], int | None]:
        """A page of a tag's moves, newest first, and the `before` of the next page (None on
        the last). One index range read however long the history is."""
        validate_tag(tag)
        name = self.name

        def history(connection: Connection) -> tuple[builtins.list[TagChange], int | None]:
            repository_id = known_repository_id(connection, name)
            return history_page(connection, repository_id, tag, limit, before)

        return await self.core.metadata.read(history)

    async def newest_move(self, tag: str, digest: str) -> TagChange | None:
        """The change that moved `tag` onto `digest` last (when and by whom it was pushed)."""
        validate_tag(tag)
        name = self.name

        def find(connection: Connection) -> TagChange | None:
            repository_id = known_repository_id(connection, name)
            return newest_move(connection, repository_id, tag, digest)

        return await self.core.metadata.read(find)

    async def release(self, tag: str, context: RequestContext) -> str | None:
        """Hand a client-managed floating tag back to the floating-tag policy; returns the
        release it follows now, or None (its line has no release yet). Raises NameUnknown,
        ManifestUnknown for a tag that does not exist, RequestInvalid for one that is not a
        floating tag."""
        validate_tag(tag)
        name = self.name

        def release(connection: Connection) -> str | None:
            # It moves a tag onto a manifest: a reference garbage collection must see.
            locks.hold(connection, lifecycle="shared", repositories=[name])
            repository_id = known_repository_id(connection, name)
            if current_digest(connection, repository_id, tag) is None:
                raise ManifestUnknown("manifest unknown", tag)
            return release_tag(connection, repository_id, name, tag, context)

        return await self.core.metadata.write(release)

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
            locks.hold(connection, repositories=[name])
            set_policy(
                connection,
                "repository",
                name,
                floating=floating,
                immutable_versions=immutable_versions,
            )
            return resolve_policy(connection, name, defaults)

        return await self.core.metadata.write(store)

    async def version_tree(
        self, limit: int = VERSIONS_PAGE, last: str | None = None
    ) -> VersionTree:
        """A page of the versions, highest first (after the version tag `last`), grouped
        major → minor → patch, with the floating tags of their lines. Raises RequestInvalid
        for a `last` that is not a version tag."""
        if last is not None:
            validate_tag(last)
        name = self.name

        def tree(connection: Connection) -> VersionTree:
            repository_id = known_repository_id(connection, name)
            versions, next_last = version_page(connection, repository_id, limit, last)
            floating = floating_states(
                connection, repository_id, floating_tags_of([tag for tag, _ in versions])
            )
            policy = resolve_policy(connection, name, self.core.tag_defaults)
            return VersionTree.build(name, versions, floating, policy, next_last)

        return await self.core.metadata.read(tree)


def page_size(limit: int | None) -> int:
    """The page size for a listing's `n` (OCI dist-spec: a registry may cap it)."""
    return MAX_PAGE_SIZE if limit is None else min(limit, MAX_PAGE_SIZE)


def page_of(rows: list[str], size: int) -> Page:
    """A page from up to `size + 1` rows: the extra row says that a next page exists."""
    if len(rows) > size:
        return Page(items=rows[:size], next_last=rows[size - 1] if size else None)
    return Page(items=rows, next_last=None)
