"""How responses reach the socket (cangku/server.py `ZeroCopyCycle`).

While other requests are under way in the process (a busy server), a small response's status
line and headers go out in the same write as its body: one `sendto` and one TCP segment. A
request alone gets its head first and its body in a second write (on one keep-alive
connection the single write cost ~20 % of manifest GETs per second: docs/performance.md,
"Small requests: syscalls (session 9)" and "Joined writes when busy (session 10)"). A head
is never held past the event-loop step that built it, a client gone before the answer
leaves the server serving, and no request pipelined behind an answer that closes the
connection is processed."""

from __future__ import annotations

import asyncio
import socket
import sys
from asyncio import selector_events
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from cangku import server
from cangku.server import JOIN_BODY_MAX
from tests.api.test_zero_copy_server import serve

Writes = list[bytes]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    """Every write of bytes to a socket transport of the server, in order (an empty write
    sends nothing: asyncio returns at once; uvicorn makes one for an empty body)."""
    seen: Writes = []
    # asyncio's socket transport (private, untyped): the loop `cangku serve` runs.
    transport_class: Any = getattr(selector_events, "_SelectorSocketTransport")  # noqa: B009
    real: Callable[..., None] = transport_class.write

    def recorded(transport: Any, data: bytes) -> None:
        if data:
            seen.append(bytes(data))
        real(transport, data)

    monkeypatch.setattr(transport_class, "write", recorded)
    return seen


class App:
    """Answers each path its own way (see the branches); /boom fails before answering;
    `release` lets the /slow body go."""

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
        if path == "/large":
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


@contextmanager
def another_request_under_way(port: int, app: App, writes: Writes) -> Iterator[None]:
    """A /slow request on a connection of its own, its head received and its body held: the
    server is busy while the block runs. Its writes are left out of `writes`."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert raw.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        writes.clear()
        yield
        app.release.set()
        assert raw.recv(65536) == b"small body"


async def busy_exchange(
    port: int, app: App, writes: Writes, request: bytes, until: bytes
) -> tuple[bytes, Writes]:
    """`exchange` while another request is under way: what came back, and the server's
    writes for it."""

    def run() -> tuple[bytes, Writes]:
        with another_request_under_way(port, app, writes):
            return exchange(port, request, until), list(writes)

    return await asyncio.to_thread(run)


def responses(writes: Writes) -> Writes:
    return [data for data in writes if data.startswith(b"HTTP/1.1")]


async def test_a_request_alone_gets_its_head_first_and_its_body_in_a_second_write(
    port: int, writes: Writes
) -> None:
    got = await asyncio.to_thread(
        exchange, port, b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n", b"body"
    )
    head, _, body = got.partition(b"\r\n\r\n")
    assert writes == [head + b"\r\n\r\n", body] and body == b"small body"


async def test_a_busy_server_writes_a_small_response_in_one_write(
    port: int, app: App, writes: Writes
) -> None:
    request = b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n"
    got, seen = await busy_exchange(port, app, writes, request, b"body")
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nsmall body")
    assert seen == [got]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("HEAD", "/small", 200), ("GET", "/empty", 204), ("GET", "/unchanged", 304)],
)
async def test_a_busy_server_writes_a_response_without_a_body_as_one_write_of_its_head(
    port: int,
    app: App,
    writes: Writes,
    method: str,
    path: str,
    status: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Written as uvicorn builds it, not held: there is no body to join it with (holding
    it cost HEAD ~5 % of its requests per second at 16 and 64 connections)."""
    held: list[str] = []  # The method of each request whose head was held.
    add = server._HeldHeads.add

    def recording(heads: server._HeldHeads, cycle: server.ZeroCopyCycle) -> None:
        held.append(cycle.scope["method"])
        add(heads, cycle)

    monkeypatch.setattr(server._HeldHeads, "add", recording)
    request = f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()

    got, seen = await busy_exchange(port, app, writes, request, b"\r\n\r\n")
    assert got.startswith(f"HTTP/1.1 {status} ".encode())
    assert seen == [got]
    assert held == []
    if method == "HEAD":
        assert b"content-length: 10\r\n" in got


async def test_a_large_body_follows_its_head_uncopied_even_when_busy(
    port: int, app: App, writes: Writes
) -> None:
    request = b"GET /large HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

    got, seen = await busy_exchange(port, app, writes, request, b"never")  # Read to the close.
    head, _, body = got.partition(b"\r\n\r\n")
    assert body == b"L" * (JOIN_BODY_MAX + 1)
    assert seen == [head + b"\r\n\r\n", body]


async def test_a_streamed_body_starts_with_its_head_and_stays_chunked_when_busy(
    port: int, app: App, writes: Writes
) -> None:
    request = b"GET /streamed HTTP/1.1\r\nHost: t\r\n\r\n"

    got, seen = await busy_exchange(port, app, writes, request, b"0\r\n\r\n")
    assert got.endswith(b"transfer-encoding: chunked\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    first = responses(seen)
    assert len(first) == 1 and first[0].endswith(b"\r\n\r\n3\r\none\r\n")
    assert len(seen) == 2


async def test_a_busy_server_writes_a_closing_response_whole_before_the_close(
    port: int, app: App, writes: Writes
) -> None:
    request = b"GET /closing HTTP/1.1\r\nHost: t\r\n\r\n"

    got, seen = await busy_exchange(port, app, writes, request, b"never")  # Read to the close.
    assert got.endswith(b"\r\n\r\nsmall body") and b"connection: close\r\n" in got
    assert seen == [got]


async def test_pipelined_small_requests_get_one_write_each_in_order_when_busy(
    port: int, app: App, writes: Writes
) -> None:
    request = (
        b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n"
        b"HEAD /small HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /empty HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )

    got, seen = await busy_exchange(port, app, writes, request, b"never")
    assert len(seen) == 3 and b"".join(seen) == got
    assert [w.split(b" ", 2)[1] for w in seen] == [b"200", b"200", b"204"]
    assert seen[0].endswith(b"small body")


async def test_holding_the_head_asks_asyncio_for_no_loop(
    port: int, app: App, writes: Writes
) -> None:
    """asyncio.get_running_loop() is a getpid syscall per call on Python 3.11."""
    callers: list[str] = []
    real = asyncio.get_running_loop

    def get_running_loop() -> asyncio.AbstractEventLoop:
        callers.append(sys._getframe(1).f_globals["__name__"])
        return real()

    def busy_exchange() -> tuple[bytes, Writes]:
        with another_request_under_way(port, app, writes), pytest.MonkeyPatch.context() as patch:
            patch.setattr(asyncio, "get_running_loop", get_running_loop)
            got = exchange(port, b"GET /small HTTP/1.1\r\nHost: t\r\n\r\n", b"body")
            return got, list(writes)

    got, seen = await asyncio.to_thread(busy_exchange)
    assert seen == [got] and got.endswith(b"small body")  # The head was held.
    assert [caller for caller in callers if caller.startswith("cangku")] == []
