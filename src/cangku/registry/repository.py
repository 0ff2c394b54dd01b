"""One repository's services, handed out by `Registry.repository(name)`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cangku.registry.protocols import (
    BlobService,
    ManifestService,
    ReferrerService,
    TagService,
    UploadService,
)


@dataclass(frozen=True, slots=True)
class Repository:
    """The services of repository `name` (a name already validated: OCI dist-spec
    "Pulling manifests", `<name>` grammar). Each field implements its protocol in
    registry/protocols.py; a wrapper replaces one with a class holding the inner one
    (`dataclasses.replace(repository, manifests=Recording(repository.manifests))`)."""

    name: str
    blobs: BlobService
    uploads: UploadService
    manifests: ManifestService
    tags: TagService
    referrers: ReferrerService


# The Registry's seam for wrappers (cache, events, metrics): called on every handle it
# builds, returns the handle to use (the same one, or one with some services wrapped).
RepositoryWrapper = Callable[[Repository], Repository]
