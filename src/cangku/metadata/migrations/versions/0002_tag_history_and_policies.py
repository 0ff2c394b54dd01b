"""Tag history and tag policies (semantic-version floating tags).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tag_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "repository_id",
            sa.Integer,
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tag", sa.String(128), nullable=False),
        sa.Column("old_digest", sa.String(200)),
        sa.Column("new_digest", sa.String(200)),
        sa.Column("changed_at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(255)),
        sa.Column("reason", sa.String(500), nullable=False),
    )
    op.create_index("ix_tag_history_tag", "tag_history", ["repository_id", "tag", "id"])
    op.create_table(
        "tag_policies",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("floating", sa.Boolean),
        sa.Column("immutable_versions", sa.Boolean),
    )


def downgrade() -> None:
    op.drop_table("tag_policies")
    op.drop_index("ix_tag_history_tag", "tag_history")
    op.drop_table("tag_history")
