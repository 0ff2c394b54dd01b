"""`ix_manifests_created`: a repository's manifests newest first, so the repository page's
description fallback (the newest tagged image's annotations, issue 17) reads from the newest
manifest back to the first tagged one instead of sorting every manifest (issue 20: the page
must cost the same at 10 versions and at 10,000).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_manifests_created", "manifests", ["repository_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_manifests_created", "manifests")
