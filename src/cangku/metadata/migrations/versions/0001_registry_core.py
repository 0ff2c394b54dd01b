"""Registry core: repositories, blobs, manifests, references, tags, uploads.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repositories",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(200), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "repository_blobs",
        sa.Column(
            "repository_id",
            sa.Integer,
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("digest", sa.String(200), sa.ForeignKey("blobs.digest"), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "manifests",
        sa.Column(
            "repository_id",
            sa.Integer,
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("digest", sa.String(200), primary_key=True),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("artifact_type", sa.String(255)),
        sa.Column("subject_digest", sa.String(200)),
        sa.Column("annotations", sa.String),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_manifests_subject", "manifests", ["repository_id", "subject_digest"])
    op.create_table(
        "manifest_references",
        sa.Column("repository_id", sa.Integer, primary_key=True),
        sa.Column("manifest_digest", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("target_digest", sa.String(200), primary_key=True),
    )
    op.create_index("ix_manifest_references_target", "manifest_references", ["target_digest"])
    op.create_table(
        "tags",
        sa.Column(
            "repository_id",
            sa.Integer,
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("manifest_digest", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_tags_manifest", "tags", ["repository_id", "manifest_digest"])
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "repository_id",
            sa.Integer,
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "uploads",
        "tags",
        "manifest_references",
        "manifests",
        "repository_blobs",
        "blobs",
        "repositories",
    ):
        op.drop_table(table)
