"""The HTTP server: uvicorn's httptools protocol, plus zero-copy file sending for blob pulls
and batched request bodies for blob pushes.

uvicorn implements no ASGI extension for sending files, so every pulled byte would be read into
Python and written back to the socket on the one event-loop thread. This protocol adds the
ASGI `http.response.zerocopysend` extension on top of uvicorn's and answers it with
`loop.sendfile`: the kernel copies the page cache straight to the socket (os.sendfile).

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

This builds on uvicorn internals (`_start_asgi_task`, `on_body`, the request cycle's fields
and `receive`). uvicorn is pinned in pyproject.toml; tests/api/test_zero_copy_server.py and
tests/api/test_request_bodies.py are what say an upgrade still fits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import threading
from collections import OrderedDict
from typing import Any, ClassVar, cast

import uvicorn
from starlette.types import ASGIApp
from uvicorn._types import ASGI3Application, ASGIReceiveEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from cangku.asgi import ZERO_COPY_SEND
from cangku.config import Settings
from cangku.connections import ConnectionLimits, GuardedHttpProtocol, LimitedConfig

# The first byte of a TLS record carrying a handshake, as a ClientHello starts (RFC 8446 5.1).
TLS_HANDSHAKE_RECORD = 0x16
# Client addresses whose TLS attempt on a plain-HTTP port was logged (the oldest forgotten).
MAX_TLS_PROBERS_REMEMBERED = 4096
# The application receives request bodies in pieces of at least this many bytes (bar the last):
# one task wake-up and one ASGI message per batch instead of per TCP read. The storage writer
# hashes and writes in batches of the same size (storage/filesystem.py, WRITE_BATCH).
BODY_BATCH = 1024 * 1024
# Bytes one `recv_into` may take (asyncio's own reads take up to 256 KiB). One buffer per
# event-loop thread, shared by its connections: each read is parsed, and everything kept of it
# copied out, before the loop reads anything else, so idle connections cost no buffer.
RECEIVE_BUFFER = 1024 * 1024
_receive_buffers = threading.local()
MIN_READ = 64 * 1024


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
        super().connection_made(transport)

    # -- asyncio.BufferedProtocol: the transport reads with recv_into into our buffer --------
    def get_buffer(self, sizehint: int) -> memoryview:
        cycle = self.cycle
        if isinstance(cycle, ZeroCopyCycle) and cycle.more_body:
            # Mid-body: read no more than the batch has room for (at least MIN_READ), so
            # that a connection whose batch waits holds little more than the batch.
            return self._receive_view[: max(BODY_BATCH - cycle.body_pending, MIN_READ)]
        return self._receive_view

    def buffer_updated(self, nbytes: int) -> None:
        # The parser copies what it keeps (URL, headers, body pieces) into bytes of their
        # own before this returns, so the buffer is free for the next read.
        self.data_received(self._receive_view[:nbytes])  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if type(cycle) is RequestResponseCycle:  # A new request (not a refused upgrade).
            cycle.__class__ = ZeroCopyCycle
            cast(ZeroCopyCycle, cycle).start_body()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not isinstance(cycle, ZeroCopyCycle):
            HttpToolsProtocol.on_body(self, body)
            return
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return  # As uvicorn: answered already, the rest of the body is dropped.
        if cycle.add_body(body) >= BODY_BATCH:
            # A batch for the application: wake it, and read no more until it takes it.
            self.flow.pause_reading()
            cycle.message_event.set()

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
        plain_tcp = self.transport.get_extra_info("sslcontext") is None
        if type(cycle) is RequestResponseCycle:  # Not through on_headers_complete: ours now.
            cycle.__class__ = ZeroCopyCycle
            cast(ZeroCopyCycle, cycle).start_body()
        if (
            isinstance(cycle, ZeroCopyCycle)
            and plain_tcp
            and isinstance(self.loop, asyncio.BaseEventLoop)
        ):
            cycle.scope.setdefault("extensions", {})[ZERO_COPY_SEND] = {}
        super()._start_asgi_task(cycle, app)


class ZeroCopyCycle(RequestResponseCycle):
    """One request/response, answering `http.response.zerocopysend` with `loop.sendfile`, and
    receiving the body in batches (`ZeroCopyHttpProtocol.on_body`)."""

    def start_body(self) -> None:
        # The parser's body pieces, kept as they came (uvicorn's bytearray would copy each
        # one in, and copy them all out again for every message).
        self.body_pieces: list[bytes] = []
        self.body_pending = 0

    def add_body(self, piece: bytes) -> int:
        """Keep a piece of the request body; returns the bytes now waiting (bytes)."""
        self.body_pieces.append(piece)
        self.body_pending += len(piece)
        return self.body_pending

    async def receive(self) -> ASGIReceiveEvent:
        # uvicorn's receive, over body_pieces instead of its bytearray.
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            # Set by on_body for a whole batch, by the body's end, a disconnect, or the end
            # of our response.
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        pieces = self.body_pieces
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.body_pieces = []
        self.body_pending = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Any) -> None:
        if message["type"] != ZERO_COPY_SEND:
            await super().send(message)
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{ZERO_COPY_SEND}' at this point.")
        if self.disconnected:
            return
        # No flow-control wait here: loop.sendfile itself waits for the write buffer to empty.
        if self.scope["method"] != "HEAD" and not await self._send_file(message):
            return
        more_body = bool(message.get("more_body", False))
        await super().send({"type": "http.response.body", "body": b"", "more_body": more_body})

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
            sent = await asyncio.get_running_loop().sendfile(self.transport, file, offset, count)
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
