"""The blobs one repository holds: stat, delete, monolithic upload, mount.

Also the two rules every way a blob enters a repository shares: `record_blob` (the row is
written only while storage holds the file, and only within the namespace's quota) and
`within_quota` (an upload's bytes are refused as they would cross the quota).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator

from cangku.content.digest import Digest
from cangku.content.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    Denied,
    RegistryError,
)
from cangku.content.manifest import Descriptor, parse_manifest
from cangku.events import records as events
from cangku.metadata import Connection, locks
from cangku.metadata import blobs as blob_rows
from cangku.metadata import manifests as manifest_rows
from cangku.metadata import repositories as repository_rows
from cangku.registry import upload_limits, usage
from cangku.registry.context import RequestContext
from cangku.registry.core import Core
from cangku.registry.files import TransactionFiles
from cangku.storage.base import BlobContent


class Blobs:
    """`BlobService` of repository `name` (validated by `Registry.repository`)."""

    __slots__ = ("core", "name")

    def __init__(self, core: Core, name: str) -> None:
        self.core = core
        self.name = name

    async def expected_size(self, digest: Digest) -> int | None:
        """The size in bytes blob `digest` must have, as far as the registry knows: its
        recorded size, else the size a manifest of this repository declares for it (the
        pull-through cache checks an upstream's Content-Length against it); None: unknown."""
        name, text = self.name, str(digest)

        def find(connection: Connection) -> int | None:
            recorded = blob_rows.recorded_size(connection, text)
            if recorded is not None:
                return recorded
            for media_type, content in manifest_rows.referencing(connection, name, text, 4):
                for descriptor in _blob_descriptors(media_type, content):
                    if descriptor.digest == digest:
                        return descriptor.size
            return None

        return await self.core.metadata.read(find)

    async def stat(self, digest: str) -> tuple[Digest, int]:
        """The size of a blob this repository holds (BLOB_UNKNOWN otherwise)."""
        parsed = Digest.parse(digest)
        name, text = self.name, str(parsed)
        size = await self.core.metadata.read_cached(
            ("blob", name, text),
            lambda connection: blob_rows.size_in_repository(connection, name, text),
        )
        if size is None:
            raise BlobUnknown("blob unknown to registry", text)
        return parsed, size

    async def open(self, digest: Digest, start: int, end: int) -> BlobContent:
        """Bytes [start, end) as the storage serves them (storage/base.py `open`)."""
        return await self.core.storage.open(digest, start, end)

    def read(self, digest: Digest, start: int, end: int) -> AsyncIterator[bytes]:
        return self.core.storage.read(digest, start, end)

    async def delete(self, digest: str, context: RequestContext) -> None:
        """Unlink a blob from the repository; garbage collection frees the bytes later."""
        parsed = Digest.parse(digest)

        def unlink(connection: Connection) -> bool:
            locks.hold(connection, repositories=[self.name])
            repository_id = repository_rows.repository_id(connection, self.name)
            return repository_id is not None and blob_rows.unlink(
                connection, repository_id, str(parsed)
            )

        if not await self.core.metadata.write(unlink):
            raise BlobUnknown("blob unknown to registry", str(parsed))

    async def upload(
        self,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        context: RequestContext,
    ) -> Digest:
        """A monolithic upload: the whole blob in one request, verified before it is kept."""
        parsed = Digest.parse(digest)
        name = self.name
        if length is not None:
            # Refuse before receiving the bytes; the check that counts is the one in `record`.
            refusal = await self.core.metadata.read(
                lambda connection: usage.check_blob_quota(connection, name, parsed, length)
            )
            if refusal is not None:
                raise refusal
        else:
            # Of unknown length: the temporary file may grow only as far as the quota.
            body = await within_quota(self.core, name, body, None)
        size = await self.core.storage.write_blob(body, parsed, length)

        def record(connection: Connection) -> RegistryError | None:
            return record_blob(connection, self.core.files, name, parsed, size, context)

        raise_if_refused(await self.core.metadata.write(record))
        return parsed

    async def mount(self, digest: str, source: str, context: RequestContext) -> Digest | None:
        """Link a blob that repository `source` holds; None when it cannot be mounted.

        Whether the caller may pull `source` is the HTTP layer's check; a mount without
        `from` tries `Registry.repositories_holding` one by one (`automatic_mount` on).
        """
        parsed = Digest.parse(digest)
        if await self.core.storage.stat(parsed) is None:
            return None

        def link(connection: Connection) -> RegistryError | bool:
            # The locks record_blob takes, before the source's link is read.
            locks.for_repository_content(connection, self.name, str(parsed))
            size = blob_rows.size_in_repository(connection, source, str(parsed))
            if size is None:
                return False
            refused = record_blob(connection, self.core.files, self.name, parsed, size, context)
            if refused is not None:
                return refused
            events.blob_mounted(
                connection, self.name, context, digest=str(parsed), size=size, source=source
            )
            return True

        outcome = await self.core.metadata.write(link)
        if isinstance(outcome, RegistryError):
            if isinstance(outcome, Denied):
                raise outcome
            return None  # Collected meanwhile: the client uploads it instead.
        return parsed if outcome else None

    async def keep_mirrored(
        self,
        chunks: AsyncIterable[bytes],
        digest: Digest,
        length: int,
        context: RequestContext,
    ) -> int:
        """Keep a blob fetched from an upstream registry (the pull-through cache,
        docs/proxy.md) and link it into this repository; its size in bytes. The storage
        writes it aside and verifies it against `digest` and `length` before it becomes
        visible, so a wrong or cut-short transfer leaves nothing behind. DIGEST_INVALID,
        SIZE_INVALID, BLOB_UPLOAD_INVALID (too short, or garbage-collected meanwhile),
        DENIED (quota)."""
        size = await self.core.storage.write_blob(chunks, digest, length)
        name, files = self.name, self.core.files
        raise_if_refused(
            await self.core.metadata.write(
                lambda connection: record_blob(connection, files, name, digest, size, context)
            )
        )
        return size

    async def link_stored(self, digest: Digest, context: RequestContext) -> bool:
        """Link a blob the storage already holds (cached for another repository) into this
        one; False when the storage does not hold it (or garbage collection took it
        meanwhile). DENIED (quota)."""
        size = await self.core.storage.stat(digest)
        if size is None:
            return False
        name, files = self.name, self.core.files
        refusal = await self.core.metadata.write(
            lambda connection: record_blob(connection, files, name, digest, size, context)
        )
        if isinstance(refusal, Denied):
            raise refusal
        return refusal is None


def record_blob(
    connection: Connection,
    files: TransactionFiles,
    name: str,
    digest: Digest,
    size: int,
    context: RequestContext,
) -> RegistryError | None:
    """Record a blob that storage holds and link it into repository `name` (the first
    blob of a repository records its `repository.created` event, as `context`'s caller).

    Returns the refusal instead of raising it, so that the caller's transaction still commits
    its own clean-up (an upload session's row); the caller raises it afterwards.
    Takes the transaction's locks (metadata/locks.py): call it before other writes.
    """
    locks.for_repository_content(connection, name, str(digest))
    recorded = blob_rows.recorded_size(connection, str(digest))
    # Garbage collection deletes a file only inside a transaction that removed its row; this
    # one runs before or after such a transaction, never during: the file seen here stays.
    if not files.exists(digest):
        return BlobUploadInvalid(
            "the blob was garbage-collected while this upload finished; upload it again",
            str(digest),
        )
    refusal = usage.check_blob_quota(connection, name, digest, size)
    if refusal is not None:
        if recorded is None:
            files.delete([digest])  # Nothing half-written: unrecorded, so nobody else needs it.
        return refusal
    now = time.time()
    # A fresh upload of known content restarts its garbage-collection grace period.
    blob_rows.record(connection, str(digest), size, now, known=recorded is not None)
    repository_id = repository_rows.ensure_repository(
        connection, name, lambda: events.repository_created(connection, name, context)
    )
    blob_rows.link(connection, repository_id, str(digest), now)
    return None


async def within_quota(
    core: Core, name: str, body: AsyncIterable[bytes], length: int | None
) -> AsyncIterable[bytes]:
    """`body`, refused (Denied) where it would take the namespace's usage plus the bytes
    its open upload sessions hold over its quota (registry/upload_limits.py)."""
    namespace = usage.namespace_of(name)
    # Most namespaces have no quota: a cached read, no more, on every chunk.
    limit = await core.metadata.read_cached(
        ("quota", namespace), lambda connection: usage.quota_limit(connection, namespace)
    )
    if limit is None:
        return body
    # Sessions opened here whose rows are not committed yet hold bytes too. Named before the
    # read as well as after: a row whose write commits while the read runs (PostgreSQL: in a
    # thread) may be neither in what it read nor in the ledger afterwards.
    unrecorded = core.sessions.unrecorded_in(namespace)
    used, sessions = await core.metadata.read(
        lambda connection: upload_limits.quota_state(connection, namespace)
    )
    parked = 0
    for session in {*sessions, *unrecorded, *core.sessions.unrecorded_in(namespace)}:
        parked += await core.storage.upload_size(session) or 0
    allowance = limit - used - parked
    # Of unknown length: refused as soon as it needs one byte more than is left.
    needed = length if length is not None else allowance + 1
    refusal = usage.over_quota(namespace, limit, used + parked, needed)
    if refusal is None:
        return body  # Its whole length fits (storage holds it to that length).
    if length is not None:
        raise refusal
    return upload_limits.bounded(body, allowance, refusal)


def raise_if_refused(refusal: RegistryError | None) -> None:
    if refusal is not None:
        raise refusal


def _blob_descriptors(media_type: str, content: bytes) -> list[Descriptor]:
    """The config and layer descriptors of a stored manifest (validated when it was
    stored, so a failure here only means none are known)."""
    try:
        return parse_manifest(content, media_type, Digest.of(content)).blobs
    except RegistryError:
        return []
