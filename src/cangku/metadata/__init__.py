"""Metadata rows in SQL (SQLAlchemy Core): SQLite by default, PostgreSQL by URL.

`store.py` runs transactions; the row modules (`accounts.py`, `web_sessions.py`,
`visibility.py`, `namespaces.py`, …) hold the SQL statements, as plain functions over a
`Connection` that the use cases in `registry/` and `auth/` call inside one transaction.
"""

from sqlalchemy.engine import Connection

from cangku.metadata.store import MetadataStore

__all__ = ["Connection", "MetadataStore"]
