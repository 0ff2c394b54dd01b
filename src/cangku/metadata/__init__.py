"""Metadata rows in SQL (SQLAlchemy Core): SQLite by default, PostgreSQL by URL.

Every SQL statement lives in this package: `store.py` runs transactions, the row modules
(`blobs`, `manifests`, `repositories`, `tags`, `accounts`, `web_sessions`, `visibility`,
`namespaces`, …) are plain functions over a `Connection` that the use cases in registry/ and
auth/ call inside the transactions they hold. The hot ones run their statements through
`prepared.Prepared` (compiled once, executed on the driver's cursor).
"""

from sqlalchemy import Row
from sqlalchemy.engine import Connection

from cangku.metadata.store import MetadataStore

__all__ = ["Connection", "MetadataStore", "Row"]
