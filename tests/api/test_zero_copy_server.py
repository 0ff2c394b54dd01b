"""Blob pulls through the real HTTP server (cangku/server.py): bytes go out with os.sendfile.

The other API tests use httpx's ASGI transport, which offers no zero-copy extension, so they
cover the threaded-read fallback; these run uvicorn with our protocol on a loopback socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import logging
import os
import re
import socket
import struct
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from cangku import server
from cangku.asgi import ZERO_COPY_SEND
from cangku.config import Settings
from cangku.content.digest import Digest
from cangku.registry import Registry
from cangku.server import server_config
from cangku.storage.filesystem import FilesystemStorage
from tests.api.helpers import push_blob
from tests.tls import TlsFiles, make_tls_files

NAME = "jimo/pulls"


async def serve(
    app: ASGIApp, data: Path, tls: TlsFiles | None = None, **overrides: Any
) -> AsyncIterator[int]:
    """Run the app as `cangku serve` would, on a free loopback port in this event loop
    (`overrides`: uvicorn.Config's arguments to change)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    settings = Settings(
        data=data,
        listen=f"127.0.0.1:{listener.getsockname()[1]}",
        auth={"open": True},
        tls_cert=tls and tls.cert,
        tls_key=tls and tls.key,
    )
    # The app's lifespan belongs to the fixtures here, and pytest keeps the logging.
    config = server_config(app, settings, **({"lifespan": "off", "log_config": None} | overrides))
    server = uvicorn.Server(config)
    with listener:
        task = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            if task.done():
                task.result()  # Raises what stopped it, if anything did.
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        try:
            yield listener.getsockname()[1]
        finally:
            server.should_exit = True
            await task


@pytest.fixture(autouse=True)
def server_logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn's default logging config (applied by any earlier uvicorn.Config in this process)
    stops its loggers' records short of the root logger, where caplog listens."""
    for name in ("uvicorn", "uvicorn.error"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)


@pytest.fixture
async def port(app: ASGIApp, data_dir: Path) -> AsyncIterator[int]:
    async for bound in serve(app, data_dir):
        yield bound


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes moved by each os.sendfile call (asyncio's loop.sendfile looks it up per call)."""
    calls: list[int] = []
    real_sendfile: Callable[..., int] = os.sendfile

    def counting_sendfile(*args: Any) -> int:
        sent = real_sendfile(*args)
        calls.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting_sendfile)
    return calls


@pytest.fixture
async def blob(port: int) -> tuple[str, bytes]:
    data = os.urandom(3 * 1024 * 1024 + 17)  # Several sendfile calls, an odd tail.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        digest = await push_blob(client, NAME, data)
    return digest, data


def requests_on_one_connection(
    port: int, requests: list[tuple[str, str, dict[str, str]]]
) -> list[tuple[int, dict[str, str], bytes]]:
    """Send the requests one after another over one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    answers = []
    try:
        for method, path, headers in requests:
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            answers.append((response.status, dict(response.getheaders()), body))
            # http.client would silently reconnect if the server had closed the connection.
            assert connection.sock is not None, "the server closed the keep-alive connection"
    finally:
        connection.close()
    return answers


def short_pull(port: int, path: str) -> int:
    """GET a body that the server cuts short; how many bytes of it came."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        with pytest.raises(http.client.IncompleteRead) as short:
            response.read()
        return len(short.value.partial)
    finally:
        connection.close()


async def test_whole_and_ranged_pulls_are_sent_by_the_kernel_on_one_connection(
    port: int, blob: tuple[str, bytes], sendfile_calls: list[int]
) -> None:
    digest, data = blob
    path = f"/v2/{NAME}/blobs/{digest}"
    answers = await asyncio.to_thread(
        requests_on_one_connection,
        port,
        [
            ("GET", path, {}),
            ("GET", path, {"Range": "bytes=1000-1999"}),
            ("HEAD", path, {}),
            ("GET", path, {"Range": "bytes=-17"}),
        ],
    )

    (whole, ranged, head, tail) = answers
    assert whole[0] == 200 and whole[2] == data
    assert whole[1]["content-length"] == str(len(data))
    assert ranged[0] == 206 and ranged[2] == data[1000:2000]
    assert ranged[1]["content-range"] == f"bytes 1000-1999/{len(data)}"
    assert head[0] == 200 and head[2] == b"" and head[1]["content-length"] == str(len(data))
    assert tail[0] == 206 and tail[2] == data[-17:]
    assert sum(sendfile_calls) == len(data) + 1000 + 17


async def test_an_empty_blob_is_pulled_like_any_other(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        digest = await push_blob(client, NAME, b"")
    path = f"/v2/{NAME}/blobs/{digest}"
    with caplog.at_level(logging.WARNING):
        answers = await asyncio.to_thread(
            requests_on_one_connection, port, [("GET", path, {}), ("GET", path, {})]
        )
    assert [(status, body) for status, _, body in answers] == [(200, b""), (200, b"")]
    assert answers[0][1]["content-length"] == "0"
    assert _warnings(caplog) == []


async def test_a_blob_file_shorter_than_recorded_ends_the_connection_instead_of_hanging(
    port: int,
    blob: tuple[str, bytes],
    registry: Registry,
    sendfile_calls: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    digest, data = blob
    assert isinstance(registry.storage, FilesystemStorage)
    blob_file = registry.storage.blob_path(Digest.parse(digest))
    os.truncate(blob_file, 1000)  # Damaged storage: the database still says the full size.

    with caplog.at_level(logging.WARNING):
        assert await asyncio.to_thread(short_pull, port, f"/v2/{NAME}/blobs/{digest}") == 1000
    assert sum(sendfile_calls) == 1000
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (
        logging.WARNING,
        f"{blob_file} ended {len(data) - 1000} bytes early; closing the connection",
    ) in messages
    assert not [m for level, m in messages if level >= logging.ERROR]


async def test_a_client_leaving_mid_pull_leaves_the_server_serving(
    port: int, sendfile_calls: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(64 * 1024 * 1024)  # Far more than the kernel buffers between the two.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        digest = await push_blob(client, NAME, data)

    def leave_early() -> None:
        with socket.socket() as raw:
            # A small receive buffer (set before connecting, so the window stays small) makes
            # the server wait on the socket mid-file.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.settimeout(30)
            raw.connect(("127.0.0.1", port))
            raw.sendall(f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Closed with linger 0: the server's next send fails with a connection reset.

    with caplog.at_level(logging.WARNING):
        await asyncio.to_thread(leave_early)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            response = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert response.status_code == 200 and response.content == data
    assert len(data) <= sum(sendfile_calls) < 2 * len(data)  # The first pull was cut short.
    assert _warnings(caplog) == []


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), []),
        (OSError(errno.EIO, "Input/output error"), ["Input/output error"]),
    ],
)
async def test_a_failure_mid_file_closes_the_connection_and_only_disk_errors_are_logged(
    port: int,
    blob: tuple[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: OSError,
    logged: list[str],
) -> None:
    digest, data = blob
    real_sendfile: Callable[..., int] = os.sendfile
    calls: list[int] = []

    def failing_after_the_first_call(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(0)
        if len(calls) > 1:
            raise error
        return real_sendfile(out_fd, in_fd, offset, min(count, 65536))  # A partial send.

    monkeypatch.setattr(os, "sendfile", failing_after_the_first_call)

    with caplog.at_level(logging.WARNING):
        received = await asyncio.to_thread(short_pull, port, f"/v2/{NAME}/blobs/{digest}")
    assert 0 < received < len(data)
    messages = _warnings(caplog)
    assert len(messages) == len(logged), messages
    assert all(expected in message for expected, message in zip(logged, messages, strict=True))


async def test_pipelined_requests_are_answered_in_order(
    port: int, blob: tuple[str, bytes], sendfile_calls: list[int]
) -> None:
    digest, data = blob
    path = f"/v2/{NAME}/blobs/{digest}"

    def pipeline() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            requests = [
                f"GET {path} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n",
                f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n",
                f"GET {path} HTTP/1.1\r\nHost: t\r\nRange: bytes=-5\r\nConnection: close\r\n\r\n",
            ]
            raw.sendall("".join(requests).encode())  # All three before any answer.
            received = bytearray()
            while chunk := raw.recv(1 << 20):
                received += chunk
        bodies = []
        for _ in requests:
            head, _, rest = bytes(received).partition(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
            bodies.append(rest[:length])
            received = bytearray(rest[length:])
        assert received == b""
        return bodies

    assert await asyncio.to_thread(pipeline) == [data[:10], data, data[-5:]]
    assert sum(sendfile_calls) == 10 + len(data) + 5


async def test_a_malformed_request_pipelined_behind_a_threaded_send_never_lands_in_its_body(
    port: int,
) -> None:
    """A thread sends the blob on the socket (_FileSender) while a request pipelined behind
    it arrives malformed: the server's 400 must not be written into the middle of the body
    (a corrupt blob that looks whole); the body ends whole, then the connection closes."""
    data = os.urandom(16 * 1024 * 1024)  # More than the socket buffers hold.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        digest = await push_blob(client, NAME, data)
    request = f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: t\r\n\r\n".encode()

    def pull() -> bytes:
        with socket.socket() as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # The send stalls.
            raw.settimeout(30)
            raw.connect(("127.0.0.1", port))
            raw.sendall(request)
            received = bytearray(raw.recv(4096))
            time.sleep(0.3)  # Mid-send, then a valid request and a malformed one.
            raw.sendall(request + b"\x00not http \r\n\r\n")
            while chunk := raw.recv(1 << 20):
                received += chunk
            return bytes(received)

    received = await asyncio.to_thread(pull)
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert rest[: len(data)] == data
    assert b"HTTP/1.1 400" not in rest[: len(data)]


async def test_the_access_log_counts_the_bytes_of_a_zero_copy_pull(
    port: int, blob: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    digest, data = blob
    with caplog.at_level(logging.INFO, logger="cangku.access"):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get(f"/v2/{NAME}/blobs/{digest}")
    assert response.content == data
    (line,) = [r.getMessage() for r in caplog.records if r.name == "cangku.access"]
    assert line.startswith(f"GET /v2/{NAME}/blobs/{digest} 200 {len(data)} "), line


async def test_the_extension_follows_the_asgi_defaults(
    tmp_path: Path, sendfile_calls: list[int]
) -> None:
    """No offset: from the file's position; no count: to its end; more_body: more may follow."""
    body = b"0123456789" * 100_000

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert ZERO_COPY_SEND in scope["extensions"]
        headers = [(b"content-length", str(len(body) - 10 + 3).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(source, "rb") as file:
            file.seek(10)
            await send({"type": ZERO_COPY_SEND, "file": file, "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})

    source = tmp_path / "body"
    source.write_bytes(body)
    async for bound in serve(app, tmp_path / "data"):
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{bound}/")
    assert response.content == body[10:] + b"end"
    assert sum(sendfile_calls) == len(body) - 10


async def test_over_tls_blobs_are_read_in_a_worker_thread_instead(
    app: ASGIApp, tmp_path: Path, sendfile_calls: list[int]
) -> None:
    """TLS encrypts in user space: no zero-copy there, and asyncio's fallback is 16 KiB a hop."""
    tls = make_tls_files(tmp_path / "tls", [])
    offered: list[bool] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        offered.append(ZERO_COPY_SEND in scope.get("extensions", {}))
        await app(scope, receive, send)

    data = os.urandom(2 * 1024 * 1024 + 5)
    async for port in serve(recording, tmp_path / "data", tls):
        base_url = f"https://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, verify=tls.context()) as client:
            digest = await push_blob(client, NAME, data)
            whole = await client.get(f"/v2/{NAME}/blobs/{digest}")
            ranged = await client.get(f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=7-"})
    assert whole.status_code == 200 and whole.content == data
    assert ranged.status_code == 206 and ranged.content == data[7:]
    assert offered and not any(offered)
    assert sendfile_calls == []


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What was logged at WARNING or above. caplog keeps every record its handler saw, and a
    test that configured logging before this one (`cangku serve`'s INFO level) lets the access
    log's INFO lines of the pushes in: those are not what these tests are about."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_slow_disk_read_holds_up_no_other_request(
    port: int, blob: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.sendfile reads the file as it sends: a blob not in the page cache waits for the disk.
    Large files are sent by a thread of their own, so the event loop answers others meanwhile."""
    digest, data = blob
    real_sendfile: Callable[..., int] = os.sendfile
    reading = threading.Event()

    def slow_disk(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        if offset == 0:  # The first read of the blob waits for the "disk".
            reading.set()
            time.sleep(1.0)
        return real_sendfile(out_fd, in_fd, offset, count)

    def another_request() -> float:
        """Seconds for GET /v2/ sent while the blob's first read waits (not on this loop,
        which runs the server)."""
        assert reading.wait(10)
        started = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=10).status_code == 200
        return time.monotonic() - started

    monkeypatch.setattr(os, "sendfile", slow_disk)
    path = f"/v2/{NAME}/blobs/{digest}"
    pull = asyncio.to_thread(requests_on_one_connection, port, [("GET", path, {})])
    ((status, _, body),), seconds = await asyncio.gather(pull, asyncio.to_thread(another_request))
    assert status == 200 and body == data
    assert seconds < 0.5


async def test_a_client_that_stops_reading_holds_no_sending_thread(
    port: int, blob: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sending thread waits THREAD_SEND_WAIT seconds for room in the socket, then leaves
    the wait to the event loop; the pull goes on where it stopped once the client reads."""
    monkeypatch.setattr(server, "THREAD_SEND_WAIT", 0.1)
    digest, data = blob
    senders: list[str] = []
    real_sendfile: Callable[..., int] = os.sendfile

    def recording(*args: Any) -> int:
        senders.append(threading.current_thread().name)
        return real_sendfile(*args)

    monkeypatch.setattr(os, "sendfile", recording)

    def sending_threads() -> int:
        return sum(thread.name == "cangku-sendfile" for thread in threading.enumerate())

    with socket.socket() as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # Room for little.
        raw.settimeout(30)
        raw.connect(("127.0.0.1", port))
        raw.sendall(f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        # The client's reads run in threads: this event loop runs the server.
        received = bytearray(await asyncio.to_thread(raw.recv, 4096))
        assert received.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(1.0)  # The client reads nothing meanwhile.
        assert senders and set(senders) == {"cangku-sendfile"}
        assert sending_threads() == 0
        stalled = len(senders)
        length = len(data) + received.index(b"\r\n\r\n") + 4
        while len(received) < length:
            chunk = await asyncio.to_thread(raw.recv, 1 << 20)
            assert chunk, "the server closed the connection mid-blob"
            received += chunk
    assert received.endswith(data) and len(received) == length
    assert len(senders) > stalled  # The send went on after the wait.
    assert set(senders) == {"cangku-sendfile"}


async def test_stopping_the_server_mid_send_closes_a_stalled_connection(
    app: ASGIApp, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send's duplicate of the socket must not keep a connection open after the server
    gave up on it: cancelled (the graceful shutdown's time ran out), the send shuts it down."""
    monkeypatch.setattr(server, "THREAD_SEND_WAIT", 30.0)  # The thread is mid-wait.
    data = os.urandom(8 * 1024 * 1024)
    async for port in serve(app, data_dir, timeout_graceful_shutdown=0.2):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            digest = await push_blob(client, NAME, data)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", port))
        raw.sendall(f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert (await asyncio.to_thread(raw.recv, 4096)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.3)  # The send waits for room.
    # The server stopped (serve's end): the client finds the connection closed, not stalled.

    def drain() -> int:
        received = 0
        while chunk := raw.recv(1 << 20):
            received += len(chunk)
        return received

    with raw:
        try:
            received = await asyncio.to_thread(drain)
        except ConnectionResetError:
            received = -1
    assert received < len(data)


def _open_descriptors() -> dict[str, str]:
    found = {}
    for descriptor in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            found[descriptor] = os.readlink(f"/proc/self/fd/{descriptor}")
    return found


async def test_a_sending_thread_that_cannot_start_leaves_no_descriptor_and_no_hung_client(
    port: int, blob: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of threads: the duplicated socket and file are closed at once and the connection
    ends (before, both stayed open and the client waited after the response head)."""
    digest, _ = blob

    class Unstartable(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    # Only server.py's threads fail to start (the test's own still do).
    monkeypatch.setattr(
        server, "threading", types.SimpleNamespace(Thread=Unstartable, Lock=threading.Lock)
    )
    before = _open_descriptors()
    with socket.socket() as raw:
        raw.settimeout(10)
        raw.connect(("127.0.0.1", port))
        raw.sendall(f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: t\r\n\r\n".encode())

        def read_to_the_end() -> None:
            while raw.recv(1 << 20):
                pass

        await asyncio.to_thread(read_to_the_end)  # TimeoutError if the server left it open.
    await asyncio.sleep(0.2)
    # Sockets and blob files (the database's files open lazily meanwhile, for good).
    left = {
        fd: target
        for fd, target in _open_descriptors().items()
        if fd not in before and (target.startswith("socket:") or "/blobs/" in target)
    }
    assert not left, left


async def test_sending_threads_are_bounded_and_further_pulls_still_complete(
    port: int, blob: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow readers hold a sending thread each only up to MAX_SEND_THREADS; the others are
    sent from the event loop, and every pull completes."""
    monkeypatch.setattr(server, "MAX_SEND_THREADS", 2)
    digest, data = blob
    clients = []
    for _ in range(6):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(30)
        raw.connect(("127.0.0.1", port))
        raw.sendall(f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        clients.append(raw)

    def sending_threads() -> int:
        return sum(thread.name == "cangku-sendfile" for thread in threading.enumerate())

    def read_all(raw: socket.socket) -> bytes:
        received = bytearray()
        while not received.endswith(data):
            chunk = raw.recv(64 * 1024)
            assert chunk, "the server closed the connection mid-blob"
            received += chunk
            time.sleep(0.001)  # A slow reader, never stalled for THREAD_SEND_WAIT.
        return bytes(received)

    try:
        readers = [asyncio.create_task(asyncio.to_thread(read_all, raw)) for raw in clients]
        peak = 0
        while not all(reader.done() for reader in readers):
            peak = max(peak, sending_threads())
            await asyncio.sleep(0.01)
        for reader in readers:
            assert reader.result().endswith(data)
    finally:
        for raw in clients:
            raw.close()
    assert 1 <= peak <= 2
