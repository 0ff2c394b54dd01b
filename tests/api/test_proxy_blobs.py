"""Issue 13: blobs through the pull-through cache (proxy/blobs.py). The upstream is a second
cangku app in-process (httpx's ASGI transport) behind a `Gate` that records, slows, throttles,
cuts off or corrupts what it answers; the mirror keeps its blobs on the filesystem or on S3
(CANGKU_TEST_S3). The mirror's app is driven through ASGI directly where a test must see the
response as it is sent (streaming, an aborted transfer)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message

from cangku.config import ProxySettings
from cangku.content.digest import Digest
from cangku.content.errors import Unavailable
from cangku.metadata.store import MetadataStore
from cangku.proxy import blobs as proxy_blobs
from cangku.registry import Registry
from cangku.storage.base import BlobStorage, Stream
from cangku.storage.filesystem import FilesystemStorage
from tests.api import proxy_upstream as upstream_gate
from tests.api.helpers import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    error_code,
    pull_image,
    push_blob,
    sha256,
)
from tests.api.proxy_upstream import Mirror, mirror_of_upstream
from tests.s3 import s3_storage

UPSTREAM_CHUNK = 64 * 1024


@dataclass
class Gate(upstream_gate.Gate):
    """The way to the upstream (proxy_upstream.Gate), with blob GETs streamed in 64 KiB
    chunks, each after `delay` seconds; `hold` (when set) stops a blob GET after its first
    chunk until it is set; `corrupt` flips a byte in the middle; `resize` adds (or cuts)
    that many bytes and declares the new length. `blob_bytes` counts the blob bytes sent."""

    delay: float = 0.0
    corrupt: bool = False
    resize: int = 0
    hold: asyncio.Event | None = None
    blob_bytes: int = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if self.status is not None or "/blobs/" not in request.url.path:
            return response
        if request.method == "HEAD" and self.resize:
            headers = httpx.Headers(response.headers)
            headers["Content-Length"] = str(int(headers["Content-Length"]) + self.resize)
            return httpx.Response(response.status_code, headers=headers)
        if request.method != "GET":
            return response
        body = bytearray(await response.aread())
        if self.corrupt and body:
            body[len(body) // 2] ^= 1
        headers = httpx.Headers(response.headers)
        if self.resize:
            body = body + b"x" * self.resize if self.resize > 0 else body[: self.resize]
            headers["Content-Length"] = str(len(body))
        return httpx.Response(
            response.status_code, headers=headers, content=self._trickle(bytes(body))
        )

    async def _trickle(self, body: bytes) -> AsyncIterator[bytes]:
        for offset in range(0, len(body), UPSTREAM_CHUNK):
            await asyncio.sleep(self.delay)
            if offset >= 2 * UPSTREAM_CHUNK and self.hold is not None:
                await self.hold.wait()
            chunk = body[offset : offset + UPSTREAM_CHUNK]
            self.blob_bytes += len(chunk)
            yield chunk

    def blob_gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/blobs/" in path]


Setup = Mirror[Gate]


@pytest.fixture(params=["filesystem", "s3"])
def storage(
    request: pytest.FixtureRequest, data_dir: Path, database_url: str
) -> Iterator[BlobStorage]:
    if request.param == "filesystem":
        yield FilesystemStorage(data_dir)
        return
    with s3_storage() as storage:
        yield storage


@pytest.fixture
async def setup(
    storage: BlobStorage, database_url: str, data_dir: Path, tmp_path: Path
) -> AsyncIterator[Setup]:
    proxy = ProxySettings.model_validate(
        {"upstreams": [{"name": "docker.io", "url": "http://up.test", "default": True}]}
    )
    metadata = MetadataStore.open(database_url)
    try:
        async with mirror_of_upstream(
            Registry(storage, metadata), data_dir, tmp_path / "upstream", proxy, Gate
        ) as mirror:
            yield mirror
    finally:
        await metadata.close()


@pytest.fixture
def joined(monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[None]:
    """One item each time a request starts waiting for a transfer another request leads
    (`MirroredBlobs._wait`): the test knows the joiner has joined, rather than guessing
    with a sleep (a sleep let the joiner lead instead on a slow storage, e.g. S3)."""
    joins: asyncio.Queue[None] = asyncio.Queue()
    wait = proxy_blobs.MirroredBlobs._wait

    async def counted(
        self: proxy_blobs.MirroredBlobs, flight: proxy_blobs.Flight, digest: Digest
    ) -> None:
        joins.put_nowait(None)
        await wait(self, flight, digest)

    monkeypatch.setattr(proxy_blobs.MirroredBlobs, "_wait", counted)
    return joins


async def _push(client: httpx.AsyncClient, name: str, tag: str, layers: list[bytes]) -> str:
    """Push an image with these layers; its manifest digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    await push_blob(client, name, config)
    for layer in layers:
        await push_blob(client, name, layer)
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer) for layer in layers],
    }
    content = json.dumps(document).encode()
    response = await client.put(
        f"/v2/{name}/manifests/{tag}", content=content, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 201, response.text
    return sha256(content)


async def _asgi_get(
    app: ASGIApp, path: str, sent: list[Message], first_body: asyncio.Event | None = None
) -> None:
    """GET `path` from `app` over ASGI, keeping every message it sends in `sent`."""

    async def receive() -> Message:
        await asyncio.Event().wait()  # The client never disconnects on its own.
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)
        body = message["type"] == "http.response.body" and message.get("body")
        if first_body is not None and body:
            first_body.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"registry.test")],
        "client": ("127.0.0.1", 1234),
        "server": ("registry.test", 80),
    }
    await app(scope, receive, send)


def _body(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _completed(sent: list[Message]) -> bool:
    return any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent)


async def test_a_cold_pull_caches_every_blob_and_by_digest_never_goes_upstream_again(
    setup: Setup,
) -> None:
    layers = [os.urandom(300_000), os.urandom(70_000)]
    await _push(setup.upstream, "library/alpine", "3", layers)
    await pull_image(setup.mirror, "docker.io/library/alpine", "3")
    assert sorted(setup.gate.blob_gets()) == sorted(
        f"/v2/library/alpine/blobs/{sha256(blob)}"
        for blob in [json.dumps({"architecture": "amd64", "os": "linux"}).encode(), *layers]
    )
    # Cached: served with the upstream down, no request reaches it for a blob.
    before = len(setup.gate.requests)
    setup.gate.down = True
    for layer in layers:
        path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
        got = await setup.mirror.get(path)
        assert got.status_code == 200 and got.content == layer
        head = await setup.mirror.head(path)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(layer))
    assert len(setup.gate.requests) == before


async def test_the_first_client_gets_bytes_before_the_upstream_finished(setup: Setup) -> None:
    layer = os.urandom(5 * UPSTREAM_CHUNK)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    setup.gate.hold = asyncio.Event()
    sent: list[Message] = []
    first_body = asyncio.Event()
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    pull = asyncio.create_task(_asgi_get(setup.mirror_app, path, sent, first_body))
    # The upstream sent one chunk and waits: the client already has it.
    await asyncio.wait_for(first_body.wait(), 10)
    assert 0 < len(_body(sent)) < len(layer) and not _completed(sent)
    # Not visible in the cache before it is verified.
    cached = await setup.registry.storage.stat(Digest.parse(sha256(layer)))
    assert cached is None
    setup.gate.hold.set()
    await asyncio.wait_for(pull, 10)
    assert _body(sent) == layer and _completed(sent)
    assert await setup.registry.storage.stat(Digest.parse(sha256(layer))) == len(layer)


async def test_eight_concurrent_cold_pulls_transfer_each_blob_once(setup: Setup) -> None:
    layers = [os.urandom(400_000) for _ in range(3)]
    digest = await _push(setup.upstream, "library/python", "3.12", layers)
    setup.gate.delay = 0.01  # Each transfer lasts long enough for all eight to meet it.

    await asyncio.gather(
        *(pull_image(setup.mirror, "docker.io/library/python", digest) for _ in range(8))
    )
    gets = setup.gate.blob_gets()
    assert len(gets) == len(set(gets)) == 4  # config and three layers, each once
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    assert setup.gate.blob_bytes == sum(len(blob) for blob in [config, *layers])


async def test_a_blob_corrupted_upstream_aborts_the_transfer_and_is_not_cached(
    setup: Setup, joined: asyncio.Queue[None]
) -> None:
    layer = os.urandom(4 * UPSTREAM_CHUNK)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    setup.gate.corrupt = True
    setup.gate.hold = asyncio.Event()
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    sent: list[Message] = []
    first_body = asyncio.Event()
    leader = asyncio.create_task(_asgi_get(setup.mirror_app, path, sent, first_body))
    # The leader streams (the upstream holds after its first chunks) before the joiner asks.
    await asyncio.wait_for(first_body.wait(), 10)
    joining = asyncio.create_task(setup.mirror.get(path))
    await asyncio.wait_for(joined.get(), 10)  # joined the transfer in progress
    setup.gate.hold.set()
    with pytest.raises(Exception, match="does not match"):
        await asyncio.wait_for(leader, 10)
    joiner = await asyncio.wait_for(joining, 10)
    # The leader got a head start of bytes, never the whole body nor its end.
    assert len(_body(sent)) < len(layer) and not _completed(sent)
    assert joiner.status_code == 503 and error_code(joiner) == "UNAVAILABLE"
    assert "does not match" in joiner.json()["errors"][0]["message"]
    assert await setup.registry.storage.stat(Digest.parse(sha256(layer))) is None
    assert len(setup.gate.blob_gets()) == 1
    # Fixed upstream: fetched again, right.
    setup.gate.corrupt = False
    again = await setup.mirror.get(path)
    assert again.status_code == 200 and again.content == layer


@pytest.mark.parametrize("resize", [7, -7])
async def test_an_upstream_declaring_another_length_than_the_manifest_is_refused_before_streaming(
    setup: Setup, resize: int, caplog: pytest.LogCaptureFixture
) -> None:
    layer = os.urandom(4 * UPSTREAM_CHUNK)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    # The manifest is cached first (as every client pulls): its descriptor gives the size.
    manifest = await setup.mirror.get(
        "/v2/docker.io/library/alpine/manifests/3", headers={"Accept": OCI_MANIFEST}
    )
    assert manifest.status_code == 200
    setup.gate.resize = resize
    sent_before = setup.gate.blob_bytes
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    refused = await setup.mirror.get(path)
    # A whole error response (not a 200 cut short), before one byte was read upstream.
    assert refused.status_code == 503 and error_code(refused) == "UNAVAILABLE"
    assert f"declares {len(layer) + resize} bytes" in refused.json()["errors"][0]["message"]
    assert setup.gate.blob_bytes == sent_before
    assert await setup.registry.storage.stat(Digest.parse(sha256(layer))) is None
    assert any("declares" in record.getMessage() for record in caplog.records)
    # A HEAD is refused the same way: the client never sees the wrong length.
    head = await setup.mirror.head(path)
    assert head.status_code == 503
    # And the transfer itself (what a GET opens after that check), before reading a byte.
    blobs = setup.registry.repository("docker.io/library/alpine").blobs
    with pytest.raises(Unavailable, match=f"declares {len(layer) + resize} bytes"):
        await blobs.open(Digest.parse(sha256(layer)), 0, len(layer))
    assert setup.gate.blob_bytes == sent_before
    assert await setup.registry.storage.stat(Digest.parse(sha256(layer))) is None
    setup.gate.resize = 0
    assert (await setup.mirror.head(path)).headers["content-length"] == str(len(layer))
    again = await setup.mirror.get(path)
    assert again.status_code == 200 and again.content == layer


async def test_upstream_failures_on_uncached_blobs_map_to_spec_errors(setup: Setup) -> None:
    layer = os.urandom(1000)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    setup.gate.status = 429
    for method in ("GET", "HEAD"):
        throttled = await setup.mirror.request(method, path)
        assert throttled.status_code == 429 and throttled.headers["retry-after"] == "7"
    assert error_code(await setup.mirror.get(path)) == "TOOMANYREQUESTS"
    setup.gate.status = None
    setup.gate.down = True
    down = await setup.mirror.get(path)
    assert down.status_code == 503 and error_code(down) == "UNAVAILABLE"
    setup.gate.down = False
    missing = await setup.mirror.get(f"/v2/docker.io/library/alpine/blobs/{sha256(b'none')}")
    assert missing.status_code == 404 and error_code(missing) == "BLOB_UNKNOWN"


async def test_head_of_an_uncached_blob_asks_the_upstream_without_transferring_it(
    setup: Setup,
) -> None:
    layer = os.urandom(1000)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    head = await setup.mirror.head(f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}")
    assert head.status_code == 200
    assert head.headers["content-length"] == "1000"
    assert head.headers["docker-content-digest"] == sha256(layer)
    assert setup.gate.blob_gets() == []


async def test_ranges_are_served_from_the_cached_blob(setup: Setup) -> None:
    layer = os.urandom(200_000)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    # Uncached: the whole blob is fetched and verified, then the range served from it.
    first = await setup.mirror.get(path, headers={"Range": "bytes=1000-1999"})
    assert first.status_code == 206 and first.content == layer[1000:2000]
    setup.gate.down = True
    tail = await setup.mirror.get(path, headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == layer[-100:]
    assert tail.headers["content-range"] == f"bytes {len(layer) - 100}-{len(layer) - 1}/200000"
    assert len(setup.gate.blob_gets()) == 1


async def test_a_blob_cached_for_one_mirror_repository_is_linked_into_another_without_transfer(
    setup: Setup,
) -> None:
    shared = os.urandom(100_000)
    await _push(setup.upstream, "library/alpine", "3", [shared])
    await _push(setup.upstream, "library/python", "3", [shared])
    await pull_image(setup.mirror, "docker.io/library/alpine", "3")
    gets = len(setup.gate.blob_gets())
    got = await setup.mirror.get(f"/v2/docker.io/library/python/blobs/{sha256(shared)}")
    assert got.status_code == 200 and got.content == shared
    assert len(setup.gate.blob_gets()) == gets  # a HEAD upstream confirmed it, no GET


async def test_a_blob_the_upstream_repository_lacks_is_not_served_from_another_mirror(
    setup: Setup,
) -> None:
    private = os.urandom(1000)
    await _push(setup.upstream, "library/alpine", "3", [private])
    await pull_image(setup.mirror, "docker.io/library/alpine", "3")
    other = await setup.mirror.get(f"/v2/docker.io/library/python/blobs/{sha256(private)}")
    assert other.status_code == 404 and error_code(other) == "BLOB_UNKNOWN"


async def test_blobs_of_a_mirror_cannot_be_pushed_mounted_or_deleted(setup: Setup) -> None:
    layer = os.urandom(1000)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    await pull_image(setup.mirror, "docker.io/library/alpine", "3")
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    deleted = await setup.mirror.delete(path)
    assert deleted.status_code == 403 and error_code(deleted) == "DENIED"
    posted = await setup.mirror.post(
        "/v2/docker.io/library/alpine/blobs/uploads/",
        params={"digest": sha256(b"x")},
        content=b"x",
    )
    assert posted.status_code == 403 and "is a mirror" in posted.text


async def test_a_first_client_that_disconnects_does_not_cut_the_transfer_short_for_others(
    setup: Setup, joined: asyncio.Queue[None]
) -> None:
    layer = os.urandom(6 * UPSTREAM_CHUNK)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    setup.gate.hold = asyncio.Event()
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    first_body = asyncio.Event()
    leader = asyncio.create_task(_asgi_get(setup.mirror_app, path, [], first_body))
    await asyncio.wait_for(first_body.wait(), 10)
    joiner = asyncio.create_task(setup.mirror.get(path))
    await asyncio.wait_for(joined.get(), 10)  # the joiner waits for the transfer in progress
    leader.cancel()  # the first client goes away mid-transfer
    with pytest.raises(asyncio.CancelledError):
        await leader
    setup.gate.hold.set()
    answer = await asyncio.wait_for(joiner, 10)
    assert answer.status_code == 200 and answer.content == layer
    assert len(setup.gate.blob_gets()) == 1


async def test_in_process_readers_get_an_uncached_blob_through_the_cache(setup: Setup) -> None:
    layer = os.urandom(100_000)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    blobs = setup.registry.repository("docker.io/library/alpine").blobs
    digest, size = await blobs.stat(sha256(layer))
    assert b"".join([chunk async for chunk in blobs.read(digest, 0, size)]) == layer
    setup.gate.down = True
    assert b"".join([chunk async for chunk in blobs.read(digest, 10, 20)]) == layer[10:20]


async def test_a_transfer_cancelled_mid_way_aborts_the_first_client_and_fails_the_others(
    setup: Setup, joined: asyncio.Queue[None]
) -> None:
    layer = os.urandom(6 * UPSTREAM_CHUNK)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    setup.gate.hold = asyncio.Event()
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    sent: list[Message] = []
    first_body = asyncio.Event()
    leader = asyncio.create_task(_asgi_get(setup.mirror_app, path, sent, first_body))
    await asyncio.wait_for(first_body.wait(), 10)
    joiner = asyncio.create_task(setup.mirror.get(path))
    await asyncio.wait_for(joined.get(), 10)
    blobs = setup.registry.repository("docker.io/library/alpine").blobs
    flight = blobs.flights[sha256(layer)]  # type: ignore[attr-defined]
    flight.task.cancel()  # as when the server stops
    with pytest.raises(Exception, match="interrupted"):
        await asyncio.wait_for(leader, 10)
    assert not _completed(sent)
    answer = await asyncio.wait_for(joiner, 10)
    assert answer.status_code == 503 and error_code(answer) == "UNAVAILABLE"
    assert await setup.registry.storage.stat(Digest.parse(sha256(layer))) is None
    setup.gate.hold.set()


async def _stalled_leader(setup: Setup, layer: bytes) -> tuple[AsyncIterator[bytes], bytes]:
    """Start the blob's transfer as its leader in-process, read one chunk and stop reading
    (as a client that keeps its connection open but takes nothing more): the stream, and
    the chunk read."""
    blobs = setup.registry.repository("docker.io/library/alpine").blobs
    digest, size = await blobs.stat(sha256(layer))
    content = await blobs.open(digest, 0, size)
    assert isinstance(content, Stream)
    first = await asyncio.wait_for(anext(content.chunks), 10)
    return content.chunks, first


async def test_a_leader_that_stops_reading_is_cut_off_and_the_joiners_get_the_blob(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy_blobs, "LEADER_QUEUE", 2)
    monkeypatch.setattr(proxy_blobs, "OFFER_TIMEOUT", 0.2)
    layer = os.urandom(8 * UPSTREAM_CHUNK)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    chunks, first = await _stalled_leader(setup, layer)
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    joiner = await asyncio.wait_for(setup.mirror.get(path), 10)
    assert joiner.status_code == 200 and joiner.content == layer
    assert len(setup.gate.blob_gets()) == 1
    # The leader, reading again, is told it was cut off: its response is aborted, never
    # ended as if complete.
    received = bytearray(first)
    with pytest.raises(Unavailable, match="did not read"):
        async for chunk in chunks:
            received += chunk
    assert len(received) < len(layer)


async def test_joiners_do_not_wait_for_a_slow_leader_once_the_blob_is_verified(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The leader's queue takes every chunk but the held-back last one: the transfer ends,
    # and only handing the leader its last chunk waits (for as long as OFFER_TIMEOUT).
    monkeypatch.setattr(proxy_blobs, "LEADER_QUEUE", 3)
    monkeypatch.setattr(proxy_blobs, "OFFER_TIMEOUT", 60.0)
    layer = os.urandom(5 * UPSTREAM_CHUNK)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    chunks, first = await _stalled_leader(setup, layer)
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    joiner = await asyncio.wait_for(setup.mirror.get(path), 10)
    assert joiner.status_code == 200 and joiner.content == layer
    # The leader, reading on, gets the whole verified blob.
    rest = b"".join([chunk async for chunk in chunks])
    assert first + rest == layer


async def test_a_failed_transfer_is_not_joined_by_a_later_request(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A corrupted blob fails verification while its stalled leader's queue is full: telling
    # the leader waits, but the flight is already gone, so the next request fetches anew.
    monkeypatch.setattr(proxy_blobs, "LEADER_QUEUE", 3)
    monkeypatch.setattr(proxy_blobs, "OFFER_TIMEOUT", 60.0)
    layer = os.urandom(5 * UPSTREAM_CHUNK)
    await _push(setup.upstream, "library/alpine", "3", [layer])
    setup.gate.corrupt = True
    chunks, _ = await _stalled_leader(setup, layer)
    blobs = setup.registry.repository("docker.io/library/alpine").blobs
    flight = blobs.flights[sha256(layer)]  # type: ignore[attr-defined]
    with pytest.raises(Unavailable, match="does not match"):
        await asyncio.wait_for(asyncio.shield(flight.done), 10)
    setup.gate.corrupt = False
    path = f"/v2/docker.io/library/alpine/blobs/{sha256(layer)}"
    again = await asyncio.wait_for(setup.mirror.get(path), 10)
    assert again.status_code == 200 and again.content == layer
    assert len(setup.gate.blob_gets()) == 2
    # The first leader still learns of its failure: aborted.
    with pytest.raises(Unavailable, match="does not match"):
        async for _ in chunks:
            pass


async def test_a_reader_of_a_cached_blob_that_stops_closes_the_storage_stream_at_once() -> None:
    # MirroredBlobs.read wraps the cached repository's stream (an S3 body read by a thread
    # of its own, a file): closing it closes that stream then, not at garbage collection.
    closed: list[bool] = []

    class Held:
        async def stat(self, digest: str) -> tuple[Digest, int]:
            return Digest.parse(digest), 2

        async def read(self, digest: Digest, start: int, end: int) -> AsyncIterator[bytes]:
            try:
                yield b"a"
                yield b"b"
            finally:
                closed.append(True)

    class Settings_:
        name = "docker.io"

    class Upstream_:
        settings = Settings_()

    mirrored = proxy_blobs.MirroredBlobs(
        Held(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        Upstream_(),  # type: ignore[arg-type]
        "library/alpine",
        {},
        "docker.io/library/alpine",
    )
    chunks = mirrored.read(Digest.of(b"ab"), 0, 2)
    assert await anext(chunks) == b"a"
    await chunks.aclose()  # type: ignore[attr-defined]
    assert closed == [True]  # no await in between: no finalizer could have run
