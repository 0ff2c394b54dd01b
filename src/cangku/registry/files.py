"""Blob files seen from inside a metadata write transaction.

Garbage collection stays safe by doing two things *inside* write transactions (which the
database runs one at a time, across processes too):

- a blob's file is deleted only in a transaction that has just established that the blob has
  no row (and that no row can appear before it commits);
- a blob's row is written only in a transaction that has just seen its file in storage.

So a recorded blob always has its file (docs/garbage-collection.md). Transactions run in the
metadata store's writer thread, so these calls use the drivers' blocking methods: hopping to
the event loop instead would hold the single writer up while the loop is busy.
"""

from __future__ import annotations

from collections.abc import Sequence

from cangku.content.digest import Digest
from cangku.storage.base import BlobStorage


class TransactionFiles:
    def __init__(self, storage: BlobStorage) -> None:
        self.storage = storage

    def exists(self, digest: Digest) -> bool:
        return self.storage.stat_blocking(digest) is not None

    def delete(self, digests: Sequence[Digest]) -> None:
        for digest in digests:
            self.storage.delete_blocking(digest)
