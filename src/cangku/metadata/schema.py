"""The metadata tables. Alembic migrations in `migrations/versions/` create and evolve them.

Times are Unix seconds (float) so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

# Every verified blob, once, whatever the number of repositories that hold it.
blobs = Table(
    "blobs",
    metadata,
    Column("digest", String(200), primary_key=True),
    Column("size", BigInteger, nullable=False),
    # Refreshed whenever the blob is uploaded or mounted again: the start of its GC grace period.
    Column("created_at", Float, nullable=False),
    Index("ix_blobs_created_at", "created_at"),
)

# Which repository may serve which blob: the result of an upload or a mount.
repository_blobs = Table(
    "repository_blobs",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", String(200), ForeignKey("blobs.digest"), primary_key=True),
    Column("created_at", Float, nullable=False),
    Index("ix_repository_blobs_digest", "digest"),
)

manifests = Table(
    "manifests",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", String(200), primary_key=True),
    Column("media_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    # The exact bytes as pushed (at most 4 MiB), so the digest is the one the client computed.
    Column("content", LargeBinary, nullable=False),
    Column("artifact_type", String(255)),
    Column("subject_digest", String(200)),
    Column("annotations", String),
    Column("created_at", Float, nullable=False),
    # When garbage collection first found it neither tagged nor needed by a kept manifest;
    # NULL while it is kept. The `gc.untagged: delete-after` policy counts from here.
    Column("untagged_since", Float),
    Index("ix_manifests_subject", "repository_id", "subject_digest"),
)

# What a manifest points at: its config and layers (kind "blob"), an index's children
# (kind "manifest"). Used to refuse deleting what is needed, and by garbage collection.
manifest_references = Table(
    "manifest_references",
    metadata,
    Column("repository_id", Integer, primary_key=True),
    Column("manifest_digest", String(200), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("target_digest", String(200), primary_key=True),
    Index("ix_manifest_references_target", "target_digest"),
)

tags = Table(
    "tags",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String(128), primary_key=True),
    Column("manifest_digest", String(200), nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_tags_manifest", "repository_id", "manifest_digest"),
)

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("created_at", Float, nullable=False),
)

# Storage quotas per namespace (the first component of repository names): pushes that would
# take the namespace's deduplicated usage above `limit_bytes` are refused.
quotas = Table(
    "quotas",
    metadata,
    Column("namespace", String(255), primary_key=True),
    Column("limit_bytes", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)
