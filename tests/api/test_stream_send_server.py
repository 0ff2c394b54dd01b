"""Streamed blob bodies (memory and S3 storage) through the real HTTP server: a thread of the
server's own reads the store's body and sends it to the client's socket (asgi.STREAM_SEND,
server._StreamSender; docs/performance.md, "S3 pulls: sending from the read thread (session
9)"). The S3 variant runs on the test store of tests/s3.py."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import logging
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from cangku import server
from cangku.app import create_app
from cangku.asgi import STREAM_SEND, BlockingSource
from cangku.config import Settings
from cangku.content.digest import Digest
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.storage.base import BlobStorage, Stream
from cangku.storage.memory import MemoryStorage
from tests.api.helpers import push_blob
from tests.api.test_zero_copy_server import requests_on_one_connection, short_pull
from tests.api.test_zero_copy_server import serve as _serve
from tests.s3 import s3_storage
from tests.tls import make_tls_files

serve = contextlib.asynccontextmanager(_serve)
NAME = "jimo/streams"
THREAD = "cangku-stream-send"


@pytest.fixture(params=["memory", "s3"])
def storage(request: pytest.FixtureRequest) -> Iterator[BlobStorage]:
    if request.param == "memory":
        yield MemoryStorage()
        return
    with s3_storage() as s3:
        yield s3


@pytest.fixture
async def port(storage: BlobStorage, data_dir: Path, database_url: str) -> AsyncIterator[int]:
    metadata = MetadataStore.open(database_url)
    app = create_app(Settings(data=data_dir, auth={"open": True}), Registry(storage, metadata))
    try:
        async with serve(app, data_dir) as bound:
            yield bound
    finally:
        await metadata.close()


@pytest.fixture
def relayed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes each threaded stream send (`server._relay`) sent."""
    sends: list[int] = []
    real_relay = server._relay

    def counting(source: BlockingSource, out: socket.socket, count: int, stop: Any) -> int:
        sent = real_relay(source, out, count, stop)
        sends.append(sent)
        return sent

    monkeypatch.setattr(server, "_relay", counting)
    return sends


async def push(port: int, data: bytes) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        return await push_blob(client, NAME, data)


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def test_whole_and_ranged_pulls_are_sent_from_the_read_thread(
    port: int, relayed: list[int]
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # Several pieces, an odd tail.
    digest = await push(port, data)
    path = f"/v2/{NAME}/blobs/{digest}"

    status, headers, body = await asyncio.to_thread(get, port, path, {})
    assert status == 200 and body == data
    assert headers["content-length"] == str(len(data))
    start, end = 1000, 2 * 1024 * 1024 + 5000  # Inclusive end: over a MiB.
    status, headers, body = await asyncio.to_thread(
        get, port, path, {"Range": f"bytes={start}-{end}"}
    )
    assert status == 206 and body == data[start : end + 1]
    assert headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    # Small ranges go through the event loop's writes, as before.
    status, _, body = await asyncio.to_thread(get, port, path, {"Range": "bytes=10-99"})
    assert status == 206 and body == data[10:100]
    assert relayed == [len(data), end + 1 - start]
    # One keep-alive connection carries streamed responses one after another.
    answers = await asyncio.to_thread(
        requests_on_one_connection,
        port,
        [("GET", path, {}), ("GET", path, {"Range": "bytes=5-1048580"}), ("GET", path, {})],
    )
    assert [(status, body) for status, _, body in answers] == [
        (200, data),
        (206, data[5:1048581]),
        (200, data),
    ]


async def test_a_client_leaving_mid_body_stops_the_thread_and_closes_the_store_body(
    port: int, storage: BlobStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(48 * 1024 * 1024)  # Far more than the socket buffers between the two.
    digest = await push(port, data)
    closed = threading.Event()
    read = 0
    real_open = type(storage).open

    async def watched_open(self: BlobStorage, digest: Digest, start: int, end: int) -> Any:
        content = await real_open(self, digest, start, end)
        assert isinstance(content, Stream) and content.source is not None
        source = content.source

        class Watched:
            def read(self, size: int = -1) -> bytes:
                nonlocal read
                piece = source.read(size)
                read += len(piece)
                return piece

            def close(self) -> None:
                source.close()
                closed.set()

        return Stream(content.chunks, source=Watched(), length=content.length)

    monkeypatch.setattr(type(storage), "open", watched_open)

    def leave_early() -> None:
        with socket.socket() as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.settimeout(30)
            raw.connect(("127.0.0.1", port))
            raw.sendall(f"GET /v2/{NAME}/blobs/{digest} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    await asyncio.to_thread(leave_early)
    with anyio.fail_after(30):
        while not closed.is_set() or any(t.name == THREAD for t in threading.enumerate()):
            await asyncio.sleep(0.02)
    assert read < 16 * 1024 * 1024, f"{read >> 20} MiB read for a client that left"
    # The server still serves the next pull in full.
    status, _, body = await asyncio.to_thread(get, port, f"/v2/{NAME}/blobs/{digest}", {})
    assert status == 200 and body == data


class Failing(io.RawIOBase):
    """A store body that gives `good` bytes, then raises (or, `error` None, ends)."""

    def __init__(self, good: int, error: Exception | None) -> None:
        self.left = good
        self.error = error
        self.shut = False

    def read(self, size: int = -1) -> bytes:
        if self.left == 0:
            if self.error is not None:
                raise self.error
            return b""
        piece = min(self.left, size, 256 * 1024)
        self.left -= piece
        return b"x" * piece

    def close(self) -> None:
        self.shut = True


@pytest.mark.parametrize("error", [OSError("the store's connection broke"), None])
async def test_a_store_body_failing_or_ending_mid_body_aborts_the_response(
    port: int,
    storage: BlobStorage,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception | None,
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    digest = await push(port, data)
    body = Failing(1024 * 1024 + 5, error)

    async def failing_open(self: BlobStorage, digest: Digest, start: int, end: int) -> Any:
        async def never() -> AsyncIterator[bytes]:
            raise AssertionError("the server reads the source, not the chunks")
            yield b""

        return Stream(never(), source=body, length=end - start)

    monkeypatch.setattr(type(storage), "open", failing_open)
    with caplog.at_level(logging.WARNING):
        received = await asyncio.to_thread(short_pull, port, f"/v2/{NAME}/blobs/{digest}")
    # The client sees a broken transfer, never a short complete one.
    assert received == 1024 * 1024 + 5
    assert body.shut
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if error is None:
        assert any("ended 3145723 bytes early" in message for message in messages), messages
    else:
        raised = [r.exc_info[1] for r in caplog.records if r.exc_info]
        assert error in raised, messages


async def test_over_tls_a_streamed_blob_goes_through_the_event_loop(
    storage: BlobStorage,
    data_dir: Path,
    database_url: str,
    tmp_path: Path,
    relayed: list[int],
) -> None:
    """TLS encrypts in the transport: the server offers no stream sending there."""
    tls = make_tls_files(tmp_path / "tls", [])
    metadata = MetadataStore.open(database_url)
    app = create_app(Settings(data=data_dir, auth={"open": True}), Registry(storage, metadata))
    offered: list[bool] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        offered.append(STREAM_SEND in scope.get("extensions", {}))
        await app(scope, receive, send)

    data = os.urandom(2 * 1024 * 1024 + 5)
    try:
        async with serve(recording, data_dir, tls) as port:
            base_url = f"https://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base_url, verify=tls.context()) as client:
                digest = await push_blob(client, NAME, data)
                whole = await client.get(f"/v2/{NAME}/blobs/{digest}")
                ranged = await client.get(
                    f"/v2/{NAME}/blobs/{digest}", headers={"Range": "bytes=7-"}
                )
    finally:
        await metadata.close()
    assert whole.status_code == 200 and whole.content == data
    assert ranged.status_code == 206 and ranged.content == data[7:]
    assert offered and not any(offered)
    assert relayed == []


async def test_a_streamed_head_sends_the_head_only_and_ends_the_response(
    tmp_path: Path, relayed: list[int]
) -> None:
    bodies: list[Failing] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = Failing(2 * 1024 * 1024, None)
        bodies.append(body)
        headers = [(b"content-length", str(body.left).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": STREAM_SEND, "source": body, "count": body.left})

    async with serve(app, tmp_path / "data") as port:
        # The second HEAD is answered only if the first one's response ended.
        answers = await asyncio.to_thread(
            requests_on_one_connection, port, [("HEAD", "/", {}), ("HEAD", "/", {})]
        )
    assert [(status, body) for status, _, body in answers] == [(200, b""), (200, b"")]
    assert answers[0][1]["content-length"] == str(2 * 1024 * 1024)
    assert [(body.shut, body.left) for body in bodies] == [(True, 2 * 1024 * 1024)] * 2
    assert relayed == []


async def test_the_access_log_counts_the_bytes_of_a_streamed_pull(
    port: int, relayed: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    digest = await push(port, data)
    with caplog.at_level(logging.INFO, logger="cangku.access"):
        status, _, body = await asyncio.to_thread(get, port, f"/v2/{NAME}/blobs/{digest}", {})
        # The line is written once the sending thread has handed the response back to the
        # event loop, which may be just after the client has the last byte.
        for _ in range(100):
            lines = [r.getMessage() for r in caplog.records if r.name == "cangku.access"]
            if lines:
                break
            await asyncio.sleep(0.02)
    assert status == 200 and body == data and relayed == [len(data)]
    (line,) = lines
    assert line.startswith(f"GET /v2/{NAME}/blobs/{digest} 200 {len(data)} "), line
