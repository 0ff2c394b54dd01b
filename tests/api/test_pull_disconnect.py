"""A pull the client abandons stops reading the blob: uvicorn's `send` does nothing once the
client has gone (it raises nothing), so the response must notice the disconnect itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.types import Message

from cangku.app import create_app
from cangku.config import Settings
from cangku.content.digest import Digest
from cangku.distribution.blobs import SEND_CHUNK, BlobResponse
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.storage.base import BlobContent, LocalFile, Stream
from cangku.storage.s3 import S3Storage
from tests.api.test_zero_copy_server import serve as _serve
from tests.s3 import remove_everything, s3_settings

serve = contextlib.asynccontextmanager(_serve)
DIGEST = Digest.parse("sha256:" + "0" * 64)
CHUNKS = 64


class OneBlob:
    """A BlobService's `open` only, answering `content`."""

    def __init__(self, content: BlobContent) -> None:
        self.content = content

    async def open(self, digest: Digest, start: int, end: int) -> BlobContent:
        return self.content


class GoneClient:
    """The ASGI side of a client that reads `before` body messages and goes away: later
    sends do nothing, as uvicorn's after a disconnect; `receive` then answers
    http.disconnect."""

    def __init__(self, before: int) -> None:
        self.before = before
        self.bodies = 0
        self.gone = anyio.Event()

    async def receive(self) -> Message:
        if not hasattr(self, "asked"):
            self.asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            self.bodies += 1
            if self.bodies == self.before:
                self.gone.set()


def scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "extensions": {}, "headers": []}


async def test_a_stream_stops_when_the_client_goes_away() -> None:
    produced = 0
    closed = False

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal produced, closed
        try:
            for _ in range(CHUNKS):
                await anyio.sleep(0)  # A real read waits for its bytes.
                produced += 1
                yield b"x" * 1024
        finally:
            closed = True

    client = GoneClient(before=2)
    response = BlobResponse(OneBlob(Stream(chunks())), DIGEST, 0, CHUNKS * 1024, 200, {})  # type: ignore[arg-type]
    with anyio.fail_after(10):
        await response(scope(), client.receive, client.send)
    assert closed
    assert produced <= 4, f"{produced} of {CHUNKS} chunks read for a client that left after 2"


async def test_a_file_read_in_chunks_stops_when_the_client_goes_away() -> None:
    with tempfile.TemporaryFile() as file:
        file.truncate(CHUNKS * SEND_CHUNK // 8)  # 8 MiB of sparse file: 8 chunks.
        reads = 0
        real_read = file.read

        def read(size: int = -1) -> bytes:
            nonlocal reads
            reads += 1
            return real_read(size)

        file.read = read  # type: ignore[method-assign,assignment]
        # No zero-copy extension in the scope: the 1 MiB worker-thread reads.
        content = LocalFile(file, 0, CHUNKS * SEND_CHUNK // 8)
        client = GoneClient(before=1)
        response = BlobResponse(OneBlob(content), DIGEST, 0, content.length, 200, {})  # type: ignore[arg-type]
        with anyio.fail_after(10):
            await response(scope(), client.receive, client.send)
        assert reads <= 3, f"{reads} of 8 reads for a client that left after 1"


async def test_an_abandoned_s3_pull_stops_reading_from_s3(
    data_dir: Path, database_url: str, monkeypatch: Any
) -> None:
    """Through the real server: read 1 MiB of a 32 MiB blob, reset the connection."""
    storage = S3Storage.from_settings(s3_settings())
    read_bytes = 0
    real_get = S3Storage._get

    async def counting_get(
        self: S3Storage, key: str, start: int = 0, end: int | None = None
    ) -> Any:
        body = await real_get(self, key, start, end)
        if body is None:
            return body
        real_read = body.read

        def read(size: int | None = None) -> bytes:
            nonlocal read_bytes
            data: bytes = real_read(size)
            read_bytes += len(data)
            return data

        body.read = read
        return body

    monkeypatch.setattr(S3Storage, "_get", counting_get)
    metadata = MetadataStore.open(database_url)
    app = create_app(Settings(data=data_dir, auth={"open": True}), Registry(storage, metadata))
    try:
        data = os.urandom(32 * 1024 * 1024)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        async with serve(app, data_dir) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                answer = await c.post(f"/v2/a/b/blobs/uploads/?digest={digest}", content=data)
                assert answer.status_code == 201, answer.text
            read_bytes = 0
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /v2/a/b/blobs/{digest} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(1024 * 1024)
            writer.transport.abort()
            with anyio.fail_after(30):
                while any(t.name == "cangku-s3-read" for t in threading.enumerate()):
                    await asyncio.sleep(0.05)
        # Socket buffers and the pump's read-ahead hold a few MiB; never the whole blob.
        assert read_bytes < 16 * 1024 * 1024, f"{read_bytes >> 20} MiB read from S3"
    finally:
        await metadata.close()
        remove_everything(storage)
