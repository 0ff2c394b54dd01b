"""Metadata rows in SQL (SQLAlchemy Core): SQLite by default, PostgreSQL by URL."""

from cangku.metadata.store import MetadataStore

__all__ = ["MetadataStore"]
