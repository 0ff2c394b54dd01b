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
  expiry is by the database's clock (metadata/upload_leases.py), not each replica's own;
- the lease is confirmed (renewed, within `RENEW_TIMEOUT_SECONDS`) once more right before
  the driver records a chunk and before a commit, so what follows the body (the last part,
  the tail, the state, the commit) never runs on a lease already lost;
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
# A renewal that takes longer failed (the database unreachable or stalled).
RENEW_TIMEOUT_SECONDS = 5.0
CANCEL_WAIT_SECONDS = 10.0
# How often a waiting cancel tries to take the lease again.
CANCEL_POLL_SECONDS = 0.1


class LeaseLost(BlobUploadInvalid):
    """Raised into the body of a request whose lease was lost; `leased` answers it as 416
    with the Range stored so far."""


LEASE_LOST = "the upload's lease was lost to another request; resume from its Range"


class Lease:
    """A held lease (or none to hold: `core` None); `guard(body)` stops a body once the
    lease is lost, `confirm()` checks it right before a state save or commit."""

    __slots__ = ("core", "holder", "lost", "session")

    def __init__(self, core: Core | None, session: str = "", holder: str = "") -> None:
        self.core = core
        self.session = session
        self.holder = holder
        self.lost = False

    @property
    def held(self) -> bool:
        return self.core is not None

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

    async def confirm(self) -> None:
        """Renew the lease now; LeaseLost unless this request still holds it.

        Awaited right before the driver records a chunk (`append_upload`'s `before_save`)
        and before a commit: the renewals every RENEW_SECONDS only stop the body, and what
        follows it (the last part, the tail, the state, the commit) takes seconds on S3. A
        database that does not answer within RENEW_TIMEOUT_SECONDS counts as lost: whether
        the lease still holds is unknown, and the client resumes from its Range."""
        if self.core is None:
            return
        if not self.lost:
            try:
                if await _renew_once(self.core, self.session, self.holder):
                    return
            except Exception:
                log.exception("could not confirm the lease of upload session %s", self.session)
            self.lost = True
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
        yield Lease(None)
        return
    holder = uuid.uuid4().hex
    lease = Lease(core, session, holder)
    deadline = time.monotonic() + wait
    while True:
        taken = await core.metadata.write(
            partial(lease_rows.take_for, session=session, holder=holder, seconds=LEASE_SECONDS)
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


async def _renew_once(core: Core, session: str, holder: str) -> bool:
    """Extend the lease by LEASE_SECONDS from now by the database's clock; False when it is
    no longer `holder`'s; TimeoutError after RENEW_TIMEOUT_SECONDS."""
    renewing = core.metadata.write(
        partial(lease_rows.renew_for, session=session, holder=holder, seconds=LEASE_SECONDS)
    )
    return await asyncio.wait_for(renewing, RENEW_TIMEOUT_SECONDS)


async def _renew(core: Core, session: str, holder: str, lease: Lease) -> None:
    # The lease surely lasts until `held_until` (this process's monotonic clock, counted
    # from before the renewal that set it: the database's expiry is at least that late).
    held_until = time.monotonic() + LEASE_SECONDS
    while True:
        await asyncio.sleep(RENEW_SECONDS)
        asked = time.monotonic()
        try:
            renewed = await _renew_once(core, session, holder)
        except Exception:
            log.exception("could not renew the lease of upload session %s", session)
            # Tried again while the lease surely lasts; after that another may hold it.
            if time.monotonic() + RENEW_SECONDS < held_until:
                continue
            renewed = False
        if not renewed:
            log.warning("upload session %s: lease lost to another request", session)
            lease.lost = True
            return
        held_until = asked + LEASE_SECONDS
