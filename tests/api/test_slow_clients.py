"""Slow and greedy clients against the real server (cangku/connections.py): a header deadline,
a body idle timeout and a per-address connection cap, each with a bounded slow client."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cangku.config import Settings
from cangku.connections import LimitedConfig
from cangku.server import DIRECT_BODY_MIN, server_config
from tests.api.helpers import push_blob, sha256

HEADER_TIMEOUT = 0.6
BODY_IDLE_TIMEOUT = 0.6
PER_ADDRESS = 4
# Far more than the limits above; far less than "as long as the client likes".
BOUND = 5.0


@contextlib.asynccontextmanager
async def serving(
    app: ASGIApp, data: Path, keep_alive: float = 5.0, **connections: Any
) -> AsyncIterator[int]:
    """The app behind `cangku serve`'s server on a free loopback port, in this event loop
    (`keep_alive`: uvicorn's idle time between requests, its default unless given)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    settings = Settings(
        data=data,
        listen=f"127.0.0.1:{listener.getsockname()[1]}",
        auth={"open": True},
        connections={
            "header_timeout": HEADER_TIMEOUT,
            "body_idle_timeout": BODY_IDLE_TIMEOUT,
            "per_address": PER_ADDRESS,
            **connections,
        },
    )
    server = uvicorn.Server(
        server_config(app, settings, lifespan="off", log_config=None, timeout_keep_alive=keep_alive)
    )
    with listener:
        task = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        try:
            yield listener.getsockname()[1]
        finally:
            # Also when a test failed with its slow connections still open: do not wait.
            server.should_exit = server.force_exit = True
            await asyncio.wait_for(task, BOUND)


async def read_until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took (seconds)."""
    started = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(reader.read(65536), BOUND):
            received += chunk
    return received, time.monotonic() - started


async def trickle_headers_until_closed(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[bytes, float]:
    """Start a request and trickle its headers, one byte every 0.2 s (each well within any
    idle timeout), until the server closes: what it answered, and the seconds it took."""
    started = time.monotonic()
    writer.write(b"GET /v2/ HTTP/1.1\r\n")

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b"X-Slow: " + b"a" * 100:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)

    trickling = asyncio.create_task(trickle())
    received, _ = await read_until_closed(reader)
    elapsed = time.monotonic() - started
    trickling.cancel()
    writer.close()
    return received, elapsed


async def test_a_client_trickling_its_headers_gets_408_and_is_disconnected(
    app: ASGIApp, data_dir: Path
) -> None:
    async with serving(app, data_dir) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        received, elapsed = await trickle_headers_until_closed(reader, writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    # The server's clock starts when it accepts, a moment before `started`: hence the 0.9.
    assert HEADER_TIMEOUT * 0.9 <= elapsed < BOUND


async def test_a_silent_connection_is_closed_after_the_header_timeout(
    app: ASGIApp, data_dir: Path
) -> None:
    async with serving(app, data_dir) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        received, elapsed = await read_until_closed(reader)
        writer.close()
    assert received.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT * 0.9 <= elapsed < BOUND


async def test_a_pipelined_request_s_header_deadline_waits_for_a_long_response(
    app: ASGIApp, data_dir: Path
) -> None:
    data = os.urandom(32 * 1024 * 1024)
    async with serving(app, data_dir) as port:
        async with httpx_client(port) as client:
            digest = await push_blob(client, "jimo/app", data)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(
            f"GET /v2/jimo/app/blobs/{digest} HTTP/1.1\r\nHost: registry.test\r\n\r\n".encode()
            + b"GET /v2/ HTTP/1.1\r\n"  # the next request's first line, the rest never comes
        )
        await writer.drain()
        await asyncio.sleep(HEADER_TIMEOUT * 2.5)  # not reading: the download is in progress
        received, _ = await read_until_closed(reader)
        writer.close()
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest[: len(data)] == data  # the whole blob
    # Then the next request had its own header deadline, counted from then: 408, not a bare close.
    assert rest[len(data) :].startswith(b"HTTP/1.1 408 ")


# A small body goes through the parser; a large one is read past it (server.py, direct).
BODY_SIZES = [1000, 4 * DIRECT_BODY_MIN]


@pytest.mark.parametrize("size", BODY_SIZES)
async def test_a_client_that_stops_sending_its_body_is_disconnected(
    app: ASGIApp, data_dir: Path, size: int
) -> None:
    data = b"x" * size
    async with serving(app, data_dir) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v2/jimo/app/blobs/uploads/?digest=" + sha256(data).encode() + b" HTTP/1.1\r\n"
            b"Host: registry.test\r\nContent-Length: %d\r\n\r\n" % size + data[:100]
        )
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(data[100 : size // 2])  # Past the headers' read, then nothing.
        await writer.drain()
        received, elapsed = await read_until_closed(reader)
        writer.close()
        assert not received.startswith(b"HTTP/1.1 201")
        assert BODY_IDLE_TIMEOUT * 0.9 <= elapsed < BOUND
        # Nothing of the cut-off upload was kept.
        async with httpx_client(port) as client:
            head = await client.head(f"/v2/jimo/app/blobs/{sha256(data)}")
        assert head.status_code == 404


# An upload session that does not exist: answered 404 before any of the body is read.
UNKNOWN_UPLOAD = b"PATCH /v2/jimo/app/blobs/uploads/0123456789abcdef0123456789abcdef HTTP/1.1\r\n"
# The head of a request whose body is 1 MiB (read past the parser, or through it: chunked).
LARGE_BODY_HEADS = {
    "content-length": b"Host: registry.test\r\nContent-Length: 1048576\r\n\r\n",
    "chunked": b"Host: registry.test\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n",
}


async def read_one_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    length = next(
        int(line.partition(b":")[2])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), BOUND)
    return head


@pytest.mark.parametrize("framing", LARGE_BODY_HEADS)
async def test_a_body_answered_early_and_trickled_on_is_not_kept_open_for_good(
    app: ASGIApp, data_dir: Path, framing: str
) -> None:
    # The rest of a body answered without it is read and dropped, for at most the header
    # timeout: a byte now and then must not hold the connection open forever.
    async with serving(app, data_dir) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UNKNOWN_UPLOAD + LARGE_BODY_HEADS[framing] + b"x")
        head = await read_one_response(reader)
        started = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(100):
                    await asyncio.sleep(0.2)  # Well within every idle timeout.
                    writer.write(b"y")
                    await writer.drain()

        trickling = asyncio.create_task(trickle())
        received, _ = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        trickling.cancel()
        writer.close()
    assert head.startswith(b"HTTP/1.1 404 ")
    assert received == b""
    assert HEADER_TIMEOUT * 0.9 <= elapsed < BOUND


@pytest.mark.parametrize("framing", LARGE_BODY_HEADS)
async def test_a_body_answered_early_whose_rest_stops_coming_is_closed_after_keep_alive(
    app: ASGIApp, data_dir: Path, framing: str
) -> None:
    # A byte after the answer cancelled uvicorn's keep-alive timeout; silence after it must
    # not keep the connection open until the (long) header timeout, let alone for good.
    async with serving(app, data_dir, keep_alive=0.5, header_timeout=30.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UNKNOWN_UPLOAD + LARGE_BODY_HEADS[framing] + b"x")
        head = await read_one_response(reader)
        await asyncio.sleep(0.1)
        writer.write(b"y")
        await writer.drain()
        started = time.monotonic()
        received, _ = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
    assert head.startswith(b"HTTP/1.1 404 ")
    assert received == b""
    assert 0.5 * 0.9 <= elapsed < BOUND


@pytest.mark.parametrize("framing", LARGE_BODY_HEADS)
async def test_a_body_answered_early_then_finished_is_closed_by_the_keep_alive_timeout(
    app: ASGIApp, data_dir: Path, framing: str
) -> None:
    # Its bytes after the answer cancelled the keep-alive timeout; the body's end re-arms it.
    keep_alive = 0.5
    rest = b"y" * (1048576 - 1) + (b"\r\n0\r\n\r\n" if framing == "chunked" else b"")
    async with serving(app, data_dir, keep_alive=keep_alive, header_timeout=30.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(UNKNOWN_UPLOAD + LARGE_BODY_HEADS[framing] + b"x")
        head = await read_one_response(reader)
        await asyncio.sleep(0.1)
        writer.write(rest)
        await writer.drain()
        started = time.monotonic()
        received, _ = await read_until_closed(reader)  # Then silence.
        elapsed = time.monotonic() - started
        writer.close()
    assert head.startswith(b"HTTP/1.1 404 ")
    assert received == b""
    assert elapsed < BOUND


async def test_a_request_after_the_rest_of_an_answered_body_is_not_cut_by_the_keep_alive(
    data_dir: Path,
) -> None:
    # The end of a body answered early arms the keep-alive timeout; the next request, in the
    # same read, must disarm it, or a slow answer is cut off after `keep_alive` (the review
    # of session 10 found this, older than the keep-alive deadline).
    keep_alive = 0.3

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(keep_alive * 3)
        status = 401 if scope["method"] == "POST" else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(app, data_dir, keep_alive=keep_alive, header_timeout=30.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        assert (await read_one_response(reader)).startswith(b"HTTP/1.1 401 ")
        # The rest of the answered body and the next request, in one write (one read).
        writer.write(b"0123456789" + b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_one_response(reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()


@pytest.mark.parametrize("size", BODY_SIZES)
async def test_a_slow_but_steady_body_is_not_cut_off(
    app: ASGIApp, data_dir: Path, size: int
) -> None:
    data = os.urandom(size)
    async with serving(app, data_dir) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v2/jimo/app/blobs/uploads/?digest=" + sha256(data).encode() + b" HTTP/1.1\r\n"
            b"Host: registry.test\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
        )
        step = -(-size // 8)
        for offset in range(0, size, step):  # 8 x 0.25 s: longer than the idle timeout.
            await asyncio.sleep(0.25)
            writer.write(data[offset : offset + step])
            await writer.drain()
        received, _ = await read_until_closed(reader)
        writer.close()
    assert received.startswith(b"HTTP/1.1 201 "), received[:200]


async def test_one_address_may_hold_only_so_many_connections(app: ASGIApp, data_dir: Path) -> None:
    async with serving(app, data_dir) as port:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(PER_ADDRESS)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused, _ = await read_until_closed(reader)
        writer.close()
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in refused.lower()
        # The connections held still work; once one closes, a new one is accepted.
        first_reader, first_writer = held[0]
        first_writer.write(b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\nConnection: close\r\n\r\n")
        answer, _ = await read_until_closed(first_reader)
        assert answer.startswith(b"HTTP/1.1 200 ")
        first_writer.close()
        await asyncio.sleep(0.1)
        async with httpx_client(port) as client:
            assert (await client.get("/v2/")).status_code == 200
        for _, other in held[1:]:
            other.close()


def test_trusted_proxies_are_exempt_from_the_cap(app: ASGIApp) -> None:
    # Every client behind a reverse proxy comes from its address.
    settings = Settings(auth={"trusted_proxies": ["10.0.0.0/8"]}, connections={"per_address": 1})
    config = server_config(app, settings)
    assert isinstance(config, LimitedConfig)
    assert not config.connection_limits.capped("10.1.2.3")
    assert config.connection_limits.capped("192.0.2.7")


@contextlib.asynccontextmanager
async def httpx_client(port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        yield client


async def test_a_header_deadline_moved_by_many_requests_still_cuts_off_a_trickler(
    app: ASGIApp, data_dir: Path
) -> None:
    # The deadlines are re-armed lazily (connections.Deadline): after requests that each
    # moved them on, a request that trickles its headers is still cut off in time.
    async with serving(app, data_dir, keep_alive=BOUND) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(5):
            writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_one_response(reader)).startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(HEADER_TIMEOUT / 4)  # The first deadline would have passed.
        received, elapsed = await trickle_headers_until_closed(reader, writer)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert HEADER_TIMEOUT * 0.9 <= elapsed < BOUND


@pytest.mark.parametrize("busy", [False, True])
async def test_keep_alive_requests_schedule_no_timers_of_their_own_while_busy(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, busy: bool
) -> None:
    # Each request moves the header and body deadlines and the keep-alive timeout. As
    # TimerHandles that was four call_at (and four cancels) per request, ~3 µs of a small
    # request's CPU each time; as deadlines, a connection's timers are scheduled once per
    # timeout period at most. A request alone keeps uvicorn's keep-alive TimerHandle (one
    # per response: faster on one connection, measured), only while another request is
    # under way (busy) is it a deadline too.
    requests = 50
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/held":
            await release.wait()
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(
        app, data_dir, keep_alive=BOUND, header_timeout=60.0, body_idle_timeout=60.0
    ) as port:
        loop = asyncio.get_running_loop()
        scheduled: list[str] = []
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
            scheduled.append(getattr(callback, "__qualname__", repr(callback)))
            return call_at(when, callback, *args, **kwargs)

        held_reader, held_writer = await asyncio.open_connection("127.0.0.1", port)
        if busy:  # Under way, on a connection of its own, until the end.
            held_writer.write(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")  # The connection's own timers.
        assert (await read_one_response(reader)).startswith(b"HTTP/1.1 200 ")
        monkeypatch.setattr(loop, "call_at", counting_call_at)
        for _ in range(requests):
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_one_response(reader)).startswith(b"HTTP/1.1 200 ")
        monkeypatch.undo()
        release.set()
        if busy:
            assert (await read_one_response(held_reader)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        held_writer.close()
    keep_alive = scheduled.count("HttpToolsProtocol.timeout_keep_alive_handler")
    assert keep_alive == (0 if busy else requests), collections.Counter(scheduled)
    # What remains is the client's own and at most one per deadline (none re-arms earlier).
    guards = [name for name in scheduled if "Deadline" in name]
    assert len(guards) <= 3, collections.Counter(scheduled)


async def test_a_connection_reset_after_an_answer_leaves_no_protocol_behind(
    app: ASGIApp, data_dir: Path
) -> None:
    # A request alone arms uvicorn's keep-alive TimerHandle, which holds the protocol (its
    # parser, cycle, transport) until it fires; uvicorn cancels it only on a clean close.
    async with serving(app, data_dir, keep_alive=60.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_one_response(reader)).startswith(b"HTTP/1.1 200 ")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # A reset (RST), not a clean close.
        for _ in range(50):
            await asyncio.sleep(0.02)
            gc.collect()
            alive = [
                o
                for o in gc.get_objects()
                if isinstance(o, HttpToolsProtocol) and o.server and o.server[1] == port
            ]
            if not alive:
                break
        assert alive == []


async def test_a_connection_left_idle_after_many_requests_is_closed_after_keep_alive(
    app: ASGIApp, data_dir: Path
) -> None:
    keep_alive = 0.5
    async with serving(app, data_dir, keep_alive=keep_alive, header_timeout=30.0) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(20):  # Each answer moves the keep-alive deadline on: 2 s in all.
            await asyncio.sleep(keep_alive / 5)
            writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_one_response(reader)).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), BOUND) == b""  # Closed by the server.
        elapsed = time.monotonic() - started
        writer.close()
    assert keep_alive * 0.9 <= elapsed < BOUND / 2  # Closed, and not before its time.
