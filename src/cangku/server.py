"""The HTTP server: uvicorn's httptools protocol, plus zero-copy file sending for blob pulls
and batched request bodies for blob pushes.

uvicorn implements no ASGI extension for sending files, so every pulled byte would be read into
Python and written back to the socket on the one event-loop thread. This protocol adds the
ASGI `http.response.zerocopysend` extension on top of uvicorn's and answers it with
`os.sendfile`: the kernel copies the page cache straight to the socket. Files of at least
`THREAD_SEND_MIN` bytes are sent by a thread of their own (`_FileSender`), smaller ones with
`loop.sendfile` on the event loop: the kernel's work for the bytes (reading the file, which
may wait for the disk; TCP, and on loopback the receiving side's too) then runs beside the
event loop instead of stopping it, and several pulls use several cores.

The extension is offered only where that works: on plain TCP (TLS must encrypt in user space,
and asyncio's fallback for it reads 16 KiB per thread hop) and on asyncio's own event loop
(uvloop implements no `sendfile`). Elsewhere blob responses read 1 MiB at a time in a worker
thread (distribution/blobs.py). Should the kernel refuse sendfile for a file (a filesystem
without it), asyncio falls back to 16 KiB reads by itself: slower, still correct.

Receiving (issue 18): uvicorn hands a request body to the application one TCP read at a
time: a new bytes object per `recv`, an ASGI message and a wake-up of the application's task
per read, and it pauses and resumes reading the socket every 64 KiB. On a slow stream of
small reads (`docker push`, which gzips as it sends) that per-read overhead came on top of
hashing and the disk (docs/performance.md, "Push CPU"). Here the socket is read with
`recv_into` into one reused buffer (asyncio's `BufferedProtocol`, over TLS too), the
parser's body pieces are kept as they are (no re-copying), and the application is
woken once per `BODY_BATCH` bytes, or when the body ends or the client goes away. Reading
pauses while a whole batch waits for the application, and a read mid-body takes no more than
the batch has room for, so a connection holds at most a batch and 64 KiB of its body.

A body with a Content-Length (and no Transfer-Encoding) of at least `DIRECT_BODY_MIN` bytes
goes past the parser: once its headers are parsed, the socket is read with `recv_into` straight
into the batch the application will receive (a `ReceivedBody`), so its bytes are never copied
in user space; the storage writer hashes and writes that very buffer. The parser, which still
waits for the body, is replaced by a fresh one for the next request on the connection (the
framing of a Content-Length body is its length: nothing in it is the parser's business).
Bytes of the body that came in the headers' read go through the parser once, as before.
A batch is taken only once `STAGED_MAX` bytes of it have come (they wait in a small buffer
meanwhile), and a connection's batches are dropped with its response: a client that promises a
large body and sends a byte holds a byte, not a 1 MiB batch.

This builds on uvicorn internals (`_start_asgi_task`, `on_body`, the request cycle's fields
and `receive`). uvicorn is pinned in pyproject.toml; tests/api/test_zero_copy_server.py and
tests/api/test_request_bodies.py are what say an upgrade still fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import select
import socket
import sys
import threading
import weakref
from collections import OrderedDict
from typing import Any, ClassVar, cast

import httptools
import uvicorn
from starlette.types import ASGIApp
from uvicorn._types import ASGI3Application, ASGIReceiveEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from cangku.asgi import ZERO_COPY_SEND, ReceivedBody
from cangku.config import Settings
from cangku.connections import ConnectionLimits, GuardedHttpProtocol, LimitedConfig

# The first byte of a TLS record carrying a handshake, as a ClientHello starts (RFC 8446 5.1).
TLS_HANDSHAKE_RECORD = 0x16
# Client addresses whose TLS attempt on a plain-HTTP port was logged (the oldest forgotten).
MAX_TLS_PROBERS_REMEMBERED = 4096
# The application receives request bodies in pieces of at least this many bytes (bar the last):
# one task wake-up and one ASGI message per batch instead of per TCP read. The storage writer
# keeps such batches as they are, four to a thread hop (storage/filesystem.py, WRITE_BATCH).
BODY_BATCH = 1024 * 1024
# Bytes one `recv_into` may take (asyncio's own reads take up to 256 KiB). One buffer per
# event-loop thread, shared by its connections: each read is parsed, and everything kept of it
# copied out, before the loop reads anything else, so idle connections cost no buffer.
RECEIVE_BUFFER = 1024 * 1024
_receive_buffers = threading.local()
MIN_READ = 64 * 1024
# Content-Length bodies from this size on are read straight into the application's batches
# (below it, the few bytes a manifest or small blob has are not worth a parser per request).
DIRECT_BODY_MIN = 64 * 1024
# Bytes of a direct body that arrive with its headers fill at most one batch.
assert RECEIVE_BUFFER <= BODY_BATCH
# A batch is taken once this much of it has come (or the rest of the body, if less): the
# first read of each batch goes into the shared buffer, no larger than this, and is copied
# out (one 64 KiB copy per 1 MiB); a batch taken at the first byte let a client that
# promised a large body hold 1 MiB for a byte (100 connections: +100 MiB).
STAGED_MAX = 64 * 1024
assert STAGED_MAX <= RECEIVE_BUFFER
# A read mid-body smaller than this pauses reading for a while, so that the next read takes
# what came meanwhile instead of each small write. dockerd sends each layer at the pace its
# gzip makes it, 6-16 MB/s per layer with five at once on a busy machine: 20 ms gather
# 120-320 KB (5 ms: one or two of its 32 KiB chunks). Each read costs ~130 Python calls on
# the event loop (the pause and resume re-register the socket with the selector, a timer,
# two loop iterations), so 9 reads per MB instead of 25 at 8 MB/s save ~2,000 calls per MB;
# the last read of a body waits at most the delay (docs/performance.md, "docker push:
# dockerd's stream (session 9)").
COALESCE_BELOW = 256 * 1024
# The pause: as long as the client took to send COALESCE_BELOW in the last one, within
# COALESCE_DELAY_FAST..COALESCE_DELAY. A fast client may be held back by the socket's
# receive buffer rather than its own pace, and long pauses would cap it at a buffer per
# pause (a 512 KiB buffer: ~25 MB/s at 20 ms); its full buffer shortens the next pause.
COALESCE_DELAY = 0.020
COALESCE_DELAY_FAST = 0.005
# Bytes per second from which a body's sender counts as fast and is never paused: a pause
# lets a fast client's bytes wait in a full socket buffer, and the body's last read waits
# the whole pause: the benchmark's 8 MiB PATCHes took 17-20 ms each instead of ~12 (64 MiB
# chunked: 406-458 against 649-650 MiB/s). dockerd's gzip streams come at 6-16 MB/s;
# clients sending from memory or disk at hundreds of MB/s (docs/performance.md, "Fast
# senders are not paused (session 11)").
FAST_SENDER = 64_000_000
# Whole batches kept for reuse per event-loop thread (BODY_BATCH bytes each): a fresh 1 MiB
# buffer costs ~200 page faults per MB pushed (the allocator hands such sizes back to the
# kernel when freed), a reused one none. One upload in flight holds up to ~10.
POOLED_BATCHES = 16
# Zero-copy sends of at least this many bytes run in a thread of their own (`_FileSender`);
# smaller ones on the event loop (`loop.sendfile`), where a thread's start costs more than it
# spares. On loopback and fast links the kernel's work per byte sent (TCP, and on loopback the
# receiving side's too) is charged to the sender: on the event loop, three blobs at once got
# one core; in threads they share the cores (docs/performance.md, "Warm pulls").
THREAD_SEND_MIN = 1024 * 1024
# A sending thread that finds no room in the socket for this many seconds ends, and the event
# loop waits for room instead: a client that stops reading holds no thread.
THREAD_SEND_WAIT = 0.5
# At most this many sends run in threads of their own at once (per process); more go through
# `loop.sendfile`, so that slow readers cannot take every thread the process may start (the
# database's workers need them too).
MAX_SEND_THREADS = 32
# A response body this small (bytes) goes out in one write with the status line and headers:
# copying it costs less than the second send (a syscall, and on loopback the whole delivery).
JOIN_BODY_MAX = 64 * 1024
# Answers that never carry a body (RFC 9110 section 6.4.1), whose head is not held.
BODILESS_STATUSES = frozenset((204, 304))


class BatchPool:
    """Direct bodies' batches, reused once nobody else holds them.

    A batch handed to the application may be kept for a while (the storage writer gathers
    four and hashes them in a worker thread), and the server cannot be told when it is done
    with one. CPython's reference count can: anyone who could still read a batch (a list, a
    memoryview of it, a worker thread's argument) holds a reference, so a pooled batch whose
    count equals that of the pool's own never-lent entry, read the same way, is free. (The
    comparison, not a constant, so that an interpreter counting its own references
    differently still reuses only free batches.)
    """

    def __init__(self) -> None:
        # batches[0] is never lent out: the measure of a batch only the pool holds.
        self.batches: list[ReceivedBody] = [ReceivedBody(0)]

    def take(self, size: int) -> ReceivedBody:
        """A batch of `size` bytes, its content undefined (every byte is read into)."""
        if size == BODY_BATCH:
            batches = self.batches
            free = sys.getrefcount(batches[0])
            for index in range(1, len(batches)):
                if sys.getrefcount(batches[index]) == free:
                    return batches[index]
            if len(batches) <= POOLED_BATCHES:
                batch = ReceivedBody(size)
                batches.append(batch)
                return batch
        return ReceivedBody(size)


def _batch_pool() -> BatchPool:
    pool: BatchPool | None = getattr(_receive_buffers, "pool", None)
    if pool is None:
        pool = _receive_buffers.pool = BatchPool()
    return pool


def _receive_buffer() -> memoryview:
    view: memoryview | None = getattr(_receive_buffers, "view", None)
    if view is None:
        view = _receive_buffers.view = memoryview(bytearray(RECEIVE_BUFFER))
    return view


def server_config(app: ASGIApp, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """How `cangku serve` runs the app (tests pass overrides, e.g. for lifespan and logging)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # asyncio's own loop, not uvloop: only it can sendfile, which made 4 parallel pulls
        # ~1.9x faster, for 6-23% fewer small requests per second (docs/performance.md).
        "loop": "asyncio",
        "http": ZeroCopyHttpProtocol,
        "access_log": False,  # cangku's own access log (app.py) names the user.
        # X-Forwarded-* are ours to judge (auth/access.py, `trusted_proxies`); uvicorn's own
        # handling would trust any loopback peer's headers and rewrite the client address.
        "proxy_headers": False,
        "log_level": settings.log_level,
        # uvicorn's records go through cangku's handler (observability.configure_logging), so
        # that log_format: json covers them too.
        "log_config": None,
        "lifespan": "on",
        # SIGTERM: uvicorn stops accepting at once, waits this long for running requests,
        # then cancels them (a client that stopped reading cannot hold the exit back).
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "ssl_certfile": str(settings.tls_cert) if settings.tls_cert else None,
        "ssl_keyfile": str(settings.tls_key) if settings.tls_key else None,
    }
    limits = ConnectionLimits(
        header_timeout=settings.connections.header_timeout,
        body_idle_timeout=settings.connections.body_idle_timeout,
        per_address=settings.connections.per_address,
        exempt=tuple(
            ipaddress.ip_network(network, strict=False) for network in settings.auth.trusted_proxies
        ),
    )
    return LimitedConfig(app, connection_limits=limits, **(options | overrides))


class ZeroCopyHttpProtocol(GuardedHttpProtocol, asyncio.BufferedProtocol):
    """uvicorn's httptools protocol, with cangku/connections.py's limits, whose requests may
    answer with `http.response.zerocopysend`, which reads into a reused buffer and hands
    request bodies over in batches, and which knows a TLS handshake sent to a plain-HTTP port
    for what it is."""

    # Shared by every connection of the process: one debug line per client address.
    tls_probers: ClassVar[OrderedDict[str, None]] = OrderedDict()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # Before the parent's: a refused connection (per-address cap) still closes normally.
        self._receive_view = _receive_buffer()
        self._first_data = True
        # Bytes of the current request's body still to come past the parser (0: none).
        self._direct_left = 0
        self._coalescing: asyncio.TimerHandle | None = None
        self._paused_before = False  # The next read follows a coalescing pause.
        self._coalesce_delay = COALESCE_DELAY  # The next pause's (seconds).
        # When the first bytes of a body read in batches came (loop clock, seconds): not when
        # its headers did, so that a client waiting for `100 Continue` (curl, from 1 MiB) is
        # not rated by that wait. (Time the application leaves a whole batch waiting, with
        # reading paused, still counts against the sender.)
        self._body_since = 0.0
        self._offered = RECEIVE_BUFFER  # Bytes the last get_buffer offered.
        self._held_heads = _HeldHeads.of(self.loop)
        # Where the zero-copy extension works (see _start_asgi_task): fixed per connection.
        self._zero_copy = transport.get_extra_info("sslcontext") is None and isinstance(
            self.loop, asyncio.BaseEventLoop
        )
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._coalescing is not None:
            self._coalescing.cancel()
            self._coalescing = None
        super().connection_lost(exc)

    # -- asyncio.BufferedProtocol: the transport reads with recv_into into our buffer --------
    def get_buffer(self, sizehint: int) -> memoryview:
        cycle = self.cycle
        if self._direct_left:
            view = cast(ZeroCopyCycle, cycle).direct_buffer(self._direct_left, self._receive_view)
        elif isinstance(cycle, ZeroCopyCycle) and cycle.more_body:
            # Mid-body: read no more than the batch has room for (at least MIN_READ), so
            # that a connection whose batch waits holds little more than the batch.
            view = self._receive_view[: max(BODY_BATCH - cycle.body_pending, MIN_READ)]
        else:
            view = self._receive_view
        self._offered = len(view)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct_left:
            self._direct_received(nbytes)
        else:
            # The parser copies what it keeps (URL, headers, body pieces) into bytes of their
            # own before this returns, so the buffer is free for the next read.
            data: bytes = self._receive_view[:nbytes]  # type: ignore[assignment]
            if self._first_data:
                self.data_received(data)  # Ours: the first read may be a TLS handshake.
            else:
                GuardedHttpProtocol.data_received(self, data)  # The rest: a call less each.
        if self._paused_before:
            # What a pause gathered says the client's pace, and so the next pause's length;
            # unless the read was cut short by the room we gave it, below COALESCE_BELOW:
            # then it says only that the client sent at least that much.
            self._paused_before = False
            if nbytes < self._offered or nbytes >= COALESCE_BELOW:
                delay = self._coalesce_delay * COALESCE_BELOW / max(nbytes, 1)
                self._coalesce_delay = min(max(delay, COALESCE_DELAY_FAST), COALESCE_DELAY)
        # A read cut short by the room we gave (a batch's staged start, its last bytes) says
        # nothing of the client's pace: only one that took less than offered is slow. (A
        # request without a body to come, as most small ones, is not looked at further.)
        if nbytes < COALESCE_BELOW and nbytes < self._offered:
            cycle = self.cycle
            if cycle is not None and cycle.more_body:
                self._coalesce_reads()

    def _coalesce_reads(self) -> None:
        """After a small read of a body that goes on, let the next bytes pile up in the
        socket for a while (COALESCE_DELAY_FAST to COALESCE_DELAY, by the client's pace)
        before reading them: a slow stream (docker push) then costs one wake-up per ~100 KiB
        or more instead of one per write of the client. A fast sender (FAST_SENDER) is read
        as its bytes come."""
        cycle = self.cycle
        if (
            not isinstance(cycle, ZeroCopyCycle)
            or cycle.body_seen < BODY_BATCH  # Not a stream (yet): no delay for small bodies.
            or not cycle.more_body
            or cycle.response_complete
            or cycle.disconnected
            or self.flow.read_paused
            or self._coalescing is not None
            # A fast sender: the body so far came at FAST_SENDER bytes a second or more.
            or cycle.body_seen >= (self._clock() - self._body_since) * FAST_SENDER
        ):
            return
        self.flow.pause_reading()
        self._coalescing = self.loop.call_later(self._coalesce_delay, self._coalesced, cycle)

    def _coalesced(self, cycle: ZeroCopyCycle) -> None:
        self._coalescing = None
        # Resumed only if nothing else wants reading paused now: a whole batch waiting for
        # the application, or a pipelined request waiting for the one before.
        if (
            self.cycle is cycle
            and cycle.body_pending < BODY_BATCH
            and not self.pipeline
            and not self.transport.is_closing()
        ):
            self.flow.resume_reading()
            self._paused_before = True

    def _direct_received(self, nbytes: int) -> None:
        """`nbytes` of a direct body were read into where `get_buffer` said (never more than
        the body has left, so never a byte of the next request)."""
        # What data_received does for a read besides parsing: progress for the body idle
        # timeout (connections.py), and no keep-alive timeout while a request is under way.
        self._last_read_at = self.loop.time()
        self._unset_keepalive_if_required()
        self._direct_left -= nbytes
        cycle = cast(ZeroCopyCycle, self.cycle)
        if not cycle.body_seen:
            self._body_since = self._clock()
        if cycle.batch is None:  # Read into the shared buffer (direct_buffer).
            full = cycle.stage(self._receive_view[:nbytes], self._direct_left)
        else:
            full = cycle.direct_received(nbytes)
        if full:
            # A batch for the application: wake it, and read no more until it takes it.
            self.flow.pause_reading()
            cycle.message_event.set()
        if not self._direct_left:
            # The old parser still waits for the body; the next request gets a new one.
            self.parser = self._new_parser()
            self.on_message_complete()

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # As uvicorn's own (HttpToolsProtocol.__init__).
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is previous:
            return  # No new request: an upgrade, which uvicorn handles.
        if type(cycle) is RequestResponseCycle:  # Pipelined: not started (_start_asgi_task).
            cycle.__class__ = ZeroCopyCycle
            cycle.start_body()  # type: ignore[attr-defined]  # (no typing.cast: a call)
        if not self.parser.should_upgrade():
            length, chunked = _body_framing(self.headers)
            if chunked:
                # Its pieces copied into pooled batches (joining them took a fresh buffer).
                cast(ZeroCopyCycle, cycle).in_batches = True
            elif length >= DIRECT_BODY_MIN:
                self._direct_left = length
                cast(ZeroCopyCycle, cycle).in_batches = True

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not isinstance(cycle, ZeroCopyCycle):
            HttpToolsProtocol.on_body(self, body)
            return
        direct = self._direct_left
        if direct:
            # Body bytes that came in the headers' read: the parser's, once.
            self._direct_left -= len(body)
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return  # As uvicorn: answered already, the rest of the body is dropped.
        if cycle.in_batches:
            if not cycle.body_seen:
                self._body_since = self._clock()
            full = cycle.copy_into_batches(body, direct or None)
        else:
            full = cycle.add_body(body) >= BODY_BATCH
        if full:
            # A batch for the application: wake it, and read no more until it takes it.
            self.flow.pause_reading()
            cycle.message_event.set()

    def on_message_complete(self) -> None:
        # The parser saw the whole body in the headers' read: nothing left to read past it.
        self._direct_left = 0
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self._first_data and data:
            self._first_data = False
            if (
                data[0] == TLS_HANDSHAKE_RECORD
                and self.transport.get_extra_info("sslcontext") is None
            ):
                # docker, podman and skopeo try HTTPS before plain HTTP on every session. The
                # HTTP answer is what tells them to fall back ("server gave HTTP response to
                # HTTPS client"), so it is normal traffic, not uvicorn's "Invalid HTTP request"
                # warning.
                self._note_tls_probe()
                self.send_400_response("This port speaks plain HTTP, not TLS.")
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        if self.transport in _FileSender.sending:
            # A request pipelined behind a response that a thread is sending on this socket
            # came in malformed: a 400 written now would land inside the thread's bytes, a
            # corrupt body that looks whole. Closing instead lets the thread end the body
            # (its own descriptor keeps the connection), then the connection ends.
            self.transport.close()
            return
        super().send_400_response(msg)

    def _note_tls_probe(self) -> None:
        address = self.client[0] if self.client else "unknown"
        probers = ZeroCopyHttpProtocol.tls_probers
        if address in probers:
            probers.move_to_end(address)
            return
        probers[address] = None
        if len(probers) > MAX_TLS_PROBERS_REMEMBERED:
            probers.popitem(last=False)
        self.logger.debug(
            "%s tried TLS on this plain-HTTP port (clients such as docker try HTTPS first, "
            "then HTTP); answered with plain HTTP. Logged once per client address.",
            address,
        )

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn builds its own cycle class; becoming ours just before the application runs
        # covers every request, pipelined ones too (uvicorn starts those here later). The
        # extension is offered only to a cycle that did become ours.
        if type(cycle) is RequestResponseCycle:  # Not through on_headers_complete: ours now.
            cycle.__class__ = ZeroCopyCycle
            cycle.start_body()  # type: ignore[attr-defined]  # (no typing.cast: a call)
        if isinstance(cycle, ZeroCopyCycle):
            # For holding the head (send): uvicorn's set of the process's requests under way,
            # and where held heads wait for their flush (asyncio.get_running_loop() would cost
            # a getpid syscall per call on Python 3.11).
            cycle.tasks = self.tasks
            cycle.held_heads = self._held_heads
            # Plain TCP on asyncio's own loop (connection_made).
            if self._zero_copy:
                cycle.scope.setdefault("extensions", {})[ZERO_COPY_SEND] = {}
        super()._start_asgi_task(cycle, app)


class ZeroCopyCycle(RequestResponseCycle):
    """One request/response, answering `http.response.zerocopysend` with `os.sendfile`, and
    receiving the body in batches (`ZeroCopyHttpProtocol.on_body`)."""

    # The status line and headers, built and waiting for the body (see send).
    held_head: bytes | None = None
    # Set before the application runs: the server's requests under way, and the heads held
    # on this event loop.
    tasks: set[asyncio.Task[None]]
    held_heads: _HeldHeads

    def start_body(self) -> None:
        # The parser's body pieces, kept as they came (uvicorn's bytearray would copy each
        # one in, and copy them all out again for every message); or, for a direct or a
        # chunked body (in_batches), whole batches.
        self.body_pieces: list[bytes | ReceivedBody] = []
        self.body_pending = 0
        self.body_seen = 0  # Bytes of the body received so far.
        self.in_batches = False
        # The batch being filled, and how much of it is.
        self.batch: ReceivedBody | None = None
        self.batch_filled = 0
        # The start of the next batch, until enough of it came to take one (`stage`).
        self.staged = bytearray()

    def direct_buffer(self, left: int, scratch: memoryview) -> memoryview:
        """Where the next read of a direct body goes (`left`: its bytes still to come): the
        rest of the batch being filled; else `scratch` (the shared receive buffer), for at
        most what may still be staged, to be passed to `stage` (or dropped, once the
        response is complete, as uvicorn drops the rest of a body answered without it)."""
        if self.response_complete or self.disconnected:
            return scratch[: min(left, len(scratch))]
        batch = self.batch
        if batch is None:
            return scratch[: min(left, STAGED_MAX - len(self.staged))]
        return memoryview(batch)[self.batch_filled :]

    def direct_received(self, nbytes: int) -> bool:
        """`nbytes` were read into the batch `direct_buffer` gave; True if that filled it,
        and it is now the application's."""
        batch = self.batch
        if batch is None or self.response_complete or self.disconnected:
            return False  # Read into the scratch buffer: dropped.
        self.batch_filled += nbytes
        self.body_pending += nbytes
        self.body_seen += nbytes
        if self.batch_filled < len(batch):
            return False
        self.body_pieces.append(batch)
        self.batch = None
        return True

    def stage(self, data: memoryview, left: int | None) -> bool:
        """Keep `data`, the start of a batch, read into a buffer not ours (`left`: the bytes
        of the body still to come after it; None for a chunked body). A batch is taken only
        once STAGED_MAX bytes of it have come, or its part of the body has: a client that
        promises a large body and sends a byte holds a byte, not a batch. True if a batch
        filled."""
        if self.response_complete or self.disconnected:
            return False  # Dropped.
        staged = self.staged
        total = len(staged) + len(data)
        self.body_pending += len(data)
        self.body_seen += len(data)
        if total < STAGED_MAX and left != 0:
            staged += data
            return False
        size = BODY_BATCH if left is None else min(total + left, BODY_BATCH)
        batch = self.batch = _batch_pool().take(size)
        batch[: len(staged)] = staged
        batch[len(staged) : total] = data
        self.staged = bytearray()
        self.batch_filled = total
        if total < size:
            return False
        self.body_pieces.append(batch)
        self.batch = None
        return True

    def copy_into_batches(self, piece: bytes, left: int | None) -> bool:
        """Copy a piece of the body that the parser produced into the batches (`left`: the
        bytes of a direct body still to come before it; None for a chunked body, whose
        length nobody knows); True if a batch filled."""
        batch = self.batch
        filled = self.batch_filled
        end = filled + len(piece)
        if (
            batch is not None
            and end < len(batch)
            and not (self.response_complete or self.disconnected)
        ):
            # The common case on a chunked stream (dockerd sends 32 KiB chunks, ~30 per MB):
            # the piece fits in the batch being filled and does not fill it. One copy, no
            # views, no calls per piece beyond this one.
            batch[filled:end] = piece
            self.batch_filled = end
            added = end - filled
            self.body_pending += added
            self.body_seen += added
            return False
        full = False
        view = memoryview(piece)
        while view and not (self.response_complete or self.disconnected):
            if self.batch is None:
                taken = min(len(view), STAGED_MAX - len(self.staged))
                after = None if left is None else left - taken
                full = self.stage(view[:taken], after) or full
            else:
                target = memoryview(self.batch)[self.batch_filled :]
                taken = min(len(target), len(view))
                target[:taken] = view[:taken]
                full = self.direct_received(taken) or full
            view = view[taken:]
            if left is not None:
                left -= taken
        return full

    def drop_body(self) -> None:
        """Forget what was received of the body (the response is complete: nobody will read
        it, and a connection kept open must not keep its batches)."""
        self.body_pieces = []
        self.body_pending = 0
        self.batch = None
        self.batch_filled = 0
        self.staged = bytearray()

    def add_body(self, piece: bytes) -> int:
        """Keep a piece of the request body; returns the bytes now waiting (bytes)."""
        self.body_pieces.append(piece)
        self.body_pending += len(piece)
        self.body_seen += len(piece)
        return self.body_pending

    async def receive(self) -> ASGIReceiveEvent:
        # uvicorn's receive, over body_pieces instead of its bytearray.
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete and not self._batch_ready():
            self.flow.resume_reading()
            # Set by on_body for a whole batch, by the body's end, a disconnect, or the end
            # of our response.
            await self.message_event.wait()
        # A wake-up only (the state says what happened): one set for a batch taken now
        # without waiting must not wake the next receive before its batch is there.
        self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        pieces = self.body_pieces
        body: bytes | ReceivedBody
        if self.in_batches:
            # Whole batches, each handed over as it was filled (a direct body ends with one).
            if pieces:
                body = pieces.pop(0)
            elif not self.more_body and self.batch is not None:
                # A chunked body's last, partial batch: a copy, the batch stays pooled.
                body = bytes(memoryview(self.batch)[: self.batch_filled])
                self.batch = None
            elif not self.more_body and self.staged:
                body, self.staged = bytes(self.staged), bytearray()
            else:
                body = b""
            self.body_pending -= len(body)
            more_body = (
                self.more_body or bool(pieces) or self.batch is not None or bool(self.staged)
            )
        else:
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self.body_pieces = []
            self.body_pending = 0
            more_body = self.more_body
        # A ReceivedBody is a bytearray: a byte string to every consumer of the body here
        # (ASGI's type says bytes), and theirs to keep.
        return {"type": "http.request", "body": cast(bytes, body), "more_body": more_body}

    def _batch_ready(self) -> bool:
        # A second whole batch may be waiting (read while the first did), or the last of a
        # chunked body after the one before it was taken.
        return self.in_batches and (
            bool(self.body_pieces)
            or (not self.more_body and (self.batch is not None or bool(self.staged)))
        )

    async def send(self, message: Any) -> None:
        kind = message["type"]
        held = self.held_head
        if (
            kind == "http.response.start"
            and not self.response_started
            # Other requests under way: the server is busy, and the join pays.
            and len(self.tasks) > 1
            # A body to join: the head of a HEAD, 204 or 304 answer is its one write anyway.
            and self.scope["method"] != "HEAD"
            and message["status"] not in BODILESS_STATUSES
        ) or (
            held is not None
            and kind == "http.response.body"
            and len(message.get("body", b"")) <= JOIN_BODY_MAX
        ):
            # While the server is busy, the head is built and held back so that a small body
            # (at most JOIN_BODY_MAX bytes, an empty one included) goes out in the same
            # write: one `sendto` and one TCP segment per small response instead of two,
            # ~5 µs of a manifest GET's CPU at 16 connections. A request alone is not joined:
            # the head sent first wakes its client while the body follows, and on one
            # keep-alive connection that is ~20 % more requests per second than one write
            # (docs/performance.md, "Joined writes when busy (session 10)"). Held no longer
            # than this step of the event loop: a body that does not come in it (a streamed
            # response waiting for its first bytes, an application reading the request body
            # first) finds the head sent (_flush_head). uvicorn's send does the checks and the
            # framing, writing to a stand-in; its one wait (for a paused transport) comes
            # first, here, so that it runs to the end in this step: nothing else sees the
            # stand-in. Inline, without helpers: this runs twice for every response.
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
                if held is not None and self.held_head is None:
                    # The flush wrote the head while we waited (not seen, but cheap to rule
                    # out): the body goes as any other, after it.
                    await super().send(message)
                    if self.response_complete and self.in_batches:
                        self.drop_body()
                    return
            caught = _CaughtWrites()
            caught.head = held or b""
            transport = caught.transport = self.transport
            self.transport = caught  # type: ignore[assignment]  # (no typing.cast: a call)
            try:
                await super().send(message)
            finally:
                self.transport = transport
            if held is None:
                if caught:
                    self.held_head = b"".join(caught)
                    self.held_heads.add(self)
                return
            self.held_head = None
            # A close wrote it all already: uvicorn closes before it calls on_response,
            # which starts a pipelined request unless the transport is closing, and it
            # must be by then (RFC 9112 section 9.6: no request after a `Connection:
            # close` answer is processed).
            if not caught.closed and not self.disconnected and not transport.is_closing():
                transport.write(held + b"".join(caught) if caught else held)
            if self.response_complete and self.in_batches:
                self.drop_body()
            return
        if held is not None:
            # Anything else (a large body, a zero-copy send) goes out after the head.
            self._flush_head()
        if kind != ZERO_COPY_SEND:
            await super().send(message)
            if self.response_complete and self.in_batches:
                self.drop_body()
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{ZERO_COPY_SEND}' at this point.")
        if self.disconnected:
            return
        # No flow-control wait here: loop.sendfile itself waits for the write buffer to empty.
        if self.scope["method"] != "HEAD" and not await self._send_file(message):
            return
        more_body = bool(message.get("more_body", False))
        await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})

    def _flush_head(self) -> None:
        """Write the held head, if it is still held (and anyone is left to read it)."""
        head = self.held_head
        if head is None:
            return
        self.held_head = None
        if not self.disconnected and not self.transport.is_closing():
            self.transport.write(head)

    async def _send_file(self, message: Any) -> bool:
        """Send the file range; False if the connection is gone (closed here or by the peer)."""
        if self.chunked_encoding:
            raise RuntimeError("Zero-copy sending needs a Content-Length, not chunked encoding.")
        file = message["file"]
        offset = message.get("offset")
        if offset is None:
            offset = file.tell()
        count = message.get("count")
        if count is None:
            count = os.fstat(file.fileno()).st_size - offset
        if count > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        if count <= 0:
            return True  # Nothing to send (loop.sendfile refuses a count of 0).
        if self.transport.is_closing():  # Closed, and connection_lost not yet called.
            self._abandon()
            return False
        try:
            if (
                count >= THREAD_SEND_MIN
                and _FileSender.active < MAX_SEND_THREADS
                and self.transport.get_write_buffer_size() == 0
            ):
                sent = await _FileSender(self.transport, file.fileno()).send(offset, count)
            else:
                loop = asyncio.get_running_loop()
                sent = await loop.sendfile(self.transport, file, offset, count)
        except OSError as error:
            # Mostly the client went away mid-transfer (reset, broken pipe, timed out): nobody
            # is left to answer, and the application did nothing wrong. Anything else (a disk
            # read error, an unreachable peer) is worth a line in the log.
            if not isinstance(error, ConnectionError | TimeoutError):
                self.logger.warning("sending %s failed: %s", file.name, error)
            self._abandon()
            return False
        if sent < count:
            # Closing shows the client a short body instead of a wait for bytes that will never
            # come.
            self.logger.warning(
                "%s ended %d bytes early; closing the connection", file.name, count - sent
            )
            self._abandon()
            return False
        self.expected_content_length -= sent
        return True

    def _abandon(self) -> None:
        self.disconnected = True  # Later sends are no-ops, as after a client disconnect.
        self.transport.close()


class _CaughtWrites(list[bytes]):
    """Stands in for `transport` while uvicorn's send builds a response: keeps what it
    writes (list.append: no Python frame). A close writes the held head (`head`) and what
    it kept to the transport, and closes it, at once (see ZeroCopyCycle.send)."""

    closed = False
    write = list.append
    head = b""
    transport: asyncio.Transport

    def close(self) -> None:
        self.closed = True
        transport = self.transport
        if not transport.is_closing():
            transport.write(b"".join([self.head, *self]))
        transport.close()


class _HeldHeads:
    """The responses on one event loop whose head is held for their body (ZeroCopyCycle.send),
    flushed together at the loop's next step: one scheduled callback for all of them, not one
    per response (a Handle, its scheduling and its run: ~1 µs of each small GET at 16
    connections). A body that came in the step that built its head has taken it by then."""

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _HeldHeads]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak, as the registry's key: a loop that ended (tests start many) is let go.
        self.loop = weakref.ref(loop)
        self.cycles: list[ZeroCopyCycle] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _HeldHeads:
        held = cls._of_loop.get(loop)
        if held is None:
            held = cls._of_loop[loop] = cls(loop)
        return held

    def add(self, cycle: ZeroCopyCycle) -> None:
        if not self.cycles:
            loop = self.loop()
            if loop is not None:  # Always: `send` runs on that loop.
                loop.call_soon(self.flush)
        self.cycles.append(cycle)

    def flush(self) -> None:
        cycles, self.cycles = self.cycles, []
        for cycle in cycles:
            if cycle.held_head is not None:  # Mostly taken by its body: no call then.
                cycle._flush_head()


class _FileSender:
    """Sends a file range to a connection's socket with `os.sendfile` from threads of its own,
    beside the event loop, and waits on the loop while the socket has no room.

    The socket and the file are used through duplicates of their descriptors, so that the
    transport closing its own (the client went away, the server stops) or the application
    closing the file (its response cancelled) cannot hand the number to another connection or
    file mid-send; the duplicates are closed once no thread uses them. The
    transport's write buffer must be empty (the response head sent), as `loop.sendfile`
    waits for it to be. Not one of anyio's worker threads: the send lasts as long as the
    client reads, and slow clients must not take the threads every other request needs."""

    # Senders between their start and their end, in this process (MAX_SEND_THREADS); counted
    # on the event loops' threads only.
    active = 0
    # The transports whose socket a thread is sending on now (see send_400_response).
    sending: ClassVar[set[asyncio.Transport]] = set()

    def __init__(self, transport: asyncio.Transport, file: int) -> None:
        # `file`: a descriptor (duplicated here; the caller keeps and closes its own).
        self.transport = transport
        self.socket = cast(socket.socket, transport.get_extra_info("socket")).dup()
        self.file = os.dup(file)
        self.running = False  # A thread is sending (it closes the socket if `abandoned`).
        self.abandoned = False
        self.lock = threading.Lock()

    async def send(self, offset: int, count: int) -> int:
        """Send `count` bytes of the file from `offset`; the bytes sent, fewer if the file
        ended early. Raises OSError as `os.sendfile` does (the client went away: a
        ConnectionError). Cancelled mid-send, it shuts the socket down, so that the thread
        stops at its next call."""
        loop = asyncio.get_running_loop()
        sent = 0
        _FileSender.active += 1
        _FileSender.sending.add(self.transport)
        try:
            while sent < count:
                moved, ended = await self._in_thread(loop, offset + sent, count - sent)
                sent += moved
                if ended or sent == count:
                    break
                await self._writable(loop)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)
            raise
        finally:
            _FileSender.active -= 1
            _FileSender.sending.discard(self.transport)
            with self.lock:
                self.abandoned = True
                if not self.running:
                    self._close()
        return sent

    def _close(self) -> None:
        self.socket.close()
        os.close(self.file)

    def _in_thread(
        self, loop: asyncio.AbstractEventLoop, offset: int, count: int
    ) -> asyncio.Future[tuple[int, bool]]:
        future: asyncio.Future[tuple[int, bool]] = loop.create_future()

        def settle(outcome: tuple[int, bool] | BaseException) -> None:
            if future.done():  # Cancelled meanwhile.
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)

        def run() -> None:
            outcome: tuple[int, bool] | BaseException
            try:
                outcome = _send_until_stalled(self.socket.fileno(), self.file, offset, count)
            except BaseException as error:  # Raised to the awaiting task.
                outcome = error
            with self.lock:
                self.running = False
                if self.abandoned:
                    self._close()
            with contextlib.suppress(RuntimeError):  # The loop closed: nobody awaits it.
                loop.call_soon_threadsafe(settle, outcome)

        thread = threading.Thread(target=run, name="cangku-sendfile", daemon=True)
        # Running from before its start (it may end before `start` returns), and not running
        # if it could not start, so that `send` closes the duplicates then.
        self.running = True
        try:
            thread.start()
        except BaseException:
            self.running = False
            raise
        return future

    async def _writable(self, loop: asyncio.AbstractEventLoop) -> None:
        ready: asyncio.Future[None] = loop.create_future()
        descriptor = self.socket.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(descriptor, wake)
        try:
            await ready
        finally:
            loop.remove_writer(descriptor)


def _send_until_stalled(out: int, file: int, offset: int, count: int) -> tuple[int, bool]:
    """`os.sendfile` to the non-blocking socket `out` until `count` bytes went, the file
    ended, or the socket had no room for THREAD_SEND_WAIT seconds (a poll(2) in between, as
    a blocking send would wait): (bytes sent, whether the file ended early). Raises OSError
    (a reset or closed peer: its POLLERR/POLLHUP make the next call fail)."""
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    sent = 0
    while sent < count:
        try:
            moved = os.sendfile(out, file, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(THREAD_SEND_WAIT * 1000):
                return sent, False
            continue
        if moved == 0:
            return sent, True
        sent += moved
    return sent, False


def _body_framing(headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """(Content-Length, chunked): the length of a request body the server may read past the
    parser (bytes; 0 if it has none), or True if a Transfer-Encoding frames it instead
    (RFC 9112 6.3: it then overrides any Content-Length; the parser has refused a body
    framed by neither). The parser has already refused a malformed or repeated length."""
    length = 0
    for name, value in headers:  # Names lower-cased by uvicorn's on_header.
        if name == b"transfer-encoding":
            return 0, True
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or len(value) > 19:
                return 0, False
            length = int(value)
    return length, False
