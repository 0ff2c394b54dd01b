"""The registry's per-resource services, as interfaces.

`Registry.repository(name)` hands out one `Repository` whose `.blobs`, `.uploads`,
`.manifests`, `.tags` and `.referrers` implement these protocols. Anything that wants to
act *around* a service (a pull-through cache, event notifications, metrics) is a class
implementing the same protocol that holds the inner one, installed with the Registry's
`wrap` hook (as Distribution wraps `Repository{Manifests, Blobs, Tags}` for its proxy and
notifications). The errors raised are `cangku.content.errors.RegistryError`s carrying the
OCI dist-spec error code.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

from cangku.content.digest import Digest
from cangku.registry.context import RequestContext
from cangku.registry.records import (
    Page,
    PushedManifest,
    Referrer,
    ReferrersPage,
    StoredManifest,
    TagChange,
    VersionTree,
)
from cangku.registry.tags import TagPolicy
from cangku.storage.base import BlobContent


class BlobService(Protocol):
    """The blobs one repository holds (OCI dist-spec "Pulling blobs", "Deleting blobs")."""

    async def stat(self, digest: str) -> tuple[Digest, int]:
        """The parsed digest and size in bytes. DIGEST_INVALID, BLOB_UNKNOWN."""
        ...

    async def open(self, digest: Digest, start: int, end: int) -> BlobContent:
        """Bytes [start, end) of a blob `stat` answered for (which gave its size), as the
        storage serves them best: a LocalFile, a Redirect or a Stream (storage/base.py).
        Opened before this returns, so that a blob gone meanwhile raises BLOB_UNKNOWN here
        and not mid-response; a Stream may still fail mid-way (a mirror's upstream), and
        its receiver must then abort the response, never complete it."""
        ...

    def read(self, digest: Digest, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a blob `stat` answered for, as chunks (in-process readers
        such as the UI's config view). BLOB_UNKNOWN, OSError."""
        ...

    async def delete(self, digest: str, context: RequestContext) -> None:
        """Unlink the blob from the repository (garbage collection frees the bytes).
        BLOB_UNKNOWN when the repository does not hold it."""
        ...

    async def upload(
        self,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        context: RequestContext,
    ) -> Digest:
        """A monolithic upload (POST `?digest=`), verified before it is kept.
        DIGEST_INVALID, SIZE_INVALID, DENIED (quota)."""
        ...

    async def mount(self, digest: str, source: str, context: RequestContext) -> Digest | None:
        """Link a blob repository `source` holds; None when it cannot be mounted (the
        caller's right to pull `source` is checked before). DENIED (quota)."""
        ...


class UploadService(Protocol):
    """Upload sessions of one repository (OCI dist-spec "Pushing a blob in chunks")."""

    async def start(self, context: RequestContext, algorithm: str = "sha256") -> str:
        """A new session's id. DIGEST_INVALID (algorithm), TOOMANYREQUESTS (open sessions)."""
        ...

    async def status(self, upload_id: str) -> int:
        """Bytes received so far. BLOB_UPLOAD_UNKNOWN."""
        ...

    async def append(
        self,
        upload_id: str,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None,
        context: RequestContext,
    ) -> int:
        """Append a chunk (`content_range` inclusive, RFC 9110 §14.4); the new size.
        BLOB_UPLOAD_UNKNOWN, BLOB_UPLOAD_INVALID, range not satisfiable, DENIED (quota)."""
        ...

    async def finish(
        self,
        upload_id: str,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None,
        context: RequestContext,
    ) -> Digest:
        """Take the last chunk, verify the whole upload and keep it as the blob.
        DIGEST_INVALID, BLOB_UPLOAD_UNKNOWN, BLOB_UPLOAD_INVALID, DENIED (quota)."""
        ...

    async def cancel(self, upload_id: str, context: RequestContext) -> None:
        """End a session and drop its bytes. BLOB_UPLOAD_UNKNOWN."""
        ...


class ManifestService(Protocol):
    """Manifests of one repository (OCI dist-spec "Pushing/Pulling/Deleting manifests")."""

    async def put(
        self,
        reference: str,
        content: bytes,
        content_type: str | None,
        context: RequestContext,
        extra_tags: list[str] | None = None,
    ) -> PushedManifest:
        """Store a manifest (at most 4 MiB) by tag or digest, with `?tag=` extra tags.
        MANIFEST_INVALID, DIGEST_INVALID, MANIFEST_BLOB_UNKNOWN, TAG_INVALID, DENIED."""
        ...

    async def get(self, reference: str) -> StoredManifest:
        """A manifest by tag or digest. NAME_UNKNOWN, MANIFEST_UNKNOWN."""
        ...

    async def delete(self, reference: str, context: RequestContext) -> None:
        """By digest: the manifest and its tags; by tag: that tag only.
        NAME_UNKNOWN, MANIFEST_UNKNOWN, DENIED (immutable tag)."""
        ...


class TagService(Protocol):
    """Tags of one repository: listing (OCI dist-spec "Listing Tags"), policy, history."""

    async def list(self, limit: int | None, last: str | None) -> Page:
        """Up to `limit` tag names after `last`, in name order. NAME_UNKNOWN."""
        ...

    async def history(
        self, tag: str, limit: int = ..., before: int | None = None
    ) -> builtins.list[TagChange]:
        """Up to `limit` moves of a tag, newest first, older than change `before`.
        NAME_UNKNOWN, TAG_INVALID."""
        ...

    async def history_page(
        self, tag: str, limit: int = ..., before: int | None = None
    ) -> tuple[builtins.list[TagChange], int | None]:
        """`history` and the `before` of the next page (None on the last)."""
        ...

    async def newest_move(self, tag: str, digest: str) -> TagChange | None:
        """The change that moved `tag` onto `digest` last. NAME_UNKNOWN."""
        ...

    async def release(self, tag: str, context: RequestContext) -> str | None:
        """Hand a client-managed floating tag back to the policy (docs/tags.md); the release
        it follows now. NAME_UNKNOWN, MANIFEST_UNKNOWN, REQUEST_INVALID."""
        ...

    async def policy(self) -> TagPolicy:
        """The effective tag policy (server, namespace and repository settings merged)."""
        ...

    async def set_policy(
        self, *, floating: bool | None = None, immutable_versions: bool | None = None
    ) -> TagPolicy:
        """Set the repository's own switches (None: inherit); the effective policy."""
        ...

    async def version_tree(self, limit: int = ..., last: str | None = None) -> VersionTree:
        """A page of versions, highest first after `last`, grouped major → minor → patch,
        with floating tags. NAME_UNKNOWN, REQUEST_INVALID."""
        ...


class ReferrerService(Protocol):
    """Manifests whose subject is a given digest (OCI dist-spec "Listing Referrers")."""

    async def list(self, digest: str, artifact_type: str | None) -> builtins.list[Referrer]:
        """Every referrer, oldest first. DIGEST_INVALID."""
        ...

    async def page(
        self, digest: str, artifact_type: str | None, *, last: str | None = None, max_bytes: int
    ) -> ReferrersPage:
        """One page after digest `last`, its descriptors within `max_bytes` of JSON."""
        ...
