"""The HTTP server: uvicorn's httptools protocol, plus zero-copy file sending for blob pulls.

uvicorn implements no ASGI extension for sending files, so every pulled byte would be read into
Python and written back to the socket on the one event-loop thread. This protocol adds the
ASGI `http.response.zerocopysend` extension on top of uvicorn's and answers it with
`loop.sendfile`: the kernel copies the page cache straight to the socket (os.sendfile).

The extension is offered only where that works: on plain TCP (TLS must encrypt in user space,
and asyncio's fallback for it reads 16 KiB per thread hop) and on asyncio's own event loop
(uvloop implements no `sendfile`). Elsewhere blob responses read 1 MiB at a time in a worker
thread (distribution/blobs.py). Should the kernel refuse sendfile for a file (a filesystem
without it), asyncio falls back to 16 KiB reads by itself: slower, still correct.

This builds on uvicorn internals (`_start_asgi_task`, the request cycle's fields). uvicorn is
pinned in pyproject.toml; tests/api/test_zero_copy_server.py is what says an upgrade still fits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections import OrderedDict
from typing import Any, ClassVar

import uvicorn
from starlette.types import ASGIApp
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from cangku.asgi import ZERO_COPY_SEND
from cangku.config import Settings
from cangku.connections import ConnectionLimits, GuardedHttpProtocol, LimitedConfig

# The first byte of a TLS record carrying a handshake, as a ClientHello starts (RFC 8446 5.1).
TLS_HANDSHAKE_RECORD = 0x16
# Client addresses whose TLS attempt on a plain-HTTP port was logged (the oldest forgotten).
MAX_TLS_PROBERS_REMEMBERED = 4096


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


class ZeroCopyHttpProtocol(GuardedHttpProtocol):
    """uvicorn's httptools protocol, with cangku/connections.py's limits, whose requests may
    answer with `http.response.zerocopysend`, and which knows a TLS handshake sent to a
    plain-HTTP port for what it is."""

    # Shared by every connection of the process: one debug line per client address.
    tls_probers: ClassVar[OrderedDict[str, None]] = OrderedDict()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._first_data = True

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
        if (
            type(cycle) is RequestResponseCycle
            and plain_tcp
            and isinstance(self.loop, asyncio.BaseEventLoop)
        ):
            cycle.__class__ = ZeroCopyCycle
            cycle.scope.setdefault("extensions", {})[ZERO_COPY_SEND] = {}
        super()._start_asgi_task(cycle, app)


class ZeroCopyCycle(RequestResponseCycle):
    """One request/response, answering `http.response.zerocopysend` with `loop.sendfile`."""

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
