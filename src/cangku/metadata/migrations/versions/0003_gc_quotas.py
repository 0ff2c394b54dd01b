"""Garbage collection and quotas: untagged-since on manifests, quotas, GC indexes.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("manifests", sa.Column("untagged_since", sa.Float))
    op.create_index("ix_blobs_created_at", "blobs", ["created_at"])
    op.create_index("ix_repository_blobs_digest", "repository_blobs", ["digest"])
    op.create_table(
        "quotas",
        sa.Column("namespace", sa.String(255), primary_key=True),
        sa.Column("limit_bytes", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quotas")
    op.drop_index("ix_repository_blobs_digest", "repository_blobs")
    op.drop_index("ix_blobs_created_at", "blobs")
    with op.batch_alter_table("manifests") as batch:
        batch.drop_column("untagged_since")
