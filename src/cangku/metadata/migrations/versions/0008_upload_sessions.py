"""Open upload sessions: who opened them and in which namespace, so that the number a user
may keep open is bounded and a namespace's quota counts the bytes they hold.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_sessions",
        sa.Column("session", sa.String(64), primary_key=True),
        sa.Column("repository", sa.String(255), nullable=False),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255)),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_upload_sessions_owner", "upload_sessions", ["owner"])
    op.create_index("ix_upload_sessions_namespace", "upload_sessions", ["namespace"])


def downgrade() -> None:
    op.drop_index("ix_upload_sessions_namespace", "upload_sessions")
    op.drop_index("ix_upload_sessions_owner", "upload_sessions")
    op.drop_table("upload_sessions")
