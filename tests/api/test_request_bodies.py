"""Request bodies through the real server's receive path (cangku/server.py): read with
`recv_into` into one buffer per connection, handed to the application in batches of
`BODY_BATCH` bytes. Bodies of every shape must arrive whole and in order: tiny reads, chunked
transfer-encoding split anywhere, `Expect: 100-continue`, over TLS; a body cut short keeps
nothing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from cangku import server
from cangku.asgi import ReceivedBody
from cangku.server import BODY_BATCH, DIRECT_BODY_MIN, MIN_READ, ZeroCopyCycle
from tests.api.helpers import sha256
from tests.api.test_slow_clients import BOUND, httpx_client, serving
from tests.api.test_zero_copy_server import serve
from tests.tls import make_tls_files

NAME = "jimo/bodies"


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Each write its own segment: the server sees the pieces as separate reads.
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body (100 Continue lines skipped)."""
    while True:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        if status != 100:
            break
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def start_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    writer.write(f"POST /v2/{NAME}/blobs/uploads/ HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    status, headers, _ = await read_response(reader)
    assert status == 202
    return headers["location"]


def chunked(data: bytes, sizes: list[int]) -> bytes:
    """`data` in transfer-encoding chunks of the given sizes (the rest in one), with a chunk
    extension and a trailer, as RFC 9112 section 7.1 allows."""
    encoded, offset = b"", 0
    for size in [*sizes, len(data)]:
        piece = data[offset : offset + size]
        if piece:
            encoded += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        offset += len(piece)
    return encoded + b"0\r\nX-Trailer: t\r\n\r\n"


async def test_a_body_sent_a_byte_at_a_time_arrives_whole(app: ASGIApp, data_dir: Path) -> None:
    data = os.urandom(3000)
    async with serving(app, data_dir) as port:
        reader, writer = await connect(port)
        writer.write(
            f"POST /v2/{NAME}/blobs/uploads/?digest={sha256(data)} HTTP/1.1\r\n"
            f"Host: t\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        )
        for index in range(len(data)):
            writer.write(data[index : index + 1])
            await writer.drain()
            if index % 100 == 0:
                await asyncio.sleep(0)  # Let the server read between some of them.
        status, headers, _ = await read_response(reader)
        writer.close()
    assert status == 201
    assert headers["docker-content-digest"] == sha256(data)


async def test_a_chunked_body_split_at_every_byte_boundary_arrives_whole(
    app: ASGIApp, data_dir: Path
) -> None:
    piece = os.urandom(40)
    encoded = chunked(piece, [1, 16, 3])
    async with serving(app, data_dir) as port:
        reader, writer = await connect(port)
        location = await start_upload(reader, writer)
        # One PATCH per split point on one keep-alive connection: the framing, a size line,
        # an extension, the CRLFs, the trailer, each cut between two reads.
        for split in range(1, len(encoded)):
            head = f"PATCH {location} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            writer.write(head.encode() + encoded[:split])
            await writer.drain()
            await asyncio.sleep(0.002)
            writer.write(encoded[split:])
            status, headers, _ = await read_response(reader)
            assert status == 202, split
            assert headers["range"] == f"0-{split * len(piece) - 1}"
            location = headers["location"]
        digest = sha256(piece * (len(encoded) - 1))
        writer.write(
            f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: t\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        status, _, _ = await read_response(reader)
        writer.close()
    assert status == 201


async def test_expect_100_continue_is_answered_before_the_body_is_sent(
    app: ASGIApp, data_dir: Path
) -> None:
    data = os.urandom(3 * BODY_BATCH + 17)
    async with serving(app, data_dir) as port:
        reader, writer = await connect(port)
        location = await start_upload(reader, writer)
        writer.write(
            f"PATCH {location} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(data)
        status, headers, _ = await read_response(reader)
        writer.close()
    assert status == 202
    assert headers["range"] == f"0-{len(data) - 1}"


async def test_a_body_shorter_than_its_content_length_keeps_nothing(
    app: ASGIApp, data_dir: Path
) -> None:
    """The client promises more than it sends and hangs up mid-body (here mid-batch and
    after whole batches): the chunk is not kept, the upload stays where it was."""
    async with serving(app, data_dir) as port:
        async with httpx_client(port) as client:
            started = await client.post(f"/v2/{NAME}/blobs/uploads/")
            location = started.headers["location"]
            first = await client.patch(location, content=b"a" * 10)
            assert first.status_code == 202
            location = first.headers["location"]
        for sent in (1000, 2 * BODY_BATCH + 5):
            _, writer = await connect(port)
            writer.write(
                f"PATCH {location} HTTP/1.1\r\nHost: t\r\n"
                f"Content-Length: {sent + 100}\r\n\r\n".encode()
                + os.urandom(sent)
            )
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.close()
            await writer.wait_closed()
        async with httpx_client(port) as client:
            for _ in range(50):  # The server notices the disconnect in its own time.
                status = await client.get(location)
                if status.headers.get("range") == "0-9":
                    break
                await asyncio.sleep(0.05)
    assert status.status_code == 204
    assert status.headers["range"] == "0-9"


async def test_bytes_past_the_content_length_are_the_next_request_not_the_upload(
    app: ASGIApp, data_dir: Path
) -> None:
    """A request pipelined right behind a body (in the same reads): the upload gets exactly
    the promised bytes, and the next request is answered after it."""
    data = os.urandom(BODY_BATCH + 3)
    async with serving(app, data_dir) as port:
        reader, writer = await connect(port)
        location = await start_upload(reader, writer)
        writer.write(
            f"PATCH {location} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
            + f"GET {location} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        )
        patched, patched_headers, _ = await read_response(reader)
        status, status_headers, _ = await read_response(reader)
        writer.close()
    assert (patched, status) == (202, 204)
    assert patched_headers["range"] == status_headers["range"] == f"0-{len(data) - 1}"


async def test_the_application_receives_a_streamed_body_in_whole_batches(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small reads of a chunked body are gathered: one ASGI message per BODY_BATCH bytes
    (the last shorter), and while the application does not take a batch, no more than a
    batch and a read wait."""
    received: list[int] = []
    kinds: list[type] = []
    waiting: list[int] = []
    copy_into_batches = ZeroCopyCycle.copy_into_batches

    def recording_copy(cycle: ZeroCopyCycle, piece: bytes, left: int | None) -> bool:
        full = copy_into_batches(cycle, piece, left)
        waiting.append(cycle.body_pending)
        return full

    monkeypatch.setattr(ZeroCopyCycle, "copy_into_batches", recording_copy)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.3)  # Slow to start: the body piles up meanwhile.
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
            received.append(len(message.get("body", b"")))
            kinds.append(type(message.get("body", b"")))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    data = os.urandom(4 * BODY_BATCH + 12345)
    async with serving(app, data_dir) as port:
        reader, writer = await connect(port)
        writer.write(
            b"PUT /anything HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(data, [16 * 1024] * (len(data) // (16 * 1024)))
        )
        await writer.drain()
        status, _, _ = await read_response(reader)
        writer.close()
    assert status == 204
    assert sum(received) == len(data)
    assert all(size >= BODY_BATCH for size in received[:-1]), received
    assert len(received) <= len(data) // BODY_BATCH + 1
    assert max(waiting) < BODY_BATCH + MIN_READ
    # Copied into pooled batches (a join took a fresh buffer each time); the last, partial
    # one copied out of its batch.
    assert kinds == [ReceivedBody] * (len(kinds) - 1) + [bytes]


async def test_over_tls_bodies_arrive_whole_through_the_same_path(
    app: ASGIApp, tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path / "tls", [])
    data = os.urandom(3 * BODY_BATCH + 7)
    async for port in serve(app, tmp_path / "data", tls):
        base_url = f"https://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, verify=tls.context()) as client:
            started = await client.post(f"/v2/{NAME}/blobs/uploads/")

            async def pieces() -> AsyncIterator[bytes]:
                for offset in range(0, len(data), 10_000):
                    yield data[offset : offset + 10_000]

            patched = await client.patch(started.headers["location"], content=pieces())
            assert patched.status_code == 202
            finished = await client.put(
                patched.headers["location"], params={"digest": sha256(data)}
            )
            pulled = await client.get(f"/v2/{NAME}/blobs/{sha256(data)}")
    assert finished.status_code == 201
    assert pulled.content == data


def test_the_server_protocol_reads_into_its_own_buffer() -> None:
    # asyncio's transports call get_buffer/buffer_updated (recv_into) for a BufferedProtocol.
    assert issubclass(server.ZeroCopyHttpProtocol, asyncio.BufferedProtocol)


class Recorder:
    """An ASGI app that answers `/early` at once, without reading the body, and anything else
    with the sha256 of the body it read; it notes each body message it received."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, type, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/early":
            headers = [(b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        hasher, more = hashlib.sha256(), True
        while more:
            message = await receive()
            assert message["type"] == "http.request"
            body = message.get("body", b"")
            self.messages.append((scope["path"], type(body), len(body)))
            hasher.update(body)
            more = message.get("more_body", False)
        digest = hasher.hexdigest().encode()
        headers = [(b"content-length", str(len(digest)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": digest})


def request(path: str, body: bytes) -> bytes:
    return f"PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def test_a_content_length_body_is_read_straight_into_the_batches_the_application_gets(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its headers, a large Content-Length body never goes through the parser: each
    read lands in the batch that the application then receives as it is (ReceivedBody)."""
    through_parser: list[int] = []
    on_body = server.ZeroCopyHttpProtocol.on_body

    def counting_on_body(protocol: server.ZeroCopyHttpProtocol, body: bytes) -> None:
        through_parser.append(len(body))
        on_body(protocol, body)

    monkeypatch.setattr(server.ZeroCopyHttpProtocol, "on_body", counting_on_body)
    recorder = Recorder()
    data = os.urandom(3 * BODY_BATCH + 17)
    async with serving(recorder, data_dir) as port:
        reader, writer = await connect(port)
        message = request("/upload", data)
        writer.write(message[: -len(data) + 1000])  # The headers and the body's first bytes.
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(message[-len(data) + 1000 :])
        status, _, digest = await read_response(reader)
        writer.close()
    assert (status, digest.decode()) == (200, sha256(data).removeprefix("sha256:"))
    assert sum(through_parser) <= 1000
    assert [kind for _, kind, _ in recorder.messages] == [ReceivedBody] * 4
    assert [size for _, _, size in recorder.messages] == [BODY_BATCH] * 3 + [17]


async def test_direct_bodies_pipelined_with_early_answers_and_small_bodies(
    data_dir: Path,
) -> None:
    """On one keep-alive connection, in one write: a large body answered before it was read
    (its bytes are dropped), a large body read, a body of DIRECT_BODY_MIN bytes (likely whole
    in the headers' read), a small one and a chunked one: each answered in turn, rightly."""
    recorder = Recorder()
    large, second = os.urandom(2 * BODY_BATCH + 5), os.urandom(BODY_BATCH + 1)
    edge, small, encoded = os.urandom(DIRECT_BODY_MIN), b"small", os.urandom(70_000)
    async with serving(recorder, data_dir) as port:
        reader, writer = await connect(port)
        writer.write(
            request("/early", large)
            + request("/second", second)
            + request("/edge", edge)
            + request("/small", small)
            + b"PUT /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(encoded, [1000, 30_000])
            + request("/last", large)
        )
        await writer.drain()
        answers = [await read_response(reader) for _ in range(6)]
        writer.close()
    assert [status for status, _, _ in answers] == [413, 200, 200, 200, 200, 200]
    assert [body.decode() for _, _, body in answers[1:]] == [
        sha256(body).removeprefix("sha256:") for body in (second, edge, small, encoded, large)
    ]
    assert "/early" not in {path for path, _, _ in recorder.messages}


async def test_over_tls_a_content_length_body_is_read_straight_into_batches_too(
    tmp_path: Path,
) -> None:
    tls = make_tls_files(tmp_path / "tls", [])
    recorder = Recorder()
    data = os.urandom(2 * BODY_BATCH + 3)
    async for port in serve(recorder, tmp_path / "data", tls):
        base_url = f"https://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, verify=tls.context()) as client:
            answer = await client.put("/upload", content=data)
    assert answer.text == sha256(data).removeprefix("sha256:")
    assert [kind for _, kind, _ in recorder.messages] == [ReceivedBody] * 3


def test_a_pooled_batch_is_reused_only_once_nobody_holds_it() -> None:
    pool = server.BatchPool()
    first = pool.take(BODY_BATCH)
    second = pool.take(BODY_BATCH)
    assert second is not first  # `first` is still held here.
    view = memoryview(second)
    del first
    third = pool.take(BODY_BATCH)
    assert third is not second  # A memoryview of `second` can still read it.
    view.release()
    del view, second
    reused = pool.take(BODY_BATCH)
    assert reused is not third
    assert any(batch is reused for batch in pool.batches[1:])
    last = pool.take(BODY_BATCH - 1)  # The last of a body: its own.
    assert not any(batch is last for batch in pool.batches)


async def test_batches_the_application_keeps_are_never_read_into_again(data_dir: Path) -> None:
    """Batches come from a pool (BatchPool): one the application still holds after its
    request keeps its bytes through the requests after it."""
    kept: list[bytes] = []

    async def keeping_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            kept.append(message["body"])
            more = message.get("more_body", False)
        headers = [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    bodies = [os.urandom(3 * BODY_BATCH) for _ in range(8)]
    async with serving(keeping_app, data_dir) as port:
        reader, writer = await connect(port)
        for body in bodies:
            writer.write(request("/keep", body))
            status, _, _ = await read_response(reader)
            assert status == 200
        writer.close()
    assert b"".join(kept) == b"".join(bodies)
    assert all(isinstance(body, ReceivedBody) for body in kept)


async def read_sizes_of_a_paced_stream(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, piece: int, pause: float
) -> list[int]:
    """Send `data` as a chunked body of `piece`-byte chunks, one every `pause` seconds (at
    most: sleeps run long, never short), check that the application got it whole, and
    return the size of each read the server made (the request's head first)."""
    reads: list[int] = []
    buffer_updated = server.ZeroCopyHttpProtocol.buffer_updated

    def counting(protocol: server.ZeroCopyHttpProtocol, nbytes: int) -> None:
        reads.append(nbytes)
        buffer_updated(protocol, nbytes)

    monkeypatch.setattr(server.ZeroCopyHttpProtocol, "buffer_updated", counting)
    async with serving(Recorder(), data_dir) as port:
        reader, writer = await connect(port)
        writer.write(b"PUT /slow HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for offset in range(0, len(data), piece):
            writer.write(b"%x\r\n" % piece + data[offset : offset + piece] + b"\r\n")
            await writer.drain()
            await asyncio.sleep(pause)
        writer.write(b"0\r\n\r\n")
        status, _, digest = await read_response(reader)
        writer.close()
    assert (status, digest.decode()) == (200, sha256(data).removeprefix("sha256:"))
    return reads


async def test_a_slow_stream_is_read_in_fewer_larger_reads(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its first batch, a body arriving in small writes is read after COALESCE_DELAY
    pauses, many writes at a time (one wake-up each), and still arrives whole."""
    piece, pieces = 8 * 1024, 3 * BODY_BATCH // (8 * 1024)
    # ~16 MB/s: slower than the server reads.
    reads = await read_sizes_of_a_paced_stream(
        data_dir, monkeypatch, os.urandom(piece * pieces), piece, 0.0005
    )
    # The first batch as it comes (one read per write, about); the rest in fewer reads.
    assert len(reads) < pieces * 2 // 3, (len(reads), pieces)


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 1048576\r\n\r\nx",
        b"Transfer-Encoding: chunked\r\n\r\n100000\r\nx",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_promised_large_holds_what_came_not_a_batch(
    app: ASGIApp, data_dir: Path, head: bytes
) -> None:
    """A client that promises a 1 MiB body, sends a byte, is answered (404: no such upload)
    and sends another byte holds about what it sent: a batch is taken only once STAGED_MAX
    bytes of it came, and dropped with the answer (taken at the first byte, 40 such
    connections held 40 MiB)."""
    connections = 40
    async with serving(app, data_dir, per_address=0) as port:
        reader, writer = await connect(port)  # What the first request allocates once.
        writer.write(b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        writer.close()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            opened = [await connect(port) for _ in range(connections)]
            for _, writer in opened:
                writer.write(
                    b"PATCH /v2/jimo/bodies/blobs/uploads/0123456789abcdef0123456789abcdef"
                    b" HTTP/1.1\r\nHost: t\r\n" + head
                )
            statuses = {(await read_response(reader))[0] for reader, _ in opened}
            for _, writer in opened:
                writer.write(b"y")
                await writer.drain()
            await asyncio.sleep(0.3)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for _, writer in opened:
            writer.close()
    assert statuses == {404}
    # Each connection's protocol, parser, cycle and buffers: ~14 KiB (a batch each: 0.6-1 MiB).
    assert held < connections * 32 * 1024, f"{held / connections:.0f} bytes each"


async def test_a_read_cut_short_by_the_room_it_was_given_never_pauses_reading(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch of a direct body starts with a read of at most STAGED_MAX bytes: that read
    is small because the server asked for little, not because the client is slow, so it must
    not pause reading for COALESCE_DELAY (5 ms per MiB: a fast push fell from ~600 to ~150
    MiB/s). (FAST_SENDER raised out of reach: this client is fast, and would never be paused
    whatever its reads.)"""
    monkeypatch.setattr(server, "FAST_SENDER", 10**15)
    offered: list[int] = []
    paused_after_full_reads: list[int] = []
    get_buffer = server.ZeroCopyHttpProtocol.get_buffer
    buffer_updated = server.ZeroCopyHttpProtocol.buffer_updated

    def recording_get_buffer(protocol: server.ZeroCopyHttpProtocol, hint: int) -> memoryview:
        view = get_buffer(protocol, hint)
        offered.append(len(view))
        return view

    def recording_buffer_updated(protocol: server.ZeroCopyHttpProtocol, nbytes: int) -> None:
        buffer_updated(protocol, nbytes)
        # Reading is paused during a coalescing delay: a timer now is this read's.
        if protocol._coalescing is not None and nbytes == offered[-1]:
            paused_after_full_reads.append(nbytes)

    monkeypatch.setattr(server.ZeroCopyHttpProtocol, "get_buffer", recording_get_buffer)
    monkeypatch.setattr(server.ZeroCopyHttpProtocol, "buffer_updated", recording_buffer_updated)
    data = os.urandom(8 * BODY_BATCH)
    async with serving(Recorder(), data_dir) as port:
        reader, writer = await connect(port)
        writer.write(request("/upload", data))
        status, _, digest = await read_response(reader)
        writer.close()
    assert (status, digest.decode()) == (200, sha256(data).removeprefix("sha256:"))
    assert server.STAGED_MAX in offered  # Each batch's start was staged.
    assert paused_after_full_reads == []


# Calls (Python and C, as `sys.setprofile` sees them) that one body piece of a chunked stream
# may cost in `on_body`, the piece fitting in the batch being filled. dockerd sends 32 KiB
# chunks, ~30 per MB (docs/performance.md, "docker push: dockerd's stream (session 9)").
CALLS_PER_PIECE = 5  # 8 before the fast path in copy_into_batches.


async def test_a_chunked_stream_costs_few_calls_per_piece(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A piece that fits in the batch being filled is copied into it without a view, a
    slice object's call or a helper per piece; the body still arrives whole."""
    calls: list[int] = []
    on_body = server.ZeroCopyHttpProtocol.on_body

    def counting(protocol: server.ZeroCopyHttpProtocol, body: bytes) -> None:
        count = 0

        def profile(frame: object, event: str, arg: object) -> None:
            nonlocal count
            if event in ("call", "c_call"):
                count += 1

        sys.setprofile(profile)
        try:
            on_body(protocol, body)
        finally:
            sys.setprofile(None)
        calls.append(count - 1)  # Less the setprofile(None) call itself.

    monkeypatch.setattr(server.ZeroCopyHttpProtocol, "on_body", counting)
    recorder = Recorder()
    piece = 32 * 1024
    data = os.urandom(4 * BODY_BATCH)
    async with serving(recorder, data_dir) as port:
        reader, writer = await connect(port)
        writer.write(
            b"PUT /stream HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(data, [piece] * (len(data) // piece))
        )
        await writer.drain()
        status, _, digest = await read_response(reader)
        writer.close()
    assert (status, digest.decode()) == (200, sha256(data).removeprefix("sha256:"))
    # Pieces that open or fill a batch take the longer way: one in 32 here.
    typical = sorted(calls)[len(calls) // 2]
    assert typical <= CALLS_PER_PIECE, sorted(calls)


async def test_a_stream_as_slow_as_dockerd_is_read_in_reads_of_a_hundred_kilobytes_and_more(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dockerd writes a layer in 32 KiB chunks at the pace its gzip makes them (6-16 MB/s
    per layer on a busy machine): past a body's first batch, each read waits COALESCE_DELAY
    for the next chunks, so that reads take 128 KiB or more, not one or two chunks."""
    # 32 KiB chunks at ~16 MB/s at most.
    reads = await read_sizes_of_a_paced_stream(
        data_dir, monkeypatch, os.urandom(4 * BODY_BATCH), 32 * 1024, 0.002
    )
    seen, later = 0, []
    for nbytes in reads[1:]:  # (The first read is the request's head.)
        if seen >= BODY_BATCH:
            later.append(nbytes)
        seen += nbytes
    assert later
    # With fixed 5 ms pauses, 65-80 KiB on average.
    assert sum(later) / len(later) >= 128 * 1024, str(later)


async def send_body_from_another_process(
    port: int,
    size: int,
    piece: int,
    *,
    pause: float,
    before_body: float = 0.0,
    chunked: bool = True,
) -> None:
    """PUT `size` bytes of "x" from another process (as a real client is), as a chunked
    body or with a Content-Length: the headers, `before_body` seconds of nothing, then a
    blocking write per `piece`-byte piece (a chunk each if chunked), with `pause` seconds
    after each (0: as fast as the socket takes them); check that the answer carries the
    body's sha256."""
    digest = sha256(b"x" * size).removeprefix("sha256:")
    if chunked:
        framing, piece_bytes, end = (
            "Transfer-Encoding: chunked",
            f"b'%x\\r\\n' % {piece} + b'x' * {piece} + b'\\r\\n'",
            "b'0\\r\\n\\r\\n'",
        )
    else:
        framing, piece_bytes, end = f"Content-Length: {size}", f"b'x' * {piece}", "b''"
    client = f"""
import socket, sys, time
raw = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
raw.sendall(b"PUT /fast HTTP/1.1\\r\\nHost: t\\r\\n{framing}\\r\\n\\r\\n")
time.sleep({before_body})
chunk = {piece_bytes}
for _ in range({size // piece}):
    raw.sendall(chunk)
    if {pause}:
        time.sleep({pause})
raw.sendall({end})
answer = b""
while received := raw.recv(65536):
    answer += received
    if answer.endswith(b"{digest}"):
        break
sys.stdout.write(answer.decode())
"""
    pushed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", client, str(port), stdout=asyncio.subprocess.PIPE
    )
    answer, _ = await pushed.communicate()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert answer.endswith(digest.encode()), answer[-200:]


async def test_a_fast_client_behind_a_small_receive_buffer_is_not_held_by_long_pauses(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client faster than the socket's receive buffer lets through (here 256 KiB, as set
    by a host with low `tcp_rmem`) reads as less than offered after every pause: long pauses
    each time would cap it at a buffer per COALESCE_DELAY (~25 MB/s; measured 61-111 MB/s
    against 330-510 with 5 ms pauses). A pause that gathered COALESCE_BELOW or more is
    followed by a shorter one, down to COALESCE_DELAY_FAST. (FAST_SENDER raised out of
    reach: this is for a sender slower than it, whose pauses the buffer still cuts short.)"""
    monkeypatch.setattr(server, "FAST_SENDER", 10**15)
    after_pauses: list[tuple[int, float, float]] = []  # (bytes gathered, pause, next pause)
    connection_made = server.ZeroCopyHttpProtocol.connection_made
    buffer_updated = server.ZeroCopyHttpProtocol.buffer_updated

    def small_buffer(protocol: server.ZeroCopyHttpProtocol, transport: asyncio.Transport) -> None:
        transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024
        )
        connection_made(protocol, transport)

    def recording(protocol: server.ZeroCopyHttpProtocol, nbytes: int) -> None:
        paused, delay = protocol._paused_before, protocol._coalesce_delay
        buffer_updated(protocol, nbytes)
        if paused:
            after_pauses.append((nbytes, delay, protocol._coalesce_delay))

    monkeypatch.setattr(server.ZeroCopyHttpProtocol, "connection_made", small_buffer)
    monkeypatch.setattr(server.ZeroCopyHttpProtocol, "buffer_updated", recording)

    size, piece = 32 * BODY_BATCH, 32 * 1024
    async with serving(Recorder(), data_dir) as port:
        await send_body_from_another_process(port, size, piece, pause=0.0)
    gathered_much = [
        (nbytes, delay, following)
        for nbytes, delay, following in after_pauses
        if nbytes >= server.COALESCE_BELOW
    ]
    assert gathered_much, after_pauses  # The buffer let through more than that per pause.
    assert all(
        following < delay or following == server.COALESCE_DELAY_FAST
        for _, delay, following in gathered_much
    ), gathered_much


async def reads_of_a_fast_sender(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, **sending: Any
) -> tuple[list[int], list[int]]:
    """(every read's size, the sizes of the reads after which reading was paused) of a body
    of 32 batches sent from another process as a 64 KiB write every ~0.5 ms: ~100 MB/s,
    slower than the server reads (so that reads find the socket drained, and are small)
    and far faster than FAST_SENDER, lowered to 16 MB/s here so that a loaded machine still
    finds this sender fast. `sending`: send_body_from_another_process's keywords."""
    monkeypatch.setattr(server, "FAST_SENDER", 16_000_000)
    reads: list[int] = []
    paused: list[int] = []
    buffer_updated = server.ZeroCopyHttpProtocol.buffer_updated

    def recording(protocol: server.ZeroCopyHttpProtocol, nbytes: int) -> None:
        buffer_updated(protocol, nbytes)
        reads.append(nbytes)
        if protocol._coalescing is not None:
            paused.append(nbytes)

    monkeypatch.setattr(server.ZeroCopyHttpProtocol, "buffer_updated", recording)
    async with serving(Recorder(), data_dir) as port:
        await send_body_from_another_process(
            port, 32 * BODY_BATCH, 64 * 1024, pause=0.0005, **sending
        )
    return reads, paused


async def test_a_fast_sender_is_never_paused(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that comes at FAST_SENDER bytes a second or more is read as it comes: no
    coalescing pause, whose wait a fast client spends blocked on a full socket buffer, and
    whose last one holds the body's end (8 MiB PATCHes at ~600 MB/s went ~30 % slower).
    A sender below it is paused (the paced streams above)."""
    reads, paused = await reads_of_a_fast_sender(data_dir, monkeypatch)
    assert paused == [], paused
    # Reads smaller than COALESCE_BELOW past the first batch: each would have paused before.
    assert sum(nbytes < server.COALESCE_BELOW for nbytes in reads[32:]) > 100, reads


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_a_fast_sender_is_rated_from_its_first_body_byte(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    """The sender's pace counts from the body's first byte, not from its headers: a client
    that waits for `100 Continue` before it sends the body (curl does from 1 MiB) leaves a
    gap that is not its pace. Here 0.3 s between the headers and the body: counted from the
    headers, its first ~5 MB would rate below FAST_SENDER and be paused. Chunked (the
    parser's path) and with a Content-Length (read directly into batches)."""
    reads, paused = await reads_of_a_fast_sender(
        data_dir, monkeypatch, before_body=0.3, chunked=chunked
    )
    assert paused == [], paused
    # Reads smaller than COALESCE_BELOW past the first batch: each would have paused a slow
    # sender, so the pace was looked at.
    assert sum(nbytes < server.COALESCE_BELOW for nbytes in reads[32:]) > 100, reads
