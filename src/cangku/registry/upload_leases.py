"""One request at a time per upload session, across replicas (issue 15).

The filesystem driver serialises a session's requests with a `flock` on its file, across
processes. The S3 driver keeps a session's bytes and progress in the object store (a
`state` object, multipart parts, a tail) and serialises only within one process: two
replicas taking `PATCH`es for one session at once both append from the same offset, both
answer 202, and the last `state` written wins — the other chunk is silently lost, a part
number written by both may no longer match the ETag its `state` recorded (the commit then
fails in the store), and a commit on one replica can complete the multipart upload under an
append running on another. So with such a driver (`Core.session_leases`) every append,
finish and cancel holds the session's lease row (metadata/upload_leases.py) while it runs:

- an append or finish that finds another's live lease is refused at once with 416
  BLOB_UPLOAD_INVALID and the Range stored so far (OCI dist-spec "Pushing a blob in chunks":
  the client resumes from there), never appends from a stale offset;
- a cancel (DELETE) waits up to `CANCEL_WAIT_SECONDS` for the lease, as a chunk being
  written usually ends by then; if it does not, 400 BLOB_UPLOAD_INVALID, "the client may
  ignore this error" (Distribution's API spec, "Cancel Blob Upload": DELETE answers 204, 404,
  or 400 BLOB_UPLOAD_INVALID; the OCI spec names no other code for it, and a 416 Range means
  nothing to a client that is not uploading);
- a lease lasts `LEASE_SECONDS` and is renewed every `RENEW_SECONDS` while the request
  runs, so a replica that dies holding one blocks the session for at most `LEASE_SECONDS`;
- a request whose lease could not be renewed (the database unreachable that long, or the
  process stalled past the lease) stops reading its body: the driver then writes no state,
  and the client gets 416 with the Range stored so far, as for the refusal above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from functools import partial

from cangku.content.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    RegistryError,
    UploadOutOfOrder,
)
from cangku.metadata import upload_leases as lease_rows
from cangku.registry.core import Core

log = logging.getLogger("cangku")

LEASE_SECONDS = 60.0
RENEW_SECONDS = LEASE_SECONDS / 4
CANCEL_WAIT_SECONDS = 10.0
# How often a waiting cancel tries to take the lease again.
CANCEL_POLL_SECONDS = 0.1


class LeaseLost(BlobUploadInvalid):
    """Raised into the body of a request whose lease was lost; `leased` answers it as 416
    with the Range stored so far."""


LEASE_LOST = "the upload's lease was lost to another request; resume from its Range"


class Lease:
    """A held lease; `guard(body)` stops a body once the lease is lost."""

    __slots__ = ("held", "lost")

    def __init__(self, *, held: bool) -> None:
        self.held = held
        self.lost = False

    def guard(self, body: AsyncIterable[bytes]) -> AsyncIterable[bytes]:
        # Without a lease to lose, the body as it is: no generator per chunk on that path.
        return self._guarded(body) if self.held else body

    async def _guarded(self, body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            if self.lost:
                raise LeaseLost(LEASE_LOST)
            yield chunk
        if self.lost:
            raise LeaseLost(LEASE_LOST)


@contextlib.asynccontextmanager
async def leased(
    core: Core, session: str, upload_id: str, *, wait: float = 0.0
) -> AsyncIterator[Lease]:
    """Hold `session`'s lease for the block (nothing to hold unless `core.session_leases`),
    waiting up to `wait` seconds for another request to give it back.

    Raises UploadOutOfOrder (416, Range so far) when another request still holds it (or took
    it over from this one mid-way: LeaseLost raised in the block), and BlobUploadUnknown
    when the session does not exist."""
    if not core.session_leases:
        yield Lease(held=False)
        return
    lease = Lease(held=True)
    holder = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        now = time.time()
        taken = await core.metadata.write(
            partial(
                lease_rows.take, session=session, holder=holder, now=now, until=now + LEASE_SECONDS
            )
        )
        if taken or time.monotonic() + CANCEL_POLL_SECONDS > deadline:
            break
        await asyncio.sleep(CANCEL_POLL_SECONDS)
    if not taken:
        raise await _refusal(core, session, upload_id, "another request is writing to this upload")
    renewing = asyncio.create_task(_renew(core, session, holder, lease))
    try:
        yield lease
    except LeaseLost as error:
        raise await _refusal(core, session, upload_id, str(error)) from None
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing
        # Shielded: a cancelled request still gives the session back at once. A release
        # that fails (the database unreachable) does not fail the request: the lease
        # expires by itself.
        try:
            await asyncio.shield(
                core.metadata.write(
                    lambda connection: lease_rows.release(connection, session, holder)
                )
            )
        except Exception:
            log.exception("could not release the lease of upload session %s", session)


async def _refusal(core: Core, session: str, upload_id: str, message: str) -> RegistryError:
    """416 with the Range stored so far, or 404 when the session is gone."""
    size = await core.storage.upload_size(session)
    if size is None:
        return BlobUploadUnknown("upload unknown to registry", upload_id)
    return UploadOutOfOrder(message, size)


async def _renew(core: Core, session: str, holder: str, lease: Lease) -> None:
    held_until = time.time() + LEASE_SECONDS
    while True:
        await asyncio.sleep(RENEW_SECONDS)
        until = time.time() + LEASE_SECONDS
        try:
            renewed = await core.metadata.write(
                partial(lease_rows.renew, session=session, holder=holder, until=until)
            )
        except Exception:
            log.exception("could not renew the lease of upload session %s", session)
            # Tried again while the lease surely lasts; after that another may hold it.
            if time.time() + RENEW_SECONDS < held_until:
                continue
            renewed = False
        held_until = until
        if not renewed:
            log.warning("upload session %s: lease lost to another request", session)
            lease.lost = True
            return
