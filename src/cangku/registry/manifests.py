"""The manifests of one repository: push (with its tags, in one transaction), pull, delete.

A manifest and its tag are written in one transaction, so a puller never sees a tag pointing
at a manifest that is not there.
"""

from __future__ import annotations

from cangku.content.digest import Digest
from cangku.content.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    PayloadTooLarge,
    TooManyTags,
)
from cangku.content.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from cangku.content.names import parse_reference, validate_tag
from cangku.events import records as events
from cangku.metadata import Connection, locks
from cangku.metadata import blobs as blob_rows
from cangku.metadata import manifests as manifest_rows
from cangku.metadata import repositories as repository_rows
from cangku.metadata import tags as tag_rows
from cangku.registry import usage
from cangku.registry.context import RequestContext
from cangku.registry.core import Core
from cangku.registry.records import PushedManifest, StoredManifest
from cangku.registry.tags import (
    TagPolicy,
    current_digest,
    push_tag,
    remove_tags,
    resolve_policy,
)

# OCI dist-spec main "Pushing manifests with multiple tags": at least 10 SHOULD be taken; more
# than this many `?tag=` on one PUT is 414 (docs/api.md).
MAX_TAGS_PER_PUSH = 100


class Manifests:
    """`ManifestService` of repository `name` (validated by `Registry.repository`)."""

    __slots__ = ("core", "name")

    def __init__(self, core: Core, name: str) -> None:
        self.core = core
        self.name = name

    async def put(
        self,
        reference: str,
        content: bytes,
        content_type: str | None,
        context: RequestContext,
        extra_tags: list[str] | None = None,
    ) -> PushedManifest:
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
        name = self.name

        def store(connection: Connection) -> list[str]:
            # Alone in this repository (floating tags) and namespace (quota); beside other
            # pushes, but never inside a garbage-collection step (metadata/locks.py).
            locks.for_repository_content(connection, name)
            repository_id = repository_rows.ensure_repository(
                connection, name, lambda: events.repository_created(connection, name, context)
            )
            _check_references(connection, repository_id, manifest)
            stored_type = manifest_rows.stored_media_type(connection, repository_id, str(digest))
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
                # The same digest means the same bytes: pushing it again only (re)tags.
                manifest_rows.insert_manifest(
                    connection,
                    repository_id,
                    digest=str(digest),
                    media_type=manifest.media_type,
                    size=manifest.size,
                    content=content,
                    artifact_type=manifest.artifact_type,
                    subject_digest=str(manifest.subject.digest) if manifest.subject else None,
                    annotations=manifest.annotations,
                    references={("blob", str(d.digest)) for d in manifest.blobs}
                    | {("manifest", str(d.digest)) for d in manifest.manifests},
                )
            # The manifest's event first, then its tags' in the order they moved.
            events.manifest_pushed(
                connection,
                name,
                context,
                digest=str(digest),
                media_type=manifest.media_type,
                size=manifest.size,
                tags=tag_names,
            )
            policy = resolve_policy(connection, name, self.core.tag_defaults)
            warnings = []
            for tag in tag_names:
                warning = push_tag(
                    connection, repository_id, name, tag, str(digest), policy, context
                )
                if warning is not None:
                    warnings.append(warning)
            if tag_names:
                manifest_rows.clear_untagged_since(connection, repository_id, str(digest))
            return warnings

        warnings = await self.core.metadata.write(store)
        return PushedManifest(
            digest=str(digest),
            subject=str(manifest.subject.digest) if manifest.subject else None,
            tags=tag_names,
            warnings=tuple(warnings),
        )

    async def store_mirrored(
        self, tag: str | None, content: bytes, media_type: str, digest: str, actor: str
    ) -> None:
        """Keep a manifest fetched from an upstream registry (the pull-through cache,
        docs/proxy.md), already verified against `digest`, and point `tag` at it.

        Unlike `put`: its blobs are not required (they are cached as they are pulled), and
        the tag follows the upstream exactly — no floating tags moved, no immutable versions
        (a mirror records the upstream's moves in the tag history, `actor` naming it).
        MANIFEST_INVALID."""
        parsed = parse_manifest(content, media_type, Digest.parse(digest))
        name = self.name
        mirror_policy = TagPolicy(floating=False, immutable_versions=False)

        def store(connection: Connection) -> None:
            locks.for_repository_content(connection, name)
            repository_id = repository_rows.ensure_repository(
                connection,
                name,
                lambda: events.repository_created(connection, name, RequestContext(caller=actor)),
            )
            if manifest_rows.stored_media_type(connection, repository_id, digest) is None:
                manifest_rows.insert_manifest(
                    connection,
                    repository_id,
                    digest=digest,
                    media_type=parsed.media_type,
                    size=parsed.size,
                    content=content,
                    artifact_type=parsed.artifact_type,
                    subject_digest=str(parsed.subject.digest) if parsed.subject else None,
                    annotations=parsed.annotations,
                    references={("blob", str(d.digest)) for d in parsed.blobs}
                    | {("manifest", str(d.digest)) for d in parsed.manifests},
                )
            if tag is not None:
                push_tag(
                    connection,
                    repository_id,
                    name,
                    tag,
                    digest,
                    mirror_policy,
                    RequestContext(caller=actor),
                )
                manifest_rows.clear_untagged_since(connection, repository_id, digest)

        await self.core.metadata.write(store)

    async def get(self, reference: str) -> StoredManifest:
        name = self.name
        try:
            target = parse_reference(reference)
        except ManifestInvalid:
            raise ManifestUnknown("manifest unknown", reference[:200]) from None

        def find(connection: Connection) -> StoredManifest:
            if isinstance(target, Digest):
                row = manifest_rows.by_digest(connection, name, str(target))
            else:
                row = manifest_rows.by_tag(connection, name, target)
            if row is None:
                if repository_rows.repository_id(connection, name) is None:
                    raise NameUnknown("repository name not known to registry", name)
                raise ManifestUnknown("manifest unknown", reference)
            return StoredManifest(
                digest=row.digest, media_type=row.media_type, size=row.size, content=row.content
            )

        return await self.core.metadata.read_cached(("manifest", name, reference), find)

    async def delete(self, reference: str, context: RequestContext) -> None:
        """By digest: the manifest and every tag on it. By tag: only that tag."""
        name = self.name
        target = parse_reference(reference)

        def remove(connection: Connection) -> None:
            locks.hold(connection, repositories=[name])
            repository_id = known_repository_id(connection, name)
            policy = resolve_policy(connection, name, self.core.tag_defaults)
            if not isinstance(target, Digest):
                digest = current_digest(connection, repository_id, target)
                if digest is None:
                    raise ManifestUnknown("manifest unknown", reference)
                remove_tags(connection, repository_id, name, {target: digest}, policy, context)
                return
            digest = str(target)
            if not manifest_rows.delete_manifest(connection, repository_id, digest):
                raise ManifestUnknown("manifest unknown", reference)
            on_manifest = tag_rows.on_manifest(connection, repository_id, digest)
            events.manifest_deleted(connection, name, context, digest=digest)
            remove_tags(
                connection,
                repository_id,
                name,
                dict.fromkeys(on_manifest, digest),
                policy,
                context,
            )

        await self.core.metadata.write(remove)


def known_repository_id(connection: Connection, name: str) -> int:
    """The repository's id; NAME_UNKNOWN when there is no such repository."""
    repository_id = repository_rows.repository_id(connection, name)
    if repository_id is None:
        raise NameUnknown("repository name not known to registry", name)
    return repository_id


def _check_references(connection: Connection, repository_id: int, manifest: Manifest) -> None:
    """OCI dist-spec "Pushing manifests": everything a manifest references must be here."""
    wanted_blobs = {str(descriptor.digest) for descriptor in manifest.blobs}
    if wanted_blobs:
        present = blob_rows.linked(connection, repository_id, sorted(wanted_blobs))
        for descriptor in manifest.blobs:
            if str(descriptor.digest) not in present:
                raise ManifestBlobUnknown("blob unknown to registry", str(descriptor.digest))
    wanted_manifests = {str(descriptor.digest) for descriptor in manifest.manifests}
    if wanted_manifests:
        present = manifest_rows.present(connection, repository_id, sorted(wanted_manifests))
        for descriptor in manifest.manifests:
            if str(descriptor.digest) not in present:
                # As the reference registry: a missing child is a missing "blob" of the index.
                raise ManifestBlobUnknown(
                    "the index references a manifest unknown to this repository",
                    str(descriptor.digest),
                )
