"""Referrers of one repository: the manifests whose `subject` is a given digest (OCI
dist-spec "Listing Referrers")."""

from __future__ import annotations

import builtins
import json

from cangku.content.digest import Digest
from cangku.metadata import Connection
from cangku.metadata import manifests as manifest_rows
from cangku.registry.core import Core
from cangku.registry.records import Referrer, ReferrersPage

# The referrers API lists at most this many descriptors per page (and at most 4 MiB).
MAX_REFERRERS_PER_PAGE = 1000


class Referrers:
    """`ReferrerService` of repository `name` (validated by `Registry.repository`)."""

    __slots__ = ("core", "name")

    def __init__(self, core: Core, name: str) -> None:
        self.core = core
        self.name = name

    async def list(self, digest: str, artifact_type: str | None) -> builtins.list[Referrer]:
        subject = str(Digest.parse(digest))
        name = self.name
        rows = await self.core.metadata.read(
            lambda connection: manifest_rows.referrers(connection, name, subject, artifact_type)
        )
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

    async def page(
        self, digest: str, artifact_type: str | None, *, last: str | None = None, max_bytes: int
    ) -> ReferrersPage:
        """One page of the referrers of `digest`, after the digest `last`, in digest order.

        The descriptors take at most `max_bytes` as `json.dumps` writes them, joined by ", "
        (so that an index stays under the 4 MiB clients accept; OCI dist-spec "Listing
        Referrers" pages with a `Link` header). Row sizes are read before the annotations,
        so a page never loads more than it sends. A referrer whose annotations alone exceed
        the budget is listed without them (`trimmed`).
        """
        name = self.name
        subject = str(Digest.parse(digest))
        after = str(Digest.parse(last)) if last else None

        def page(connection: Connection) -> ReferrersPage:
            rows = manifest_rows.referrer_sizes(
                connection, name, subject, artifact_type, after, MAX_REFERRERS_PER_PAGE + 1
            )
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
                annotations = manifest_rows.annotations_of(connection, name, with_annotations)
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

        return await self.core.metadata.read(page)
