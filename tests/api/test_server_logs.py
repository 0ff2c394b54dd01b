"""The server's log stays quiet for normal client behaviour (issue 19 item 4): docker, podman
and skopeo try TLS on a plain-HTTP port before falling back to HTTP, on every session."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.types import ASGIApp

from cangku.server import ZeroCopyHttpProtocol
from tests.api.test_zero_copy_server import serve, server_logs_reach_caplog  # noqa: F401


@pytest.fixture
async def port(app: ASGIApp, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    # Addresses remembered by servers of earlier tests in this process do not count here.
    monkeypatch.setattr(ZeroCopyHttpProtocol, "tls_probers", OrderedDict(), raising=False)
    async for bound in serve(app, data_dir):
        yield bound


def tls_attempt(port: int) -> str:
    """Start TLS on the port as a client that tries HTTPS first does; the error it gets."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return "handshake succeeded"
        except (ssl.SSLError, OSError) as error:
            return str(error)


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        return connection.recv(4096)


async def test_tls_attempts_on_the_plain_port_log_one_debug_line_per_address_and_no_warning(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="uvicorn.error"):
        for _ in range(3):
            error = await asyncio.to_thread(tls_attempt, port)
            # What makes Go clients fall back: an HTTP answer where a TLS record was due.
            assert "WRONG_VERSION_NUMBER" in error or "wrong version" in error, error
        await asyncio.sleep(0.05)
    records = [r for r in caplog.records if r.name.startswith("uvicorn")]
    assert [r.levelname for r in records if r.levelno >= logging.WARNING] == []
    probes = [r.getMessage() for r in records if "tried TLS" in r.getMessage()]
    assert len(probes) == 1 and probes[0].startswith("127.0.0.1 tried TLS"), probes
    assert all(r.levelno == logging.DEBUG for r in records if "tried TLS" in r.getMessage())


async def test_other_invalid_requests_are_still_warned_about(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        answer = await asyncio.to_thread(raw_request, port, b"\x01\x02 not http\r\n\r\n")
        await asyncio.sleep(0.05)
    assert answer.startswith(b"HTTP/1.1 400")
    assert "Invalid HTTP request received." in [r.getMessage() for r in caplog.records]


async def test_plain_requests_still_work_after_a_tls_attempt(port: int) -> None:
    await asyncio.to_thread(tls_attempt, port)
    answer = await asyncio.to_thread(
        raw_request, port, b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200")
