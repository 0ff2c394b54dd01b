"""`ix_tags_release` and `ix_tags_version` hold version tags only (issue 20).

Every other tag (`latest`, `1.9`, `1`, `build-42`) has NULL version columns, yet had an entry
in both indexes: two index writes per such row, and a version push writes three floating
tags. Every query that reads these indexes bounds the key column (`release_key < high`,
`version_key >= 0x01`), which implies it is not NULL, so SQLite and PostgreSQL use the
partial indexes for them (metadata/tags.py).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_RELEASE = ["repository_id", "version_prefix", "release_key", "updated_at", "name"]
_VERSION = ["repository_id", "version_key", "name"]


def upgrade() -> None:
    op.drop_index("ix_tags_release", "tags")
    op.drop_index("ix_tags_version", "tags")
    for name, columns, key in (
        ("ix_tags_release", _RELEASE, "release_key"),
        ("ix_tags_version", _VERSION, "version_key"),
    ):
        condition = sa.text(f"{key} IS NOT NULL")
        op.create_index(name, "tags", columns, postgresql_where=condition, sqlite_where=condition)


def downgrade() -> None:
    op.drop_index("ix_tags_release", "tags")
    op.drop_index("ix_tags_version", "tags")
    op.create_index("ix_tags_release", "tags", _RELEASE)
    op.create_index("ix_tags_version", "tags", _VERSION)
