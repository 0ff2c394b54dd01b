"""`upload_leases`: which request may write to an upload session right now, across replicas
(issue 15). On S3 a session's bytes and progress live in the object store and two replicas
taking `PATCH`es for one session at once would both append from the same offset; a request
holds the session's lease row while it appends, finishes or cancels (registry/upload_leases.py).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_leases",
        sa.Column("session", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_upload_leases_expires", "upload_leases", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_upload_leases_expires", "upload_leases")
    op.drop_table("upload_leases")
