"""Blobs of a mirror repository through the pull-through cache (issue 13, docs/proxy.md).

A blob the mirror repository holds is served from storage like any other (ranges, zero-copy,
redirects); the upstream is never asked again for it. A blob it does not hold:
- `stat` (HEAD, and the size a GET's headers need) asks the upstream with a HEAD;
- `open` starts (or joins) the one transfer of that blob in this process, a `Flight`:
  - **stream while caching**: the first request ("leader") gets the bytes as they arrive
    from the upstream, while the same bytes are written by the storage driver aside
    (temp-then-rename on the filesystem, a one-shot session on S3) and verified against
    the digest and Content-Length before the blob becomes visible. The leader's last chunk
    is held back until that verification passed: a wrong blob aborts the leader's response
    mid-way, so no client ever receives a complete body of wrong bytes;
  - **single-flight**: every other request for the blob while the transfer runs
    ("joiners", and ranges, which need the whole blob first) waits for the verified blob,
    then reads it from storage. Waiting, rather than following a growing temp file, is
    what works through the storage protocol on every driver (an S3 upload in progress
    cannot be read), serves joiners only verified bytes, and costs them the time of one
    transfer, which the leader pays anyway;
  - the transfer runs as its own task: a leader that disconnects does not cut it short for
    the joiners, and neither does one that stops reading: a chunk the leader has not taken
    within `OFFER_TIMEOUT` seconds cuts it off (its response is aborted, never ended short
    cleanly) while the transfer goes on into the cache;
  - joiners are released as soon as the blob is verified and recorded, before the leader
    was handed its held-back last chunks; a failed transfer leaves `flights` before its
    leader is told, so a later request starts a new one.
- a blob the storage already holds for another repository is linked without a transfer,
  once the upstream confirmed (HEAD) that this repository has it;
- upstream failures before any byte was sent: 404 → BLOB_UNKNOWN, 429 → TOOMANYREQUESTS with
  Retry-After, down / timeout / 5xx → UNAVAILABLE.

Single-flight is per process: several replicas may each fetch a blob once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from cangku.content.digest import Digest
from cangku.content.errors import (
    BlobUnknown,
    Denied,
    RegistryError,
    SizeInvalid,
    TooManyRequests,
    Unavailable,
)
from cangku.proxy.stats import CacheStats
from cangku.proxy.upstream import Upstream, UpstreamError, UpstreamNotFound
from cangku.registry.blobs import Blobs
from cangku.registry.context import RequestContext
from cangku.registry.protocols import BlobService
from cangku.storage.base import BlobContent, Stream, closing_chunks

log = logging.getLogger("cangku.proxy")

# Chunks (as the upstream connection delivers them: over plain HTTP up to 1 MiB, one
# recv(), upstream.UPSTREAM_READ_BYTES; over TLS one record, at most 16 KiB) queued for a
# leader slower than the upstream; beyond that the transfer waits for it, so memory stays
# bounded (<= 4 MiB a leader).
LEADER_QUEUE = 4
# The most bytes handed to the server in one send when the leader is behind.
COALESCE_BYTES = 1024 * 1024
# Seconds a chunk may wait for the leader to take it (one slot of its queue to free up)
# before the leader is cut off: a client that stops reading (the server has no send
# timeout) must not hold up the transfer the joiners wait for. A leader taking one
# coalesced send (<= COALESCE_BYTES) per OFFER_TIMEOUT keeps up.
OFFER_TIMEOUT = 10.0


class Flight:
    """One upstream transfer of one blob, shared by every request for it in this process.

    `opened` resolves to the blob's length once the upstream answered (None when the blob
    was linked from storage without a transfer), `done` once the verified blob is recorded;
    both carry the failure otherwise."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[int | None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        for future in (self.opened, self.done):
            # A failure nobody waits for is still retrieved (asyncio would log it).
            future.add_done_callback(_retrieve)
        self._leader: asyncio.Queue[bytes | BaseException | None] | None = asyncio.Queue(
            LEADER_QUEUE
        )
        # Why the leader was cut off (it stopped reading): raised to it instead of an end.
        self.cut: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    async def offer(self, item: bytes | BaseException | None) -> None:
        """Hand a chunk (None: the end; an exception: the failure) to the leader, if one
        still listens. A leader that does not take it within `OFFER_TIMEOUT` seconds is cut
        off (`cut_leader`), so the transfer never waits on a stalled client for longer."""
        queue = self._leader
        if queue is None:
            return
        if not queue.full():
            # The common case, without wait_for's timer and task (per upstream chunk).
            queue.put_nowait(item)
            return
        try:
            await asyncio.wait_for(queue.put(item), OFFER_TIMEOUT)
        except TimeoutError:
            self.cut_leader(
                Unavailable(
                    f"the client did not read the blob for {OFFER_TIMEOUT:g} s: "
                    "cut off (the transfer goes on into the cache; fetch it again)"
                )
            )

    def cut_leader(self, error: BaseException) -> None:
        """Stop feeding the leader: its queued chunks are dropped and its next read raises
        `error`, so its response is aborted rather than ended short as if complete."""
        self.cut = error
        queue, self._leader = self._leader, None
        if queue is not None:
            while not queue.empty():
                queue.get_nowait()
            # Wakes a leader blocked on this queue (it has room: just emptied).
            queue.put_nowait(error)

    def detach_leader(self) -> None:
        """The leader left (or never streamed): drop its queue, waking a blocked `offer`."""
        queue, self._leader = self._leader, None
        while queue is not None and not queue.empty():
            queue.get_nowait()

    def leader_chunks(self) -> LeaderChunks:
        return LeaderChunks(self)

    def interrupt(self, error: Exception) -> None:
        """The transfer stopped without an outcome (cancelled: the server stopping). Nobody
        may wait forever: pending futures fail with `error`, and the leader's response is
        aborted (its queued chunks dropped, `error` raised in their place)."""
        for future in (self.opened, self.done):
            if not future.done():
                future.set_exception(error)
        self.cut_leader(error)


class LeaderChunks:
    """The leader's view of a flight: the chunks as they arrive; raises the transfer's
    failure where it happens. Closing it (even unstarted) lets the transfer go on without
    it."""

    def __init__(self, flight: Flight) -> None:
        self.flight = flight
        # An end or failure taken from the queue while joining chunks, returned next.
        self._pending: list[BaseException | None] = []

    def __aiter__(self) -> LeaderChunks:
        return self

    async def __anext__(self) -> bytes:
        queue = self.flight._leader
        if queue is None:
            if self.flight.cut is not None:
                raise self.flight.cut
            raise StopAsyncIteration
        item = self._pending.pop() if self._pending else await queue.get()
        if item is None:
            self.flight.detach_leader()
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.flight.detach_leader()
            raise item
        if queue.empty():
            return item
        # Behind the upstream: what is queued goes out in one larger send (fewer trips
        # through the server's send path, one upstream read each otherwise), joined with
        # one copy.
        pieces = [item]
        size = len(item)
        while size < COALESCE_BYTES and not queue.empty():
            following = queue.get_nowait()
            if not isinstance(following, bytes):
                self._pending.append(following)  # the end or a failure: after these bytes
                break
            pieces.append(following)
            size += len(following)
        return b"".join(pieces)

    async def aclose(self) -> None:
        self.flight.detach_leader()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class MirroredBlobs:
    """`BlobService` of a mirror repository: `inner` holds what is cached, `store` keeps what
    the upstream gives; `flights` (shared by every mirror repository of the process) holds
    the transfers in progress, by digest. Monolithic uploads, mounts and deletes are
    refused (DENIED): the repository follows the upstream."""

    def __init__(
        self,
        inner: BlobService,
        store: Blobs,
        upstream: Upstream,
        remote: str,
        flights: dict[str, Flight],
        mirror: str,
        stats: CacheStats | None = None,
    ) -> None:
        self.inner = inner
        self.stats = stats
        # Who the cache's writes are recorded as (events, tag history): the upstream.
        self.context = RequestContext(caller=f"mirror:{upstream.settings.name}")
        self.store = store
        self.upstream = upstream
        self.remote = remote
        self.flights = flights
        self.refusal = f"{mirror} is a mirror: it cannot be pushed to; push to another repository"

    async def stat(self, digest: str) -> tuple[Digest, int]:
        try:
            return await self.inner.stat(digest)
        except BlobUnknown:
            pass
        parsed = Digest.parse(digest)
        try:
            size = await self.upstream.head_blob(self.remote, parsed)
        except UpstreamNotFound:
            raise BlobUnknown("blob unknown to registry and upstream", str(parsed)) from None
        except UpstreamError as error:
            raise never_cached(error) from None
        expected = await self.store.expected_size(parsed)
        if expected is not None and size != expected:
            # As for a GET (`_transfer`): never pass on a length the registry knows is wrong.
            log.warning(
                "blob %s from upstream %s: it declares %d bytes, the registry expects %d",
                parsed,
                self.upstream.settings.name,
                size,
                expected,
            )
            raise _mapped(_declared_length(parsed, size, expected))
        return parsed, size

    async def open(self, digest: Digest, start: int, end: int) -> BlobContent:
        if await self._held(digest):
            try:
                return await self.inner.open(digest, start, end)
            except BlobUnknown:
                pass  # Recorded but its bytes are gone: fetched again below.
        flight, leader = self._flight(digest)
        if leader:
            length = await flight.opened
            # The whole blob: streamed as it arrives. A range needs the verified blob first.
            if length is not None and start == 0 and end == length:
                return Stream(flight.leader_chunks())
            flight.detach_leader()
        await self._wait(flight, digest)
        return await self.inner.open(digest, start, end)

    async def read(self, digest: Digest, start: int, end: int) -> AsyncIterator[bytes]:
        if not await self._held(digest):
            flight, leader = self._flight(digest)
            if leader:
                flight.detach_leader()
            await self._wait(flight, digest)
        # aclosing: a reader that stops closes the storage's stream now, not at collection.
        async with closing_chunks(self.inner.read(digest, start, end)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def delete(self, digest: str, context: RequestContext) -> None:
        raise Denied(self.refusal)

    async def upload(
        self,
        digest: str,
        body: AsyncIterable[bytes],
        length: int | None,
        context: RequestContext,
    ) -> Digest:
        raise Denied(self.refusal)

    async def mount(self, digest: str, source: str, context: RequestContext) -> Digest | None:
        raise Denied(self.refusal)

    async def _held(self, digest: Digest) -> bool:
        try:
            await self.inner.stat(str(digest))
        except BlobUnknown:
            return False
        return True

    def _flight(self, digest: Digest) -> tuple[Flight, bool]:
        """The transfer of `digest` in progress, or a new one (True: this request leads)."""
        key = str(digest)
        flight = self.flights.get(key)
        if flight is not None:
            return flight, False
        # Registered before any await: a request arriving meanwhile joins this one.
        flight = self.flights[key] = Flight()
        flight.task = asyncio.create_task(self._transfer(flight, digest))
        return flight, True

    async def _wait(self, flight: Flight, digest: Digest) -> None:
        """Wait for the verified blob, then make sure this repository holds it (the flight
        may have been another mirror repository's)."""
        # Shielded: a joiner that gives up must not cancel the others' transfer.
        await asyncio.shield(flight.done)
        if not await self._held(digest) and not await self.store.link_stored(digest, self.context):
            raise BlobUnknown("blob unknown to registry", str(digest))

    async def _transfer(self, flight: Flight, digest: Digest) -> None:
        ended = False  # the leader was handed the end or the failure
        try:
            try:
                if await self.store.link_stored(digest, self.context):
                    flight.opened.set_result(None)
                    flight.done.set_result(None)
                    return
                expected = await self.store.expected_size(digest)
                response, length = await self.upstream.get_blob(self.remote, digest)
                if expected is not None and length != expected:
                    # Refused before a byte is read: nothing streams, nothing is cached.
                    await response.aclose()
                    raise _declared_length(digest, length, expected)
            except Exception as error:
                flight.opened.set_exception(_mapped(error))
                raise
            flight.opened.set_result(length)
            try:
                last: list[bytes] = []
                chunks = _held_back(response.aiter_bytes(), length, flight, last)
                await self.store.keep_mirrored(chunks, digest, length, self.context)
            finally:
                await response.aclose()
            if self.stats is not None:
                self.stats.fetched(self.upstream.settings.name, length)
            # Verified and recorded: the joiners read it from storage now, whatever pace
            # the leader goes at; then the leader may complete its response.
            self._land(flight, digest)
            flight.done.set_result(None)
            for chunk in last:
                await flight.offer(chunk)
            await flight.offer(None)
            ended = True
        except Exception as error:
            log.warning(
                "blob %s from upstream %s not cached: %s",
                digest,
                self.upstream.settings.name,
                error,
            )
            mapped = _mapped(error)
            # Out of `flights` first: a request from now on starts a new transfer rather
            # than join this failed one.
            self._land(flight, digest)
            if not flight.done.done():
                flight.done.set_exception(mapped)
            await flight.offer(mapped)
            ended = True
        finally:
            self._land(flight, digest)
            if not ended:
                # Cancelled (the server stopping), perhaps after `done` while handing the
                # leader its last chunks: nobody may wait forever, nor get a short body.
                flight.interrupt(Unavailable("the transfer from the upstream was interrupted"))

    def _land(self, flight: Flight, digest: Digest) -> None:
        """Take `flight` out of `flights` (only it: a later flight of the digest may have
        taken its place)."""
        key = str(digest)
        if self.flights.get(key) is flight:
            del self.flights[key]


async def _held_back(
    chunks: AsyncIterator[bytes], length: int, flight: Flight, last: list[bytes]
) -> AsyncIterator[bytes]:
    """The upstream's chunks, for the storage; each one is offered to the leader when the
    next arrives, and the last one is left in `last` (sent only once verified). More bytes
    than the upstream's Content-Length end the transfer (a hostile upstream cannot fill the
    disk)."""
    held: bytes | None = None
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > length:
                raise UpstreamError(f"the upstream sent more than its {length} bytes")
            if held is not None:
                await flight.offer(held)
            held = chunk
            yield chunk
    except Exception as error:
        if isinstance(error, (UpstreamError, RegistryError)):
            raise
        # httpx's read errors and timeouts: the upstream failed mid-transfer.
        raise UpstreamError(f"transfer failed: {type(error).__name__}") from None
    if held is not None:
        last.append(held)


def _declared_length(digest: Digest, declared: int, expected: int) -> SizeInvalid:
    return SizeInvalid(
        f"the upstream declares {declared} bytes for {digest}; the registry expects {expected}"
    )


def _mapped(error: Exception) -> Exception:
    """What a request waiting for the transfer is told (OCI dist-spec error codes)."""
    if isinstance(error, UpstreamNotFound):
        return BlobUnknown("blob unknown to registry and upstream")
    if isinstance(error, UpstreamError):
        return never_cached(error)
    if isinstance(error, Denied):
        return error
    if isinstance(error, RegistryError):
        # DIGEST_INVALID / SIZE_INVALID / BLOB_UPLOAD_INVALID from verifying the bytes.
        return Unavailable(f"the upstream sent a blob that does not match it: {error}")
    return error


def never_cached(error: UpstreamError) -> RegistryError:
    """The error for content the upstream could not give and that was never cached."""
    if error.status == 429:
        return TooManyRequests(
            f"the upstream is throttling: {error}", float(error.retry_after or 60)
        )
    return Unavailable(f"the upstream cannot be reached and this is not cached: {error}")
