"""The pull-through cache as a wrapper around a repository's services (DESIGN.md,
"features as wrappers, not branches"; registry/protocols.py). Blobs: proxy/blobs.py.

A repository `<upstream>/<name>` (e.g. `docker.io/library/alpine`) is a mirror of `<name>`
upstream. Its manifests:
- by digest: served from the cache; fetched once (verified) when not cached, never again;
- by tag: served from the cache while the tag was checked upstream less than `revalidate`
  ago; else a manifest HEAD (not counted by Docker Hub's pull limit) says where the tag
  points, and a moved tag is fetched by digest, stored, and the move kept in the tag history;
- when the upstream cannot answer (down, timeout, 429, 5xx) a cached tag is served as it is
  (a log line says so); content never cached fails: TOOMANYREQUESTS with Retry-After for a
  429, UNAVAILABLE (503) otherwise;
- pushes and deletes through the registry API are refused with DENIED: it is a mirror.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import replace

from cangku.config import ProxySettings
from cangku.content.digest import Digest
from cangku.content.errors import (
    Denied,
    ManifestUnknown,
    NameUnknown,
)
from cangku.proxy.blobs import Flight, MirroredBlobs, never_cached
from cangku.proxy.stats import CacheStats
from cangku.proxy.upstream import Upstream, UpstreamError, UpstreamNotFound
from cangku.registry.blobs import Blobs
from cangku.registry.context import RequestContext
from cangku.registry.core import Core
from cangku.registry.manifests import Manifests
from cangku.registry.protocols import ManifestService
from cangku.registry.records import PushedManifest, StoredManifest
from cangku.registry.repository import Repository, RepositoryWrapper

log = logging.getLogger("cangku.proxy")


def upstream_name(upstream: str, name: str) -> str:
    """The repository's name upstream: Docker Hub keeps official images under `library/`."""
    if upstream == "docker.io" and "/" not in name:
        return f"library/{name}"
    return name


class MirroredManifests:
    """`ManifestService` of a mirror repository: `inner` holds what is cached, `store` keeps
    what the upstream gives; `checked` (shared by all handles of this upstream) holds when
    each (repository, tag) was last checked upstream, in `clock` seconds."""

    def __init__(
        self,
        inner: ManifestService,
        store: Manifests,
        upstream: Upstream,
        remote: str,
        checked: dict[tuple[str, str], float],
        clock: Callable[[], float] = time.monotonic,
        stats: CacheStats | None = None,
    ) -> None:
        self.stats = stats  # proxy/stats.py: hits, misses, checks, reads (eviction)
        self.inner = inner
        self.store = store
        self.upstream = upstream
        self.remote = remote
        self.checked = checked
        self.clock = clock

    @property
    def _mirror(self) -> str:
        return f"{self.store.name} is a mirror of {self.remote} on {self.upstream.settings.name}"

    async def put(
        self,
        reference: str,
        content: bytes,
        content_type: str | None,
        context: RequestContext,
        extra_tags: list[str] | None = None,
    ) -> PushedManifest:
        raise Denied(f"{self._mirror}: it cannot be pushed to; push to another repository")

    async def delete(self, reference: str, context: RequestContext) -> None:
        raise Denied(f"{self._mirror}: its content follows the upstream")

    async def get(self, reference: str) -> StoredManifest:
        manifest = await self._get(reference)
        if self.stats is not None:  # proxy/stats.py: the last use, which eviction goes by
            self.stats.read(self.upstream.settings.name, self.store.name, manifest.digest)
        return manifest

    async def _get(self, reference: str) -> StoredManifest:
        cached = await self._cached(reference)
        if ":" in reference:  # a digest: content-addressed, never revalidated
            if cached is not None:
                self._count("hit")
                return cached
            return await self._fetch(reference, None)
        key = (self.store.name, reference)
        revalidate = self.upstream.settings.revalidate
        last = self.checked.get(key)
        if cached is not None and last is not None and self.clock() - last < revalidate:
            self._count("hit")
            return cached
        try:
            digest = await self.upstream.head_manifest(self.remote, reference)
        except UpstreamNotFound:
            self._count("checked", "gone")
            raise ManifestUnknown("manifest unknown upstream", reference) from None
        except UpstreamError as error:
            self._count("checked", "failed")
            if cached is not None:
                self._count("stale")
                log.warning(
                    "serving %s:%s from the cache: upstream %s (%s)",
                    self.store.name,
                    reference,
                    self.upstream.settings.name,
                    error,
                )
                upstream = self.upstream.settings.name
                stale = f"served from the cache: upstream {upstream} failed ({error})"
                return replace(cached, warnings=(*cached.warnings, stale))
            raise never_cached(error) from None
        self.checked[key] = self.clock()
        if cached is not None and cached.digest == digest:
            self._count("checked", "unchanged")
            return cached
        self._count("checked", "moved" if cached is not None else "new")
        return await self._fetch(digest, reference)

    def _count(self, event: str, outcome: str = "", size: int = 0) -> None:
        """Tell proxy/stats.py (hits, misses, checks, served stale, upstream bytes)."""
        if self.stats is not None:
            self.stats.count(self.upstream.settings.name, self.store.name, event, outcome, size)

    async def _cached(self, reference: str) -> StoredManifest | None:
        try:
            return await self.inner.get(reference)
        except (ManifestUnknown, NameUnknown):
            return None

    async def _fetch(self, digest: str, tag: str | None) -> StoredManifest:
        try:
            manifest = await self.upstream.get_manifest(self.remote, digest)
        except UpstreamNotFound:
            raise ManifestUnknown("manifest unknown upstream", digest) from None
        except UpstreamError as error:
            raise never_cached(error) from None
        self._count("miss", size=len(manifest.content))
        actor = f"mirror:{self.upstream.settings.name}"
        await self.store.store_mirrored(
            tag, manifest.content, manifest.media_type, manifest.digest, actor
        )
        return StoredManifest(
            manifest.digest, manifest.media_type, len(manifest.content), manifest.content
        )


class MirrorUploads:
    """`UploadService` of a mirror repository: every upload is refused (DENIED), so no blob
    can be pushed into an upstream's namespace."""

    def __init__(self, mirror: str) -> None:
        self.refusal = f"{mirror} is a mirror: it cannot be pushed to; push to another repository"

    async def start(self, context: RequestContext, algorithm: str = "sha256") -> str:
        raise Denied(self.refusal)

    async def status(self, upload_id: str) -> int:
        raise Denied(self.refusal)

    async def append(
        self,
        upload_id: str,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None,
        context: RequestContext,
    ) -> int:
        raise Denied(self.refusal)

    async def finish(
        self,
        upload_id: str,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None,
        context: RequestContext,
    ) -> Digest:
        raise Denied(self.refusal)

    async def cancel(self, upload_id: str, context: RequestContext) -> None:
        raise Denied(self.refusal)


def mirror_wrapper(
    proxy: ProxySettings,
    upstreams: dict[str, Upstream],
    core: Core,
    clock: Callable[[], float] = time.monotonic,
    stats: CacheStats | None = None,
) -> RepositoryWrapper:
    """The Registry's `wrap` hook: repositories under an upstream's name get their manifests
    and blobs from that upstream; the others are handed back untouched. `core` is the
    Registry's (the repository's own `Manifests` and `Blobs` keep what the cache fetched)."""
    checked: dict[tuple[str, str], float] = {}
    flights: dict[str, Flight] = {}

    def wrap(handle: Repository) -> Repository:
        first, _, rest = handle.name.partition("/")
        upstream = upstreams.get(first)
        if upstream is None or not rest or proxy.upstream(first) is None:
            return handle
        remote = upstream_name(first, rest)
        manifests = MirroredManifests(
            handle.manifests, Manifests(core, handle.name), upstream, remote, checked, clock, stats
        )
        mirror = f"{handle.name} (of {remote} on {first})"
        blobs = MirroredBlobs(
            handle.blobs, Blobs(core, handle.name), upstream, remote, flights, mirror, stats
        )
        return replace(handle, manifests=manifests, uploads=MirrorUploads(mirror), blobs=blobs)

    return wrap
