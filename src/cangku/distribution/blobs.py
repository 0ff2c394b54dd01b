"""`/v2/<name>/blobs/<digest>`: HEAD, GET (with Range) and DELETE."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import BinaryIO

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cangku.asgi import ZERO_COPY_SEND
from cangku.content.digest import Digest
from cangku.content.errors import RangeInvalid, RegistryError
from cangku.distribution.http import API_VERSION_RAW, request_context, warning
from cangku.http_errors import render_error
from cangku.registry import Registry
from cangku.registry.protocols import BlobService
from cangku.storage.base import LocalFile, Redirect

BYTE_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")
SEND_CHUNK = 1024 * 1024


async def head_blob(request: Request, registry: Registry, name: str, digest: str) -> Response:
    parsed, size = await registry.repository(name).blobs.stat(digest)
    return Response(b"", headers=_blob_headers(parsed, size))


async def get_blob(request: Request, registry: Registry, name: str, digest: str) -> Response:
    blobs = registry.repository(name).blobs
    parsed, size = await blobs.stat(digest)
    headers = _blob_headers(parsed, size)
    start, end = 0, size
    status = 200
    requested = request.headers.get("range")
    byte_range = _requested_range(requested, size)
    if requested is not None and byte_range is None:
        headers["Warning"] = warning("Range ignored: only one bytes=start-end range is served")
    if byte_range is not None:
        start, end = byte_range
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
    return BlobResponse(blobs, parsed, start, end, status, headers)


async def delete_blob(request: Request, registry: Registry, name: str, digest: str) -> Response:
    await registry.delete_blob(name, digest, request_context(request))
    return Response(b"", status_code=202, headers={"Content-Length": "0"})


def _blob_headers(digest: Digest, size: int) -> dict[str, str]:
    return {
        "Content-Length": str(size),
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(digest),
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
        # Content-addressed: the bytes behind a digest never change.
        "Cache-Control": "max-age=31536000",
    }


def _requested_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as [start, end); None to send everything (RFC 9110 §14.2)."""
    if header is None:
        return None
    match = BYTE_RANGE.fullmatch(header.strip())
    if not match or (match[1] == "" and match[2] == ""):
        return None  # Malformed or several ranges: ignore the header, send it all.
    if match[1] == "":
        suffix = int(match[2])
        if suffix == 0:
            raise RangeInvalid("range not satisfiable", size)
        return max(size - suffix, 0), size
    start = int(match[1])
    end = size if match[2] == "" else min(int(match[2]) + 1, size)
    if start >= size or end <= start:
        raise RangeInvalid("range not satisfiable", size)
    return start, end


class BlobResponse(Response):
    """Sends a blob range as the repository's blobs offer it (`BlobService.open`): a local
    file zero-copy where the server can (cangku/server.py) or in 1 MiB reads in a worker
    thread, a 307 redirect to where the client fetches it itself, or a stream of chunks.
    A stream that fails mid-way (a mirror's upstream sent bytes that do not match the
    digest) aborts the response: the exception reaches the server, which drops the
    connection, so the client sees a short body and never a complete wrong one."""

    def __init__(
        self,
        blobs: BlobService,
        digest: Digest,
        start: int,
        end: int,
        status: int,
        headers: dict[str, str],
    ) -> None:
        super().__init__(status_code=status, headers=headers)
        self.blobs = blobs
        self.digest = digest
        self.start = start
        self.end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            await self._send_start(send)
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            # Opened before answering: once open, the bytes stay readable even if garbage
            # collection deletes the (then unreferenced) blob meanwhile.
            content = await self.blobs.open(self.digest, self.start, self.end)
        except RegistryError as error:
            # Nothing sent yet: a blob gone meanwhile (BLOB_UNKNOWN), or a mirror's upstream
            # failing (TOOMANYREQUESTS, UNAVAILABLE) is still a proper error response, with
            # the router's API version header, which this response carries.
            answer = render_error(error)
            answer.raw_headers.append(API_VERSION_RAW)
            await answer(scope, receive, send)
            return
        if isinstance(content, Redirect):
            await _redirect(content.url, scope, receive, send)
        elif isinstance(content, LocalFile):
            with content.file:
                await self._send_start(send)
                if ZERO_COPY_SEND in scope.get("extensions", {}):
                    await send(
                        {
                            "type": ZERO_COPY_SEND,
                            "file": content.file,
                            "offset": content.offset,
                            "count": content.length,
                        }
                    )
                else:
                    file, start, end = content.file, content.offset, content.offset + content.length
                    await _until_disconnect(receive, lambda: _send_file(file, start, end, send))
        else:
            try:
                await self._send_start(send)
                await _until_disconnect(receive, lambda: _send_chunks(content.chunks, send))
            finally:
                await content.aclose()

    async def _send_start(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )


async def _until_disconnect(receive: Receive, sending: Callable[[], Awaitable[None]]) -> None:
    """Run `sending` (a response body's sends) until it ends or the client goes away.

    Why: once the client is gone, uvicorn's `send` returns without doing anything (ASGI
    2.3; it raises nothing), so a loop that only sends would go on reading the whole blob
    (from S3, a mirror's upstream, a file) for nobody. The server's `receive` answers
    `http.disconnect` when the connection is lost (ASGI HTTP spec, "Disconnected - receive
    event"): that cancels the sending, and the caller closes what it read from."""
    failure: Exception | None = None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            # A GET's request body (empty as a rule) is read and dropped first.
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            await sending()
        except Exception as error:
            # Raised as itself below, not inside the task group's ExceptionGroup: a stream
            # failing mid-way (a mirror's wrong bytes) must reach the server as it was.
            failure = error
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _send_chunks(chunks: AsyncIterator[bytes], send: Send) -> None:
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _redirect(url: str, scope: Scope, receive: Receive, send: Send) -> None:
    """307 keeps the method (RFC 9110 §15.4.8); clients send their Range header again."""
    response = Response(
        b"",
        status_code=307,
        headers={"Location": url, "Content-Length": "0", "Cache-Control": "no-store"},
    )
    response.raw_headers.append(API_VERSION_RAW)  # As the router adds to every /v2 answer.
    await response(scope, receive, send)


async def _send_file(file: BinaryIO, start: int, end: int, send: Send) -> None:
    file.seek(start)
    remaining = end - start
    while remaining > 0:
        chunk = await anyio.to_thread.run_sync(file.read, min(SEND_CHUNK, remaining))
        if not chunk:
            break  # Shorter than recorded: the client sees a short body, not a hang.
        remaining -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
