"""`ix_tags_manifest` also orders by tag name, so "the first N tags on this manifest" reads N
index entries however many tags the manifest has (the image page, the delete confirmation).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tags_manifest", "tags")
    op.create_index("ix_tags_manifest", "tags", ["repository_id", "manifest_digest", "name"])


def downgrade() -> None:
    op.drop_index("ix_tags_manifest", "tags")
    op.create_index("ix_tags_manifest", "tags", ["repository_id", "manifest_digest"])
