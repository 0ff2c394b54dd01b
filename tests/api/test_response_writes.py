"""How responses reach the socket (cangku/server.py `ZeroCopyCycle`): the status line and
headers of a small response go out in the same write as its body (one `sendto`, one TCP
segment), and are never held back past the step of the event loop that built them."""

from __future__ import annotations

import asyncio
import socket
import sys
from asyncio import selector_events
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from cangku.server import JOIN_BODY_MAX
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
    """Answers each path its own way; `release` lets the /slow body go."""

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
        status = {"/empty": 204, "/unchanged": 304}.get(path, 200)
        if path == "/echo":
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
        elif path == "/large":
            body = b"L" * (JOIN_BODY_MAX + 1)
        elif status == 200:
            body = b"small body"
        else:
            body = b""
        headers = [(b"content-length", str(len(body)).encode())] if status == 200 else []
        if path == "/closing":
            headers.append((b"connection", b"close"))
        if path == "/streamed":
            headers = []  # uvicorn frames it with chunked encoding.
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if path == "/slow":
            await self.release.wait()  # The head must not wait for this.
        if path == "/streamed":
            await send({"type": "http.response.body", "body": b"one", "more_body": True})
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"two", "more_body": False})
            return
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


def responses(writes: Writes) -> Writes:
    return [data for data in writes if data.startswith(b"HTTP/1.1")]


async def test_a_small_response_goes_out_in_one_write(port: int, writes: Writes) -> None:
    got = await asyncio.to_thread(
        exchange, port, b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n", b"body"
    )
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nsmall body")
    assert writes == [got]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("HEAD", "/small", 200), ("GET", "/empty", 204), ("GET", "/unchanged", 304)],
)
async def test_a_response_without_a_body_is_one_write_of_its_head(
    port: int, writes: Writes, method: str, path: str, status: int
) -> None:
    request = f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    got = await asyncio.to_thread(exchange, port, request, b"\r\n\r\n")
    assert got.startswith(f"HTTP/1.1 {status} ".encode())
    assert writes == [got]
    if method == "HEAD":
        assert b"content-length: 10\r\n" in got


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


async def test_a_large_body_follows_its_head_uncopied(port: int, writes: Writes) -> None:
    request = b"GET /large HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    got = await asyncio.to_thread(exchange, port, request, b"never")  # Read to the close.
    head, _, body = got.partition(b"\r\n\r\n")
    assert body == b"L" * (JOIN_BODY_MAX + 1)
    assert writes == [head + b"\r\n\r\n", body]


async def test_a_streamed_body_starts_with_its_head_and_stays_chunked(
    port: int, writes: Writes
) -> None:
    request = b"GET /streamed HTTP/1.1\r\nHost: t\r\n\r\n"
    got = await asyncio.to_thread(exchange, port, request, b"0\r\n\r\n")
    assert got.endswith(b"transfer-encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    first = responses(writes)
    assert len(first) == 1 and first[0].endswith(b"\r\n\r\n3\r\none\r\n")
    assert len(writes) == 2


async def test_a_closing_response_is_written_whole_before_the_close(
    port: int, writes: Writes
) -> None:
    request = b"GET /small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    got = await asyncio.to_thread(exchange, port, request, b"never")  # Read to the close.
    assert got.endswith(b"\r\n\r\nsmall body") and b"connection: close\r\n" in got
    assert writes == [got]


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


async def test_pipelined_small_requests_get_one_write_each_in_order(
    port: int, writes: Writes
) -> None:
    request = (
        b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n"
        b"HEAD /small HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /empty HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    got = await asyncio.to_thread(exchange, port, request, b"never")
    assert len(writes) == 3 and b"".join(writes) == got
    assert [w.split(b" ", 2)[1] for w in writes] == [b"200", b"200", b"204"]
    assert writes[0].endswith(b"small body")


async def test_expect_100_continue_still_precedes_the_body_and_the_answer(
    port: int, writes: Writes
) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.to_thread(raw.recv, 65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        raw.sendall(b"hello")
        answer = b""
        while not answer.endswith(b"hello"):
            answer += await asyncio.to_thread(raw.recv, 65536)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes == [interim, answer]


async def test_a_client_gone_before_the_answer_leaves_the_server_serving(
    port: int, app: App, writes: Writes
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


async def test_holding_the_head_asks_asyncio_for_no_loop(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio.get_running_loop() is a getpid syscall per call on Python 3.11."""
    callers: list[str] = []
    real = asyncio.get_running_loop

    def get_running_loop() -> asyncio.AbstractEventLoop:
        callers.append(sys._getframe(1).f_globals["__name__"])
        return real()

    monkeypatch.setattr(asyncio, "get_running_loop", get_running_loop)
    request = b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n"
    got = await asyncio.to_thread(exchange, port, request, b"body")
    assert got.endswith(b"small body")
    assert [caller for caller in callers if caller.startswith("cangku")] == []
