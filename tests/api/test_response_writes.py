"""How responses reach the socket (cangku/server.py `ZeroCopyCycle`): a head is never held
back while its body is awaited, a client gone before the answer leaves the server serving,
and no request pipelined behind an answer that closes the connection is processed.

(Session 9 wrote a small response's head and body in one write; on a single keep-alive
connection that cost ~20 % of manifest GETs per second, and it was taken out:
docs/performance.md, "Small requests: syscalls (session 9)".)"""

from __future__ import annotations

import asyncio
import socket
from asyncio import selector_events
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from tests.api.test_zero_copy_server import serve

Writes = list[bytes]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    """Every write to a socket transport of the server, in order."""
    seen: Writes = []
    # asyncio's socket transport (private, untyped): the loop `cangku serve` runs.
    transport_class: Any = getattr(selector_events, "_SelectorSocketTransport")  # noqa: B009
    real: Callable[..., None] = transport_class.write

    def recorded(transport: Any, data: bytes) -> None:
        seen.append(bytes(data))
        real(transport, data)

    monkeypatch.setattr(transport_class, "write", recorded)
    return seen


class App:
    """Answers "small body" (with `connection: close` on /closing); /boom fails before
    answering; `release` lets the /slow body go."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[str] = []  # "METHOD /path" of each request the app was called for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        self.seen.append(f"{scope['method']} {path}")
        if path == "/boom":
            raise RuntimeError("fails before answering: uvicorn's 500, which closes")
        body = b"small body"
        headers = [(b"content-length", str(len(body)).encode())]
        if path == "/closing":
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if path == "/slow":
            await self.release.wait()  # The head must not wait for this.
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def port(app: App, tmp_path: Path) -> AsyncIterator[int]:
    async for bound in serve(app, tmp_path):
        yield bound


def exchange(port: int, request: bytes, until: bytes) -> bytes:
    """Send raw request bytes; read until `until` ends what came (or the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request)
        received = b""
        while not received.endswith(until):
            chunk = raw.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


async def test_the_head_is_sent_while_the_body_is_still_awaited(
    port: int, app: App, writes: Writes
) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.to_thread(raw.recv, 65536)  # Hangs (timeout) if the head waits.
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        app.release.set()
        body = await asyncio.to_thread(raw.recv, 65536)
        assert body == b"small body"
    assert writes == [head, body]


async def test_a_client_gone_before_the_answer_leaves_the_server_serving(
    port: int, app: App
) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.to_thread(raw.recv, 65536)
    await asyncio.sleep(0.05)  # The server sees the connection end.
    app.release.set()
    await asyncio.sleep(0.05)
    got = await asyncio.to_thread(
        exchange, port, b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n", b"body"
    )
    assert got.endswith(b"small body")


@pytest.mark.parametrize("path", ["/closing", "/boom"])
async def test_no_pipelined_request_runs_after_an_answer_that_closes(
    port: int, app: App, path: str
) -> None:
    # The server closes (the application's `connection: close`, uvicorn's 500): the request
    # pipelined behind is not processed (RFC 9112 section 9.6), so a client that retries it
    # elsewhere does not do it twice.
    request = (
        f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        + b"DELETE /victim HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    got = await asyncio.to_thread(exchange, port, request, b"never")  # Read to the close.
    await asyncio.sleep(0.2)  # Time for a wrongly started request to reach the app.
    assert b"connection: close\r\n" in got and got.count(b"HTTP/1.1 ") == 1
    assert app.seen == [f"GET {path}"]
