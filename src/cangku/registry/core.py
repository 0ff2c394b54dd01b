"""What every per-resource service of the registry shares: storage, metadata, settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from cangku.metadata.store import MetadataStore
from cangku.registry.files import TransactionFiles
from cangku.registry.tags import TagPolicy
from cangku.registry.upload_limits import SessionLedger
from cangku.storage.base import BlobStorage

# Listing pages: the spec lets a registry cap `n`; clients follow the Link header.
MAX_PAGE_SIZE = 10_000


@dataclass(slots=True)
class Core:
    """The registry's shared parts; one per Registry, handed to each service it builds.

    `automatic_mount`: OCI dist-spec "Mounting a blob from another repository": a mount
    without `from` may link the blob from any repository the caller may pull.
    `max_open_uploads`: upload sessions one owner may keep open (registry/upload_limits.py).
    `tag_defaults`: the server-wide tag policy; namespaces and repositories may override it.
    `sessions`: upload sessions opened here whose rows are not written yet (upload_limits.py).
    `session_leases`: hold a lease row while a request writes to an upload session, for a
    storage driver that does not serialise a session's requests across processes (S3;
    registry/upload_leases.py).
    """

    storage: BlobStorage
    metadata: MetadataStore
    tag_defaults: TagPolicy
    automatic_mount: bool
    max_open_uploads: int
    session_leases: bool = False
    files: TransactionFiles = field(init=False)
    sessions: SessionLedger = field(init=False)

    def __post_init__(self) -> None:
        self.files = TransactionFiles(self.storage)
        self.sessions = SessionLedger.for_store(self.metadata)
