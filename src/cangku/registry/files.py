"""Blob files seen from inside a metadata write transaction.

Garbage collection stays safe by doing two things *inside* write transactions (which the
database runs one at a time, across processes too):

- a blob's file is deleted only in a transaction that has just established that the blob has
  no row (and that no row can appear before it commits);
- a blob's row is written only in a transaction that has just seen its file in storage.

So a recorded blob always has its file (docs/garbage-collection.md). Transactions run in a
worker thread (`MetadataStore.write`) while storage drivers are async and live on the event
loop: each call here hops to the loop and waits for the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio.from_thread

from cangku.content.digest import Digest
from cangku.storage.base import BlobStorage


class TransactionFiles:
    def __init__(self, storage: BlobStorage) -> None:
        self.storage = storage

    def exists(self, digest: Digest) -> bool:
        return anyio.from_thread.run(self.storage.stat, digest) is not None

    def delete(self, digests: Sequence[Digest]) -> None:
        if digests:
            anyio.from_thread.run(self._delete_all, digests)

    async def _delete_all(self, digests: Sequence[Digest]) -> None:
        for digest in digests:
            await self.storage.delete(digest)
