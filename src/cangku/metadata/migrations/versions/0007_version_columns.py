"""Version tags' parsed precedence in indexed columns, so that moving the floating tags and
reading the version tree cost an index seek, not a walk over every tag (issue 20); and the
client-managed mark of floating tags a client pushed itself (issue 19).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cangku.content.versions import parse_version

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BATCH = 1000  # tags per statement


def upgrade() -> None:
    op.add_column("tags", sa.Column("version_prefix", sa.String(1)))
    op.add_column("tags", sa.Column("version_key", sa.LargeBinary))
    op.add_column("tags", sa.Column("release_key", sa.LargeBinary))
    op.add_column("tags", sa.Column("client_managed", sa.Boolean))
    tags = sa.table(
        "tags",
        sa.column("repository_id", sa.Integer),
        sa.column("name", sa.String),
        sa.column("version_prefix", sa.String),
        sa.column("version_key", sa.LargeBinary),
        sa.column("release_key", sa.LargeBinary),
    )
    fill = (
        sa.update(tags)
        .where(
            tags.c.repository_id == sa.bindparam("b_repository_id"),
            tags.c.name == sa.bindparam("b_name"),
        )
        .values(
            version_prefix=sa.bindparam("prefix"),
            version_key=sa.bindparam("key"),
            release_key=sa.bindparam("release"),
        )
    )
    connection = op.get_bind()
    # A batch of tags at a time, in key order, so that a big registry is never held whole.
    page = (
        sa.select(tags.c.repository_id, tags.c.name)
        .where(
            sa.tuple_(tags.c.repository_id, tags.c.name)
            > sa.tuple_(sa.bindparam("after_id"), sa.bindparam("after_name"))
        )
        .order_by(tags.c.repository_id, tags.c.name)
        .limit(BATCH)
    )
    after: tuple[int, str] = (-1, "")
    while rows := connection.execute(page, {"after_id": after[0], "after_name": after[1]}).all():
        after = (rows[-1].repository_id, rows[-1].name)
        updates = []
        for row in rows:
            version = parse_version(row.name)
            if version is None:
                continue
            key = version.precedence_key()
            updates.append(
                {
                    "b_repository_id": row.repository_id,
                    "b_name": row.name,
                    "prefix": version.prefix,
                    "key": key,
                    "release": key if version.is_release else None,
                }
            )
        if updates:
            connection.execute(fill, updates)
    op.create_index(
        "ix_tags_release",
        "tags",
        ["repository_id", "version_prefix", "release_key", "updated_at", "name"],
    )
    op.create_index("ix_tags_version", "tags", ["repository_id", "version_key", "name"])


def downgrade() -> None:
    op.drop_index("ix_tags_version", "tags")
    op.drop_index("ix_tags_release", "tags")
    with op.batch_alter_table("tags") as batch:
        batch.drop_column("client_managed")
        batch.drop_column("release_key")
        batch.drop_column("version_key")
        batch.drop_column("version_prefix")
