"""The registry: one handle per repository, and the use cases that span repositories.

`Registry.repository(name)` validates the name once and hands out the repository's
services (registry/protocols.py): `.blobs`, `.uploads`, `.manifests`, `.tags`,
`.referrers`. The Registry itself keeps what is not one repository's: the catalog, mount
sources, usage and quotas, namespace tag policies, browsing and removing repositories.
Each use case validates its inputs, talks to storage (bytes) and metadata (rows, through
the row modules of metadata/), and raises `RegistryError`s carrying the OCI error code.
"""

from __future__ import annotations

from collections.abc import Collection

from cangku.content.digest import Digest
from cangku.content.errors import NameInvalid
from cangku.content.names import validate_repository_name
from cangku.metadata import Connection, locks
from cangku.metadata import blobs as blob_rows
from cangku.metadata import repositories as repository_rows
from cangku.metadata.browse import visible_to
from cangku.metadata.store import MetadataStore
from cangku.registry import browse, upload_limits, usage
from cangku.registry.blobs import Blobs
from cangku.registry.context import IN_PROCESS, RequestContext
from cangku.registry.core import MAX_PAGE_SIZE, Core
from cangku.registry.manifests import MAX_TAGS_PER_PUSH, Manifests, known_repository_id
from cangku.registry.protocols import ManifestService
from cangku.registry.pulls import CountedManifests, PullCounter, Reader, forget_repository
from cangku.registry.records import Page, Visibility
from cangku.registry.referrers import MAX_REFERRERS_PER_PAGE, Referrers
from cangku.registry.repository import Repository, RepositoryWrapper
from cangku.registry.sessions import belongs_to
from cangku.registry.tagging import Tags, page_of, page_size
from cangku.registry.tags import TagPolicy, resolve_policy, set_policy
from cangku.registry.uploads import Uploads
from cangku.registry.usage import Quota, RepositoryUsage, UsageReport
from cangku.storage.base import BlobStorage

__all__ = ["MAX_PAGE_SIZE", "MAX_REFERRERS_PER_PAGE", "MAX_TAGS_PER_PUSH", "Registry"]

# An automatic mount looks at this many repositories holding the blob, at most.
MAX_MOUNT_SOURCES = 50
# Repository handles kept for reuse (`Registry.repository`): a few hundred bytes each.
MAX_HANDLES = 4096


class Registry:
    def __init__(
        self,
        storage: BlobStorage,
        metadata: MetadataStore,
        tag_defaults: TagPolicy | None = None,
        *,
        automatic_mount: bool = False,
        max_open_uploads: int = upload_limits.DEFAULT_MAX_OPEN_PER_OWNER,
        session_leases: bool = False,
        wrap: RepositoryWrapper | None = None,
    ) -> None:
        """`wrap`: called on every repository handle built (registry/repository.py): the
        seam where a cache, events or metrics put a class around a service.
        `session_leases`: for a storage driver that serialises an upload session's requests
        only within one process (S3): hold a lease row while one runs (upload_leases.py)."""
        self.core = Core(
            storage=storage,
            metadata=metadata,
            tag_defaults=tag_defaults or TagPolicy(),
            automatic_mount=automatic_mount,
            max_open_uploads=max_open_uploads,
            session_leases=session_leases,
        )
        self.storage = storage
        self.metadata = metadata
        self.files = self.core.files
        self.wrap = wrap
        # Issue 17: pulls counted in memory, flushed in batches (registry/pulls.py).
        self.pulls = PullCounter(metadata)
        # Issue 13: the pull-through cache's counters (proxy/stats.py CacheStats) when this
        # registry mirrors upstreams; typed loosely so that registry/ does not import proxy/.
        self.cache_stats: object | None = None
        self._handles: dict[str, Repository] = {}
        # The repository page's usage figures (registry/browse.py).
        self.usage_cache = browse.UsageCache()

    # Settings live in `core`, shared by every service the handles hold (tests change them).
    @property
    def automatic_mount(self) -> bool:
        return self.core.automatic_mount

    @automatic_mount.setter
    def automatic_mount(self, value: bool) -> None:
        self.core.automatic_mount = value

    @property
    def max_open_uploads(self) -> int:
        return self.core.max_open_uploads

    @max_open_uploads.setter
    def max_open_uploads(self, value: int) -> None:
        self.core.max_open_uploads = value

    @property
    def tag_defaults(self) -> TagPolicy:
        return self.core.tag_defaults

    @tag_defaults.setter
    def tag_defaults(self, value: TagPolicy) -> None:
        self.core.tag_defaults = value

    def repository(self, name: str, reader: Reader | None = None) -> Repository:
        """The services of repository `name`. NAME_INVALID for a name outside the OCI
        dist-spec grammar; a repository not pushed to yet is a valid handle (its reads
        answer NAME_UNKNOWN / BLOB_UNKNOWN, its first push creates it).

        `reader`: a client reading through /v2 (issue 17): the manifests it gets through
        this handle count as its pulls (`pulls.CountedManifests`, around any `wrap`).

        The services hold only the shared `core` and the name, so the handle of a name is
        built (and the name validated) once and reused, up to `MAX_HANDLES` names: a
        manifest GET allocates nothing here (issue 11). `wrap` still sees every handle."""
        handle = self._handles.get(name)
        if handle is None:
            validate_repository_name(name)
            core = self.core
            handle = Repository(
                name,
                Blobs(core, name),
                Uploads(core, name),
                Manifests(core, name),
                Tags(core, name),
                Referrers(core, name),
            )
            if len(self._handles) >= MAX_HANDLES:
                # Valid names are unbounded (anyone may ask for any): drop the oldest.
                del self._handles[next(iter(self._handles))]
            self._handles[name] = handle
        if self.wrap is not None:
            handle = self.wrap(handle)
        if reader is not None:
            handle = Repository(
                name,
                handle.blobs,
                handle.uploads,
                CountedManifests(handle.manifests, self.pulls, name, reader),
                handle.tags,
                handle.referrers,
            )
        return handle

    def pulled_manifests(self, name: str, reader: Reader) -> ManifestService:
        """`repository(name, reader).manifests`, without a handle built around it for the
        one service a manifest GET uses (a frozen dataclass of six fields per request).
        NAME_INVALID as `repository`."""
        return CountedManifests(self.repository(name).manifests, self.pulls, name, reader)

    # -- shortcuts to one repository's blobs ----------------------------------------------
    async def stat_blob(self, name: str, digest: str) -> tuple[Digest, int]:
        """The size of a blob repository `name` holds (BLOB_UNKNOWN otherwise)."""
        return await self.repository(name).blobs.stat(digest)

    async def delete_blob(
        self, name: str, digest: str, context: RequestContext = IN_PROCESS
    ) -> None:
        """Unlink a blob from repository `name` (see `BlobService.delete`)."""
        await self.repository(name).blobs.delete(digest, context)

    # -- across repositories ---------------------------------------------------------------
    async def repositories_holding(self, digest: str, limit: int = MAX_MOUNT_SOURCES) -> list[str]:
        """Up to `limit` repositories that hold the blob, by name: sources for an automatic
        mount (the caller's right to pull each is checked by the caller of this)."""
        parsed = str(Digest.parse(digest))
        return await self.metadata.read(
            lambda connection: blob_rows.holders(connection, parsed, limit)
        )

    async def list_repositories(
        self, limit: int | None, last: str | None, visible: Visibility | None = None
    ) -> Page:
        """Repositories with content, by name; with `visible`, only those the caller may see."""
        condition = visible_to(visible) if visible is not None else None
        size = page_size(limit)

        def page(connection: Connection) -> Page:
            names = repository_rows.names_with_content(connection, last, size + 1, condition)
            return page_of(names, size)

        return await self.metadata.read_cached(("catalog", limit, last, visible), page)

    # -- tag policy ------------------------------------------------------------------------
    async def set_tag_policy(
        self,
        scope: str,
        name: str,
        *,
        floating: bool | None = None,
        immutable_versions: bool | None = None,
    ) -> TagPolicy:
        """Set a repository's (or namespace's) floating / immutable-versions switches."""
        if scope == "repository":
            return await self.repository(name).tags.set_policy(
                floating=floating, immutable_versions=immutable_versions
            )
        if scope != "namespace":
            raise ValueError(f"unknown policy scope {scope!r}")
        validate_repository_name(name)
        if "/" in name:
            raise NameInvalid(f"a namespace has no '/': {name[:100]!r}")

        def store(connection: Connection) -> TagPolicy:
            locks.hold(connection, counters=[f"tag-policy:{scope}:{name}"])
            set_policy(
                connection, scope, name, floating=floating, immutable_versions=immutable_versions
            )
            return resolve_policy(connection, name, self.tag_defaults)

        return await self.metadata.write(store)

    # -- usage and quotas ------------------------------------------------------------------
    async def usage(self) -> UsageReport:
        """Bytes held by every repository and namespace, deduplicated and apparent."""
        return await self.metadata.read(usage.usage_report)

    async def repository_usage(self, name: str) -> RepositoryUsage:
        validate_repository_name(name)

        def measure(connection: Connection) -> RepositoryUsage:
            repository_id = known_repository_id(connection, name)
            report = usage.usage_report(connection, [repository_id])
            return report.namespaces[0].repositories[0]

        return await self.metadata.read(measure)

    async def page_usage(self, name: str) -> browse.CachedUsage:
        """`repository_usage` for the repository page, reused for up to
        `browse.USAGE_MAX_AGE` seconds (the aggregate grows with the repository; the page
        must not). NAME_INVALID, NAME_UNKNOWN."""
        cached = self.usage_cache.get(name)
        if cached is None:
            cached = self.usage_cache.put(name, await self.repository_usage(name))
        return cached

    async def set_quota(self, namespace: str, limit_bytes: int) -> Quota:
        """Cap a namespace's deduplicated usage; pushes beyond it are refused with DENIED."""
        _validate_namespace(namespace)
        if limit_bytes < 0:
            raise ValueError("a quota cannot be negative")

        def store(connection: Connection) -> Quota:
            locks.hold(connection, namespaces=[namespace])
            usage.set_quota(connection, namespace, limit_bytes)
            return Quota(namespace, limit_bytes, usage.namespace_usage(connection, namespace))

        return await self.metadata.write(store)

    async def unset_quota(self, namespace: str) -> bool:
        _validate_namespace(namespace)

        def remove(connection: Connection) -> bool:
            locks.hold(connection, namespaces=[namespace])
            return usage.unset_quota(connection, namespace)

        return await self.metadata.write(remove)

    async def quotas(self) -> list[Quota]:
        return await self.metadata.read(usage.list_quotas)

    # -- browsing and removing whole repositories (the web UI) -----------------------------
    async def browse_repositories(
        self,
        visible: Visibility | None,
        search: str = "",
        sort: str = "name",
        offset: int = 0,
        limit: int = 50,
    ) -> browse.RepositoryListing:
        """A page of repositories with their size and last push; sort "name" or "pushed"."""
        if sort not in browse.SORTS:
            raise ValueError(f"sort must be one of {browse.SORTS}")
        return await self.metadata.read(
            lambda connection: browse.list_summaries(
                connection, visible, search, sort, max(offset, 0), min(limit, MAX_PAGE_SIZE)
            )
        )

    async def tag_table(self, name: str, limit: int, after: str | None = None) -> browse.TagTable:
        """The repository page's tag table: the first `limit` tags by name (after the tag
        `after`, if given) with their manifests, newest pushes, index children and config
        sizes, in one read of two statements (NAME_UNKNOWN for an unknown repository)."""
        validate_repository_name(name)
        return await self.metadata.read(
            lambda connection: browse.tag_table(connection, name, min(limit, MAX_PAGE_SIZE), after)
        )

    async def image_parts(
        self, name: str, manifest_digests: Collection[str], blob_digests: Collection[str]
    ) -> browse.ImageParts:
        """What the image page measures, in one read: the child manifests among
        `manifest_digests` and the sizes of the blobs among `blob_digests` that the
        repository holds (digests it lacks are absent)."""
        validate_repository_name(name)
        return await self.metadata.read(
            lambda connection: browse.image_parts(connection, name, manifest_digests, blob_digests)
        )

    async def tags_on(self, name: str, digest: str, limit: int) -> list[str]:
        """The first `limit` tags of a repository pointing at the manifest `digest`, by name."""
        validate_repository_name(name)
        return await self.metadata.read(
            lambda connection: browse.tags_on(connection, name, digest, min(limit, MAX_PAGE_SIZE))
        )

    async def delete_repository(self, name: str, context: RequestContext = IN_PROCESS) -> None:
        """Every tag, manifest, blob link and upload of a repository, in one transaction.

        Pulls fail from then on; garbage collection frees the bytes nothing else holds.
        """
        validate_repository_name(name)

        def remove(connection: Connection) -> None:
            locks.hold(connection, namespaces=[locks.namespace_of(name)], repositories=[name])
            repository_id = known_repository_id(connection, name)
            browse.remove_repository(connection, repository_id, name, context)
            upload_limits.close_repository_sessions(connection, name)
            # Issue 17: a repository pushed again under the name starts with no pulls or texts.
            forget_repository(connection, repository_id)

        self.pulls.forget(name)
        await self.core.sessions.drop_repository(name)
        await self.metadata.write(remove)
        self.usage_cache.forget(name)
        sessions = [session async for session, _ in self.storage.iterate_uploads()]
        for session in sessions:
            if belongs_to(session, name):
                await self.storage.delete_upload(session)


def _validate_namespace(namespace: str) -> None:
    validate_repository_name(namespace)
    if "/" in namespace:
        raise NameInvalid(f"a namespace is one path component, not {namespace[:100]!r}")
