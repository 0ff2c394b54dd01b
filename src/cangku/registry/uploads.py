"""Upload sessions of one repository: start, status, append a chunk, finish, cancel.

A session's bytes live in storage under `sessions.session_name(name, id)`; its row
(registry/upload_limits.py) counts it against its owner's cap and its namespace's quota.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable

from cangku.content.digest import HEX_LENGTHS, Digest
from cangku.content.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    RegistryError,
    UploadOutOfOrder,
)
from cangku.metadata import Connection
from cangku.metadata import upload_sessions as session_rows
from cangku.registry import upload_limits, usage
from cangku.registry.blobs import raise_if_refused, record_blob, within_quota
from cangku.registry.context import RequestContext
from cangku.registry.core import Core
from cangku.registry.sessions import new_upload_id, session_name
from cangku.registry.upload_leases import CANCEL_WAIT_SECONDS, Lease, leased


class Uploads:
    """`UploadService` of repository `name` (validated by `Registry.repository`)."""

    __slots__ = ("core", "name")

    def __init__(self, core: Core, name: str) -> None:
        self.core = core
        self.name = name

    async def start(self, context: RequestContext, algorithm: str = "sha256") -> str:
        """A new upload session's id, hashing with `algorithm` ("sha256" or "sha512", OCI
        dist-spec main `?digest-algorithm=`; DIGEST_INVALID for another). The context's
        owner (a user's name, or `address:<ip>`) may keep at most `max_open_uploads` open
        (TooManyRequests); no owner (in-process use): not counted."""
        if algorithm not in HEX_LENGTHS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm[:100]!r}")
        upload_id = new_upload_id()
        session = session_name(self.name, upload_id)
        owner, cap = context.owner, self.core.max_open_uploads
        ledger = self.core.sessions
        row = upload_limits.SessionRow(
            session, self.name, usage.namespace_of(self.name), owner, time.time()
        )
        if owner is None:
            within = True  # Not counted.
        else:
            ended = ledger.writes_ended
            rows = await self.core.metadata.read(
                lambda connection: session_rows.count_owned(connection, owner)
            )
            # Read after the wait, with none before `add`: concurrent starts see each other.
            # A write of rows that ended meanwhile may have left its rows out of both counts.
            within = ledger.writes_ended == ended and rows + ledger.held_by(owner) < cap
        if within:
            # Within the cap: the row is written later, with others (upload_limits.py).
            # Counted before the wait below, so that concurrent starts see each other.
            ledger.add(row)
            try:
                await self.core.storage.create_upload(session, algorithm)
            except BaseException:
                await ledger.settle(session)
                raise
            return upload_id
        # At the cap, as far as this process knows: decided by the rows, as they are now.
        writing = ledger.take(owner, row)
        try:
            await ledger.written_before(writing)
            live = [
                r
                for r in writing.rows
                if await self.core.storage.upload_size(r.session) is not None
            ]
            refusal = await self.core.metadata.write(
                lambda connection: upload_limits.open_session(
                    connection, session, self.name, owner, cap, live
                )
            )
        finally:
            ledger.written(writing)
        raise_if_refused(refusal)
        try:
            await self.core.storage.create_upload(session, algorithm)
        except BaseException:
            await self._close(session)
            raise
        return upload_id

    async def status(self, upload_id: str) -> int:
        size = await self.core.storage.upload_size(session_name(self.name, upload_id))
        if size is None:
            raise BlobUploadUnknown("upload unknown to registry", upload_id)
        return size

    async def append(
        self,
        upload_id: str,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None,
        context: RequestContext,
    ) -> int:
        """Append one chunk; with Content-Range it must start where the upload ends. While
        another request writes to the session: UploadOutOfOrder (416, upload_leases.py)."""
        session = session_name(self.name, upload_id)
        async with leased(self.core, session, upload_id) as lease:
            return await self._append(session, upload_id, lease, body, length, content_range)

    async def _append(
        self,
        session: str,
        upload_id: str,
        lease: Lease,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None,
    ) -> int:
        start = None
        if content_range is not None:
            start, end = content_range
            if length is not None and end - start + 1 != length:
                raise BlobUploadInvalid("Content-Range does not match Content-Length")
            length = end - start + 1
        body = await within_quota(self.core, self.name, body, length)
        try:
            return await self.core.storage.append_upload(
                session,
                lease.guard(body),
                length,
                start,
                before_save=lease.confirm if lease.held else None,
            )
        except BlobUploadUnknown:
            raise BlobUploadUnknown("upload unknown to registry", upload_id) from None

    async def finish(
        self,
        upload_id: str,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        content_range: tuple[int, int] | None,
        context: RequestContext,
    ) -> Digest:
        """Take the last chunk (if any), verify the whole upload and keep it as the blob."""
        parsed = Digest.parse(digest)
        session = session_name(self.name, upload_id)
        storage = self.core.storage
        async with leased(self.core, session, upload_id) as lease:
            if length != 0:
                # The same rules as a PATCH: a final chunk out of order is refused (416).
                await self._append(session, upload_id, lease, body, length, content_range)
            await lease.confirm()
            try:
                # The session ends here: its bytes become the blob (unless a quota refuses it).
                size = await storage.commit_upload(session, parsed)
            except BlobUploadUnknown:
                raise BlobUploadUnknown("upload unknown to registry", upload_id) from None
            except BaseException:
                if await storage.upload_size(session) is None:  # Refused and ended.
                    await self._close(session)
                raise

        has_row = await self.core.sessions.settle(session)

        def record(connection: Connection) -> RegistryError | None:
            # record_blob first: it takes the transaction's locks (metadata/locks.py), which
            # come before any row this transaction writes.
            refusal = record_blob(connection, self.core.files, self.name, parsed, size, context)
            if has_row:
                upload_limits.close_sessions(connection, [session])
            return refusal

        raise_if_refused(await self.core.metadata.write(record))
        return parsed

    async def cancel(self, upload_id: str, context: RequestContext) -> None:
        session = session_name(self.name, upload_id)
        try:
            async with leased(self.core, session, upload_id, wait=CANCEL_WAIT_SECONDS):
                if await self.core.storage.upload_size(session) is None:
                    raise BlobUploadUnknown("upload unknown to registry", upload_id)
                await self.core.storage.delete_upload(session)
        except UploadOutOfOrder:
            # Still being written to after the wait: not a 416 (a Range means nothing to a
            # client cancelling), Distribution's "may ignore this error" 400 instead.
            raise BlobUploadInvalid(
                "another request is still writing to this upload; cancel it again later"
            ) from None
        await self._close(session)

    async def _close(self, session: str) -> None:
        if not await self.core.sessions.settle(session):
            return  # No row to delete: it was never written.
        await self.core.metadata.write(
            lambda connection: upload_limits.close_sessions(connection, [session])
        )
