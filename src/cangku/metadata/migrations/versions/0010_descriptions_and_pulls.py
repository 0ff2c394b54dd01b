"""Issue 17: repository descriptions and overviews, pull statistics per tag and digest, and
retention policies per repository, namespace and server, and daily usage per namespace.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repository_descriptions",
        sa.Column(
            "repository_id",
            sa.Integer,
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("description", sa.String(100)),
        sa.Column("overview", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("updated_by", sa.String(255)),
    )
    op.create_table(
        "pull_statistics",
        sa.Column(
            "repository_id",
            sa.Integer,
            sa.ForeignKey("repositories.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("reference", sa.String(200), primary_key=True),
        sa.Column("pulls", sa.BigInteger, nullable=False),
        sa.Column("last_pulled_at", sa.Float, nullable=False),
    )
    op.create_table(
        "retention_policies",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("rules", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "usage_days",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("namespace", sa.String(255), primary_key=True),
        sa.Column("stored_bytes", sa.BigInteger),
        sa.Column("pushes", sa.BigInteger, nullable=False),
        sa.Column("pulls", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_days")
    op.drop_table("retention_policies")
    op.drop_table("pull_statistics")
    op.drop_table("repository_descriptions")
