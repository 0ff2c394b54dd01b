"""The registry's use cases: blobs, uploads, manifests, tags, listings, referrers.

Each method validates its inputs, talks to storage (bytes) and metadata (rows), and raises
`RegistryError`s carrying the OCI error code. A manifest and its tag are written in one
transaction, so a puller never sees a tag pointing at a manifest that is not there.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from cangku.content.digest import HEX_LENGTHS, Digest
from cangku.content.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    PayloadTooLarge,
    RegistryError,
    TooManyTags,
)
from cangku.content.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from cangku.content.names import parse_reference, validate_repository_name, validate_tag
from cangku.metadata.schema import (
    blobs,
    manifest_references,
    manifests,
    repositories,
    repository_blobs,
    tag_history,
    tags,
)
from cangku.metadata.store import MetadataStore
from cangku.registry import browse, upload_limits, usage
from cangku.registry.files import TransactionFiles
from cangku.registry.pulls import PullCounter, forget_repository
from cangku.registry.records import (
    Page,
    PushedManifest,
    Referrer,
    ReferrersPage,
    StoredManifest,
    TagChange,
    VersionTree,
    Visibility,
)
from cangku.registry.sessions import belongs_to, new_upload_id, session_name
from cangku.registry.tags import (
    TagPolicy,
    current_digest,
    push_tag,
    remove_tags,
    resolve_policy,
    set_policy,
)
from cangku.registry.usage import Quota, RepositoryUsage, UsageReport
from cangku.storage.base import BlobStorage

# Listing pages: the spec lets a registry cap `n`; clients follow the Link header.
MAX_PAGE_SIZE = 10_000
# OCI dist-spec main "Pushing manifests with multiple tags": at least 10 SHOULD be taken; more
# than this many `?tag=` on one PUT is 414 (docs/api.md).
MAX_TAGS_PER_PUSH = 100
# The referrers API lists at most this many descriptors per page (and at most 4 MiB).
MAX_REFERRERS_PER_PAGE = 1000
# An automatic mount looks at this many repositories holding the blob, at most.
MAX_MOUNT_SOURCES = 50

# The hot read paths, built once: building a statement costs more than running it.
_MANIFEST_COLUMNS = (
    manifests.c.digest,
    manifests.c.media_type,
    manifests.c.size,
    manifests.c.content,
)
MANIFEST_BY_DIGEST = (
    select(*_MANIFEST_COLUMNS)
    .select_from(manifests.join(repositories, repositories.c.id == manifests.c.repository_id))
    .where(repositories.c.name == bindparam("name"), manifests.c.digest == bindparam("digest"))
)
MANIFEST_BY_TAG = (
    select(*_MANIFEST_COLUMNS)
    .select_from(
        tags.join(repositories, repositories.c.id == tags.c.repository_id).join(
            manifests,
            and_(
                manifests.c.repository_id == tags.c.repository_id,
                manifests.c.digest == tags.c.manifest_digest,
            ),
        )
    )
    .where(repositories.c.name == bindparam("name"), tags.c.name == bindparam("tag"))
)
BLOB_SIZE_IN_REPOSITORY = (
    select(blobs.c.size)
    .select_from(
        repositories.join(
            repository_blobs, repository_blobs.c.repository_id == repositories.c.id
        ).join(blobs, blobs.c.digest == repository_blobs.c.digest)
    )
    .where(
        repositories.c.name == bindparam("name"), repository_blobs.c.digest == bindparam("digest")
    )
)
REPOSITORY_ID = select(repositories.c.id).where(repositories.c.name == bindparam("name"))
# The write paths' statements (pushes are many small transactions).
_INSERT_REPOSITORY = insert(repositories).returning(repositories.c.id)
_BLOB_SIZE = select(blobs.c.size).where(blobs.c.digest == bindparam("digest"))
_INSERT_BLOB = insert(blobs)
_TOUCH_BLOB = (
    update(blobs).where(blobs.c.digest == bindparam("b_digest")).values(created_at=bindparam("now"))
)
_TOUCH_LINK = (
    update(repository_blobs)
    .where(
        repository_blobs.c.repository_id == bindparam("b_repository_id"),
        repository_blobs.c.digest == bindparam("b_digest"),
    )
    .values(created_at=bindparam("now"))
)
_INSERT_LINK = insert(repository_blobs)
_LINKED_BLOBS = select(repository_blobs.c.digest).where(
    repository_blobs.c.repository_id == bindparam("repository_id"),
    repository_blobs.c.digest.in_(bindparam("digests", expanding=True)),
)
_PRESENT_MANIFESTS = select(manifests.c.digest).where(
    manifests.c.repository_id == bindparam("repository_id"),
    manifests.c.digest.in_(bindparam("digests", expanding=True)),
)
_STORED_MEDIA_TYPE = select(manifests.c.media_type).where(
    manifests.c.repository_id == bindparam("repository_id"),
    manifests.c.digest == bindparam("digest"),
)
_INSERT_MANIFEST = insert(manifests)
_INSERT_REFERENCES = insert(manifest_references)
_CLEAR_UNTAGGED = (
    update(manifests)
    .where(
        manifests.c.repository_id == bindparam("b_repository_id"),
        manifests.c.digest == bindparam("b_digest"),
        manifests.c.untagged_since.is_not(None),
    )
    .values(untagged_since=None)
)


class Registry:
    def __init__(
        self,
        storage: BlobStorage,
        metadata: MetadataStore,
        tag_defaults: TagPolicy | None = None,
        *,
        automatic_mount: bool = False,
        max_open_uploads: int = upload_limits.DEFAULT_MAX_OPEN_PER_OWNER,
    ) -> None:
        self.storage = storage
        self.metadata = metadata
        # OCI dist-spec "Mounting a blob from another repository": a mount without `from` may
        # link the blob from any repository the caller may pull (`uploads.automatic_mount`).
        self.automatic_mount = automatic_mount
        # Upload sessions one owner may keep open at once (registry/upload_limits.py).
        self.max_open_uploads = max_open_uploads
        # The server-wide tag policy; namespaces and repositories may override it.
        self.tag_defaults = tag_defaults or TagPolicy()
        self.files = TransactionFiles(storage)
        # Issue 17: pulls counted in memory, flushed in batches (registry/pulls.py).
        self.pulls = PullCounter(metadata)

    # -- blobs -----------------------------------------------------------------------------
    async def stat_blob(self, name: str, digest: str) -> tuple[Digest, int]:
        """The size of a blob this repository holds (BLOB_UNKNOWN otherwise)."""
        validate_repository_name(name)
        parsed = Digest.parse(digest)
        parameters = {"name": name, "digest": str(parsed)}
        size = await self.metadata.read_cached(
            ("blob", name, str(parsed)),
            lambda connection: connection.scalar(BLOB_SIZE_IN_REPOSITORY, parameters),
        )
        if size is None:
            raise BlobUnknown("blob unknown to registry", str(parsed))
        return parsed, size

    def blob_path(self, digest: Digest) -> Path | None:
        return self.storage.local_path(digest)

    def read_blob(self, digest: Digest, start: int, end: int) -> AsyncIterator[bytes]:
        return self.storage.read(digest, start, end)

    async def delete_blob(self, name: str, digest: str) -> None:
        """Unlink a blob from the repository; garbage collection frees the bytes later."""
        validate_repository_name(name)
        parsed = Digest.parse(digest)

        def unlink(connection: Connection) -> int:
            repository_id = _repository_id(connection, name)
            if repository_id is None:
                return 0
            result = connection.execute(
                delete(repository_blobs).where(
                    repository_blobs.c.repository_id == repository_id,
                    repository_blobs.c.digest == str(parsed),
                )
            )
            return result.rowcount

        if not await self.metadata.write(unlink):
            raise BlobUnknown("blob unknown to registry", str(parsed))

    # -- uploads ---------------------------------------------------------------------------
    async def start_upload(
        self, name: str, owner: str | None = None, algorithm: str = "sha256"
    ) -> str:
        """A new upload session's id, hashing with `algorithm` ("sha256" or "sha512", OCI
        dist-spec main `?digest-algorithm=`; DIGEST_INVALID for another). `owner` (a user's
        name, or `address:<ip>`) may keep at most `max_open_uploads` open (TooManyRequests);
        None: not counted (in-process use)."""
        if algorithm not in HEX_LENGTHS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:100]!r}")
        upload_id = new_upload_id()
        session = session_name(name, upload_id)
        refusal = await self.metadata.write(
            lambda connection: upload_limits.open_session(
                connection, session, name, owner, self.max_open_uploads
            )
        )
        _raise_if_refused(refusal)
        try:
            await self.storage.create_upload(session, algorithm)
        except BaseException:
            await self.metadata.write(
                lambda connection: upload_limits.close_sessions(connection, [session])
            )
            raise
        return upload_id

    async def upload_blob(
        self, name: str, digest: str, body: AsyncIterable[bytes], length: int | None
    ) -> Digest:
        """A monolithic upload: the whole blob in one request, verified before it is kept."""
        validate_repository_name(name)
        parsed = Digest.parse(digest)
        if length is not None:
            # Refuse before receiving the bytes; the check that counts is the one in `record`.
            refusal = await self.metadata.read(
                lambda connection: usage.check_blob_quota(connection, name, parsed, length)
            )
            if refusal is not None:
                raise refusal
        else:
            # Of unknown length: the temporary file may grow only as far as the quota.
            body = await self._within_quota(name, body, None)
        size = await self.storage.write_blob(body, parsed, length)

        def record(connection: Connection) -> RegistryError | None:
            return _record_blob(connection, self.files, name, parsed, size)

        _raise_if_refused(await self.metadata.write(record))
        return parsed

    async def mount_blob(self, name: str, digest: str, from_name: str) -> Digest | None:
        """Link a blob that repository `from_name` holds; None when it cannot be mounted.

        Whether the caller may pull `from_name` is the HTTP layer's check; a mount without
        `from` tries `repositories_holding` one by one (only with `automatic_mount` on).
        """
        validate_repository_name(name)
        parsed = Digest.parse(digest)
        validate_repository_name(from_name)
        if await self.storage.stat(parsed) is None:
            return None

        def link(connection: Connection) -> RegistryError | bool:
            size = connection.scalar(
                select(blobs.c.size)
                .select_from(
                    repository_blobs.join(
                        repositories, repositories.c.id == repository_blobs.c.repository_id
                    ).join(blobs, blobs.c.digest == repository_blobs.c.digest)
                )
                .where(repository_blobs.c.digest == str(parsed), repositories.c.name == from_name)
            )
            if size is None:
                return False
            return _record_blob(connection, self.files, name, parsed, size) or True

        outcome = await self.metadata.write(link)
        if isinstance(outcome, RegistryError):
            if isinstance(outcome, Denied):
                raise outcome
            return None  # Collected meanwhile: the client uploads it instead.
        return parsed if outcome else None

    async def repositories_holding(self, digest: str, limit: int = MAX_MOUNT_SOURCES) -> list[str]:
        """Up to `limit` repositories that hold the blob, by name: sources for an automatic
        mount (the caller's right to pull each is checked by the caller of this)."""
        parsed = Digest.parse(digest)
        query = (
            select(repositories.c.name)
            .select_from(
                repository_blobs.join(
                    repositories, repositories.c.id == repository_blobs.c.repository_id
                )
            )
            .where(repository_blobs.c.digest == str(parsed))
            .order_by(repositories.c.name)
            .limit(limit)
        )
        return list(await self.metadata.read(lambda connection: connection.scalars(query).all()))

    async def upload_status(self, name: str, upload_id: str) -> int:
        size = await self.storage.upload_size(session_name(name, upload_id))
        if size is None:
            raise BlobUploadUnknown("upload unknown to registry", upload_id)
        return size

    async def append_upload(
        self,
        name: str,
        upload_id: str,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None,
    ) -> int:
        """Append one chunk; with Content-Range it must start where the upload ends."""
        session = session_name(name, upload_id)
        start = None
        if content_range is not None:
            start, end = content_range
            if length is not None and end - start + 1 != length:
                raise BlobUploadInvalid("Content-Range does not match Content-Length")
            length = end - start + 1
        body = await self._within_quota(name, body, length)
        try:
            return await self.storage.append_upload(session, body, length, start)
        except BlobUploadUnknown:
            raise BlobUploadUnknown("upload unknown to registry", upload_id) from None

    async def finish_upload(
        self,
        name: str,
        upload_id: str,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None = None,
    ) -> Digest:
        """Take the last chunk (if any), verify the whole upload and keep it as the blob."""
        parsed = Digest.parse(digest)
        if length != 0:
            # The same rules as a PATCH: a final chunk out of order is refused (416).
            await self.append_upload(name, upload_id, body, length, content_range)
        session = session_name(name, upload_id)
        try:
            # The session ends here: its bytes become the blob (unless a quota refuses it).
            size = await self.storage.commit_upload(session, parsed)
        except BlobUploadUnknown:
            raise BlobUploadUnknown("upload unknown to registry", upload_id) from None
        except BaseException:
            if await self.storage.upload_size(session) is None:  # Refused and ended.
                await self.metadata.write(
                    lambda connection: upload_limits.close_sessions(connection, [session])
                )
            raise

        def record(connection: Connection) -> RegistryError | None:
            upload_limits.close_sessions(connection, [session])
            return _record_blob(connection, self.files, name, parsed, size)

        _raise_if_refused(await self.metadata.write(record))
        return parsed

    async def cancel_upload(self, name: str, upload_id: str) -> None:
        session = session_name(name, upload_id)
        if await self.storage.upload_size(session) is None:
            raise BlobUploadUnknown("upload unknown to registry", upload_id)
        await self.storage.delete_upload(session)
        await self.metadata.write(
            lambda connection: upload_limits.close_sessions(connection, [session])
        )

    async def _within_quota(
        self, name: str, body: AsyncIterable[bytes], length: int | None
    ) -> AsyncIterable[bytes]:
        """`body`, refused (Denied) where it would take the namespace's usage plus the bytes
        its open upload sessions hold over its quota (registry/upload_limits.py)."""
        namespace = usage.namespace_of(name)
        # Most namespaces have no quota: a cached read, no more, on every chunk.
        limit = await self.metadata.read_cached(
            ("quota", namespace), lambda connection: usage.quota_limit(connection, namespace)
        )
        if limit is None:
            return body
        used, sessions = await self.metadata.read(
            lambda connection: upload_limits.quota_state(connection, namespace)
        )
        parked = 0
        for session in sessions:
            parked += await self.storage.upload_size(session) or 0
        allowance = limit - used - parked
        # Of unknown length: refused as soon as it needs one byte more than is left.
        needed = length if length is not None else allowance + 1
        refusal = usage.over_quota(namespace, limit, used + parked, needed)
        if refusal is None:
            return body  # Its whole length fits (storage holds it to that length).
        if length is not None:
            raise refusal
        return upload_limits.bounded(body, allowance, refusal)

    # -- manifests -------------------------------------------------------------------------
    async def put_manifest(
        self,
        name: str,
        reference: str,
        content: bytes,
        content_type: str | None,
        extra_tags: list[str] | None = None,
        actor: str | None = None,
    ) -> PushedManifest:
        validate_repository_name(name)
        if len(content) > MAX_MANIFEST_BYTES:
            raise PayloadTooLarge("manifest is larger than 4 MiB")
        target = parse_reference(reference)
        if isinstance(target, Digest):
            digest = Digest.of(content, target.algorithm)
            if digest != target:
                raise DigestInvalid("the manifest does not match the digest", str(target))
            tag_names = []
        else:
            digest = Digest.of(content)
            tag_names = [target]
        extra_tags = extra_tags or []
        if len(extra_tags) > MAX_TAGS_PER_PUSH:
            raise TooManyTags(
                f"{len(extra_tags)} tags in one push; at most {MAX_TAGS_PER_PUSH} are taken"
            )
        # Each tag once, in the order given (one OCI-Tag reply header each).
        tag_names = list(dict.fromkeys(tag_names + [validate_tag(tag) for tag in extra_tags]))
        manifest = parse_manifest(content, content_type, digest)

        def store(connection: Connection) -> None:
            repository_id = _ensure_repository(connection, name)
            _check_references(connection, repository_id, manifest)
            stored_type = _stored_media_type(connection, repository_id, digest)
            if stored_type is not None and stored_type != manifest.media_type:
                # One type per digest: a tag must be served as what it was pushed as.
                raise ManifestInvalid(
                    f"this manifest is stored as {stored_type}; it cannot also be a "
                    f"{manifest.media_type}",
                    str(digest),
                )
            if stored_type is None:
                refusal = usage.check_manifest_quota(connection, name, manifest.size)
                if refusal is not None:
                    raise refusal
                _insert_manifest(connection, repository_id, manifest, content)
            policy = resolve_policy(connection, name, self.tag_defaults)
            for tag in tag_names:
                push_tag(connection, repository_id, name, tag, str(digest), policy, actor)
            if tag_names:
                _clear_untagged_since(connection, repository_id, digest)

        await self.metadata.write(store)
        return PushedManifest(
            digest=str(digest),
            subject=str(manifest.subject.digest) if manifest.subject else None,
            tags=tag_names,
        )

    async def get_manifest(self, name: str, reference: str) -> StoredManifest:
        validate_repository_name(name)
        try:
            target = parse_reference(reference)
        except ManifestInvalid:
            raise ManifestUnknown("manifest unknown", reference[:200]) from None
        if isinstance(target, Digest):
            query, parameters = MANIFEST_BY_DIGEST, {"name": name, "digest": str(target)}
        else:
            query, parameters = MANIFEST_BY_TAG, {"name": name, "tag": target}

        def find(connection: Connection) -> StoredManifest:
            row = connection.execute(query, parameters).first()
            if row is None:
                if _repository_id(connection, name) is None:
                    raise NameUnknown("repository name not known to registry", name)
                raise ManifestUnknown("manifest unknown", reference)
            return StoredManifest(
                digest=row.digest, media_type=row.media_type, size=row.size, content=row.content
            )

        return await self.metadata.read_cached(("manifest", name, reference), find)

    async def delete_manifest(self, name: str, reference: str, actor: str | None = None) -> None:
        """By digest: the manifest and every tag on it. By tag: only that tag."""
        validate_repository_name(name)
        target = parse_reference(reference)

        def remove(connection: Connection) -> None:
            repository_id = _known_repository_id(connection, name)
            policy = resolve_policy(connection, name, self.tag_defaults)
            if not isinstance(target, Digest):
                digest = current_digest(connection, repository_id, target)
                if digest is None:
                    raise ManifestUnknown("manifest unknown", reference)
                remove_tags(connection, repository_id, {target: digest}, policy, actor)
                return
            digest = str(target)
            result = connection.execute(
                delete(manifests).where(
                    manifests.c.repository_id == repository_id, manifests.c.digest == digest
                )
            )
            if not result.rowcount:
                raise ManifestUnknown("manifest unknown", reference)
            on_manifest = connection.scalars(
                select(tags.c.name).where(
                    tags.c.repository_id == repository_id, tags.c.manifest_digest == digest
                )
            ).all()
            remove_tags(
                connection, repository_id, dict.fromkeys(on_manifest, digest), policy, actor
            )
            connection.execute(
                delete(manifest_references).where(
                    manifest_references.c.repository_id == repository_id,
                    manifest_references.c.manifest_digest == digest,
                )
            )

        await self.metadata.write(remove)

    # -- tag policy, history and versions --------------------------------------------------
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
            validate_repository_name(name)
        elif scope == "namespace":
            validate_repository_name(name)
            if "/" in name:
                raise NameInvalid(f"a namespace has no '/': {name[:100]!r}")
        else:
            raise ValueError(f"unknown policy scope {scope!r}")

        def store(connection: Connection) -> TagPolicy:
            set_policy(
                connection, scope, name, floating=floating, immutable_versions=immutable_versions
            )
            return resolve_policy(connection, name, self.tag_defaults)

        return await self.metadata.write(store)

    async def tag_policy(self, name: str) -> TagPolicy:
        validate_repository_name(name)
        return await self.metadata.read(
            lambda connection: resolve_policy(connection, name, self.tag_defaults)
        )

    async def tag_history(self, name: str, tag: str) -> list[TagChange]:
        """Every move of a tag, newest first."""
        validate_repository_name(name)
        validate_tag(tag)

        def history(connection: Connection) -> list[TagChange]:
            repository_id = _known_repository_id(connection, name)
            rows = connection.execute(
                select(tag_history)
                .where(tag_history.c.repository_id == repository_id, tag_history.c.tag == tag)
                .order_by(tag_history.c.id.desc())
            ).all()
            return [
                TagChange(
                    tag=row.tag,
                    old_digest=row.old_digest,
                    new_digest=row.new_digest,
                    changed_at=row.changed_at,
                    actor=row.actor,
                    reason=row.reason,
                )
                for row in rows
            ]

        return await self.metadata.read(history)

    async def version_tree(self, name: str) -> VersionTree:
        """Releases and pre-releases grouped major → minor → patch, with the floating tags."""
        validate_repository_name(name)

        def tree(connection: Connection) -> VersionTree:
            repository_id = _known_repository_id(connection, name)
            rows = connection.execute(
                select(tags.c.name, tags.c.manifest_digest).where(
                    tags.c.repository_id == repository_id
                )
            ).all()
            policy = resolve_policy(connection, name, self.tag_defaults)
            return VersionTree.build(name, {row.name: row.manifest_digest for row in rows}, policy)

        return await self.metadata.read(tree)

    # -- listings --------------------------------------------------------------------------
    async def list_tags(self, name: str, limit: int | None, last: str | None) -> Page:
        validate_repository_name(name)

        def page(connection: Connection) -> Page:
            repository_id = _known_repository_id(connection, name)
            query = select(tags.c.name).where(tags.c.repository_id == repository_id)
            if last:
                query = query.where(tags.c.name > last)
            return _page(connection, query.order_by(tags.c.name), limit)

        return await self.metadata.read_cached(("tags", name, limit, last), page)

    async def list_repositories(
        self, limit: int | None, last: str | None, visible: Visibility | None = None
    ) -> Page:
        """Repositories with content, by name; with `visible`, only those the caller may see."""
        query = select(repositories.c.name).where(
            select(manifests.c.digest)
            .where(manifests.c.repository_id == repositories.c.id)
            .exists()
        )
        if visible is not None:
            query = query.where(browse.visible_to(visible))
        if last:
            query = query.where(repositories.c.name > last)
        ordered = query.order_by(repositories.c.name)
        return await self.metadata.read_cached(
            ("catalog", limit, last, visible),
            lambda connection: _page(connection, ordered, limit),
        )

    async def list_referrers(
        self, name: str, digest: str, artifact_type: str | None
    ) -> list[Referrer]:
        validate_repository_name(name)
        subject = Digest.parse(digest)
        query = (
            select(
                manifests.c.media_type,
                manifests.c.digest,
                manifests.c.size,
                manifests.c.artifact_type,
                manifests.c.annotations,
            )
            .select_from(
                manifests.join(repositories, repositories.c.id == manifests.c.repository_id)
            )
            .where(repositories.c.name == name, manifests.c.subject_digest == str(subject))
            .order_by(manifests.c.created_at, manifests.c.digest)
        )
        if artifact_type is not None:
            query = query.where(manifests.c.artifact_type == artifact_type)
        rows = await self.metadata.read(lambda connection: connection.execute(query).all())
        return [
            Referrer(
                media_type=row.media_type,
                digest=row.digest,
                size=row.size,
                artifact_type=row.artifact_type,
                annotations=json.loads(row.annotations) if row.annotations else None,
            )
            for row in rows
        ]

    async def referrers_page(
        self,
        name: str,
        digest: str,
        artifact_type: str | None,
        *,
        last: str | None = None,
        max_bytes: int,
    ) -> ReferrersPage:
        """One page of the referrers of `digest`, after the digest `last`, in digest order.

        The descriptors take at most `max_bytes` as `json.dumps` writes them, joined by ", "
        (so that an index stays under the 4 MiB clients accept; OCI dist-spec "Listing
        Referrers" pages with a `Link` header). Row sizes are read before the annotations,
        so a page never loads more than it sends. A referrer whose annotations alone exceed
        the budget is listed without them (`trimmed`).
        """
        validate_repository_name(name)
        subject = Digest.parse(digest)
        after = str(Digest.parse(last)) if last else None
        conditions = [repositories.c.name == name, manifests.c.subject_digest == str(subject)]
        if artifact_type is not None:
            conditions.append(manifests.c.artifact_type == artifact_type)
        if after is not None:
            conditions.append(manifests.c.digest > after)
        sizes = (
            select(
                manifests.c.media_type,
                manifests.c.digest,
                manifests.c.size,
                manifests.c.artifact_type,
                func.coalesce(func.length(manifests.c.annotations), 0).label("annotations_length"),
            )
            .select_from(
                manifests.join(repositories, repositories.c.id == manifests.c.repository_id)
            )
            .where(*conditions)
            .order_by(manifests.c.digest)
            .limit(MAX_REFERRERS_PER_PAGE + 1)
        )

        def page(connection: Connection) -> ReferrersPage:
            rows = connection.execute(sizes).all()
            chosen: list[Referrer] = []
            with_annotations: list[str] = []
            trimmed: list[str] = []
            used = 0
            for row in rows[:MAX_REFERRERS_PER_PAGE]:
                plain = Referrer(row.media_type, row.digest, row.size, row.artifact_type, None)
                length = len(json.dumps(plain.descriptor()))
                if row.annotations_length:
                    # `{..., "annotations": TEXT}`: annotations are stored as json.dumps wrote
                    # them (ASCII), so their length in characters is their length in bytes.
                    length += len(', "annotations": ') + row.annotations_length
                separator = 2 if chosen else 0
                if used + separator + length > max_bytes:
                    if chosen or not row.annotations_length:
                        break
                    # Alone too large: listed without its annotations rather than never.
                    length = len(json.dumps(plain.descriptor()))
                    trimmed.append(row.digest)
                elif row.annotations_length:
                    with_annotations.append(row.digest)
                used += separator + length
                chosen.append(plain)
            annotations = {}
            if with_annotations:
                annotations = {
                    row.digest: row.annotations
                    for row in connection.execute(
                        select(manifests.c.digest, manifests.c.annotations)
                        .select_from(
                            manifests.join(
                                repositories, repositories.c.id == manifests.c.repository_id
                            )
                        )
                        .where(
                            repositories.c.name == name,
                            manifests.c.digest.in_(with_annotations),
                        )
                    )
                }
            referrers = [
                Referrer(
                    r.media_type,
                    r.digest,
                    r.size,
                    r.artifact_type,
                    json.loads(annotations[r.digest]) if r.digest in annotations else None,
                )
                for r in chosen
            ]
            more = len(rows) > len(chosen)
            return ReferrersPage(
                referrers, referrers[-1].digest if more and referrers else None, trimmed
            )

        return await self.metadata.read(page)

    # -- usage and quotas ------------------------------------------------------------------
    async def usage(self) -> UsageReport:
        """Bytes held by every repository and namespace, deduplicated and apparent."""
        return await self.metadata.read(usage.usage_report)

    async def repository_usage(self, name: str) -> RepositoryUsage:
        validate_repository_name(name)

        def measure(connection: Connection) -> RepositoryUsage:
            repository_id = _known_repository_id(connection, name)
            report = usage.usage_report(connection, [repository_id])
            return report.namespaces[0].repositories[0]

        return await self.metadata.read(measure)

    async def set_quota(self, namespace: str, limit_bytes: int) -> Quota:
        """Cap a namespace's deduplicated usage; pushes beyond it are refused with DENIED."""
        _validate_namespace(namespace)
        if limit_bytes < 0:
            raise ValueError("a quota cannot be negative")

        def store(connection: Connection) -> Quota:
            usage.set_quota(connection, namespace, limit_bytes)
            return Quota(namespace, limit_bytes, usage.namespace_usage(connection, namespace))

        return await self.metadata.write(store)

    async def unset_quota(self, namespace: str) -> bool:
        _validate_namespace(namespace)
        return await self.metadata.write(
            lambda connection: usage.unset_quota(connection, namespace)
        )

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

    async def delete_repository(self, name: str, actor: str | None = None) -> None:
        """Every tag, manifest, blob link and upload of a repository, in one transaction.

        Pulls fail from then on; garbage collection frees the bytes nothing else holds.
        """
        validate_repository_name(name)

        def remove(connection: Connection) -> None:
            repository_id = _repository_id(connection, name)
            if repository_id is None:
                raise NameUnknown("repository name not known to registry", name)
            browse.remove_repository(connection, repository_id, actor)
            upload_limits.close_repository_sessions(connection, name)
            # Issue 17: a repository pushed again under the name starts with no pulls or texts.
            forget_repository(connection, repository_id)

        self.pulls.forget(name)
        await self.metadata.write(remove)
        sessions = [session async for session, _ in self.storage.iterate_uploads()]
        for session in sessions:
            if belongs_to(session, name):
                await self.storage.delete_upload(session)


# -- row helpers ---------------------------------------------------------------------------
def _repository_id(connection: Connection, name: str) -> int | None:
    return connection.scalar(REPOSITORY_ID, {"name": name})


def _known_repository_id(connection: Connection, name: str) -> int:
    """The repository's id; NAME_UNKNOWN when there is no such repository."""
    repository_id = _repository_id(connection, name)
    if repository_id is None:
        raise NameUnknown("repository name not known to registry", name)
    return repository_id


def _ensure_repository(connection: Connection, name: str) -> int:
    repository_id = _repository_id(connection, name)
    if repository_id is None:
        repository_id = connection.scalar(
            _INSERT_REPOSITORY, {"name": name, "created_at": time.time()}
        )
    return int(repository_id)


def _record_blob(
    connection: Connection, files: TransactionFiles, name: str, digest: Digest, size: int
) -> RegistryError | None:
    """Record a blob that storage holds and link it into repository `name`.

    Returns the refusal instead of raising it, so that the caller's transaction still commits
    its own clean-up (an upload session's row); the caller raises it afterwards.
    """
    recorded = connection.scalar(_BLOB_SIZE, {"digest": str(digest)})
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
    if recorded is None:
        connection.execute(_INSERT_BLOB, {"digest": str(digest), "size": size, "created_at": now})
    else:
        # A fresh upload of known content restarts its garbage-collection grace period.
        connection.execute(_TOUCH_BLOB, {"b_digest": str(digest), "now": now})
    repository_id = _ensure_repository(connection, name)
    linked = connection.execute(
        _TOUCH_LINK, {"b_repository_id": repository_id, "b_digest": str(digest), "now": now}
    )
    if not linked.rowcount:
        connection.execute(
            _INSERT_LINK,
            {"repository_id": repository_id, "digest": str(digest), "created_at": now},
        )
    return None


def _raise_if_refused(refusal: RegistryError | None) -> None:
    if refusal is not None:
        raise refusal


def _validate_namespace(namespace: str) -> None:
    validate_repository_name(namespace)
    if "/" in namespace:
        raise NameInvalid(f"a namespace is one path component, not {namespace[:100]!r}")


def _stored_media_type(connection: Connection, repository_id: int, digest: Digest) -> str | None:
    """The media type the repository holds the manifest as; None when it is not there."""
    parameters = {"repository_id": repository_id, "digest": str(digest)}
    return connection.scalar(_STORED_MEDIA_TYPE, parameters)


def _clear_untagged_since(connection: Connection, repository_id: int, digest: Digest) -> None:
    """A tagged manifest is kept: the `gc.untagged` clock starts again if it loses the tag."""
    connection.execute(_CLEAR_UNTAGGED, {"b_repository_id": repository_id, "b_digest": str(digest)})


def _check_references(connection: Connection, repository_id: int, manifest: Manifest) -> None:
    """OCI dist-spec "Pushing manifests": everything a manifest references must be here."""
    wanted_blobs = {str(descriptor.digest) for descriptor in manifest.blobs}
    if wanted_blobs:
        present = set(
            connection.scalars(
                _LINKED_BLOBS, {"repository_id": repository_id, "digests": sorted(wanted_blobs)}
            ).all()
        )
        for descriptor in manifest.blobs:
            if str(descriptor.digest) not in present:
                raise ManifestBlobUnknown("blob unknown to registry", str(descriptor.digest))
    wanted_manifests = {str(descriptor.digest) for descriptor in manifest.manifests}
    if wanted_manifests:
        present = set(
            connection.scalars(
                _PRESENT_MANIFESTS,
                {"repository_id": repository_id, "digests": sorted(wanted_manifests)},
            ).all()
        )
        for descriptor in manifest.manifests:
            if str(descriptor.digest) not in present:
                # As the reference registry: a missing child is a missing "blob" of the index.
                raise ManifestBlobUnknown(
                    "the index references a manifest unknown to this repository",
                    str(descriptor.digest),
                )


def _insert_manifest(
    connection: Connection, repository_id: int, manifest: Manifest, content: bytes
) -> None:
    """A new manifest and what it references (the caller checked it is not there yet: the
    same digest means the same bytes, so pushing it again only (re)tags)."""
    connection.execute(
        _INSERT_MANIFEST,
        {
            "repository_id": repository_id,
            "digest": str(manifest.digest),
            "media_type": manifest.media_type,
            "size": manifest.size,
            "content": content,
            "artifact_type": manifest.artifact_type,
            "subject_digest": str(manifest.subject.digest) if manifest.subject else None,
            "annotations": json.dumps(manifest.annotations) if manifest.annotations else None,
            "created_at": time.time(),
            "untagged_since": None,
        },
    )
    references = {("blob", str(d.digest)) for d in manifest.blobs} | {
        ("manifest", str(d.digest)) for d in manifest.manifests
    }
    if references:
        connection.execute(
            _INSERT_REFERENCES,
            [
                {
                    "repository_id": repository_id,
                    "manifest_digest": str(manifest.digest),
                    "kind": kind,
                    "target_digest": target,
                }
                for kind, target in sorted(references)
            ],
        )


def _page(connection: Connection, query: object, limit: int | None) -> Page:
    size = MAX_PAGE_SIZE if limit is None else min(limit, MAX_PAGE_SIZE)
    rows = list((connection.scalars(query.limit(size + 1))).all())  # type: ignore[attr-defined]
    if len(rows) > size:
        return Page(items=rows[:size], next_last=rows[size - 1] if size else None)
    return Page(items=rows, next_last=None)
