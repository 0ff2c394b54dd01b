"""Issue 16: per-namespace and per-repository webhook endpoints, managed by their owners;
an index for pruning the outbox by age.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("repository", sa.String(255)),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("secret", sa.String(200), nullable=False),
        sa.Column("types", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_webhooks_scope", "webhooks", ["namespace", "repository"])
    op.create_index("ix_events_created", "events", ["created_at"])
    op.create_index("ix_event_deliveries_event", "event_deliveries", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_event_deliveries_event", "event_deliveries")
    op.drop_index("ix_events_created", "events")
    op.drop_table("webhooks")
