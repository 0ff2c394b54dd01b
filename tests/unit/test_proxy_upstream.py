"""The upstream client of the pull-through cache (issue 13): the Docker token flow against a
fake upstream (httpx MockTransport; nothing leaves the process)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from cangku.config import UpstreamSettings
from cangku.content.digest import Digest
from cangku.content.mediatypes import OCI_MANIFEST
from cangku.proxy.upstream import Upstream, UpstreamError, UpstreamNotFound

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
PASSWORD = "hunter2-secret"


@dataclass
class FakeHub:
    """Docker Hub's shape: /v2 wants a Bearer token from /token; `library/*` is public,
    `jimo/private` needs ci-bot's Basic credentials; tokens last `lifetime` seconds."""

    lifetime: int = 300
    scheme: str = "Bearer"
    status: int | None = None  # force this answer to every /v2 request
    content: bytes = MANIFEST
    token_requests: list[httpx.Request] = field(default_factory=list)
    issued: set[str] = field(default_factory=set)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return self.token(request)
        if self.status is not None:
            return httpx.Response(self.status, headers={"Retry-After": "30"})
        name = request.url.path.removeprefix("/v2/").split("/manifests/")[0]
        if not self.authorized(request, name):
            if self.scheme == "Basic":
                return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="hub"'})
            challenge = (
                'Bearer realm="http://hub.test/token",service="hub.test",'
                f'scope="repository:{name}:pull"'
            )
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if name not in ("library/alpine", "jimo/private"):
            return httpx.Response(404)
        headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": DIGEST}
        return httpx.Response(200, headers=headers, content=self.content)

    def authorized(self, request: httpx.Request, name: str) -> bool:
        given = request.headers.get("authorization", "")
        if self.scheme == "Basic":
            return given == _basic("ci-bot", PASSWORD)
        token = given.removeprefix("Bearer ")
        return token in self.issued and token.endswith(name)

    def token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        scope = request.url.params["scope"]
        name = scope.split(":")[1]
        if name == "jimo/private" and request.headers.get("authorization") != _basic(
            "ci-bot", PASSWORD
        ):
            return httpx.Response(401)
        value = f"tok{len(self.token_requests)}-{name}"
        self.issued.add(value)
        return httpx.Response(200, json={"token": value, "expires_in": self.lifetime})


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _upstream(hub: FakeHub, clock: Clock | None = None, **fields: object) -> Upstream:
    settings = UpstreamSettings.model_validate(
        {"name": "docker.io", "url": "http://hub.test", **fields}
    )
    return Upstream(settings, httpx.MockTransport(hub), clock or Clock())


async def test_anonymous_tokens_are_fetched_once_and_reused_until_they_expire() -> None:
    hub, clock = FakeHub(lifetime=300), Clock()
    upstream = _upstream(hub, clock)
    manifest = await upstream.get_manifest("library/alpine", "3")
    assert (manifest.digest, manifest.media_type, manifest.content) == (
        DIGEST,
        OCI_MANIFEST,
        MANIFEST,
    )
    assert await upstream.head_manifest("library/alpine", "3") == DIGEST
    await upstream.get_manifest("library/alpine", DIGEST)
    assert len(hub.token_requests) == 1
    first = hub.token_requests[0]
    assert first.url.params["scope"] == "repository:library/alpine:pull"
    assert first.url.params["service"] == "hub.test"
    assert "authorization" not in first.headers  # anonymous
    clock.now += 300  # past expires_in (less the margin)
    await upstream.head_manifest("library/alpine", "3")
    assert len(hub.token_requests) == 2


async def test_basic_credentials_get_a_token_for_a_private_repository(tmp_path: object) -> None:
    hub = FakeHub()
    upstream = _upstream(hub, username="ci-bot", password=PASSWORD)
    assert (await upstream.get_manifest("jimo/private", "1")).digest == DIGEST
    assert hub.token_requests[0].headers["authorization"] == _basic("ci-bot", PASSWORD)
    with pytest.raises(UpstreamNotFound):
        await _upstream(FakeHub()).get_manifest("jimo/private", "1")
    with pytest.raises(UpstreamNotFound):
        await _upstream(FakeHub(), username="ci-bot", password="wrong").get_manifest(
            "jimo/private", "1"
        )


async def test_a_basic_challenge_is_answered_with_the_credentials() -> None:
    hub = FakeHub(scheme="Basic")
    assert (
        await _upstream(hub, username="ci-bot", password=PASSWORD).head_manifest(
            "library/alpine", "3"
        )
        == DIGEST
    )
    with pytest.raises(UpstreamNotFound):
        await _upstream(FakeHub(scheme="Basic")).head_manifest("library/alpine", "3")


async def test_unknown_content_is_not_found() -> None:
    with pytest.raises(UpstreamNotFound):
        await _upstream(FakeHub()).get_manifest("library/nothing", "1")


async def test_a_manifest_whose_digest_does_not_match_is_refused() -> None:
    hub = FakeHub(content=MANIFEST + b" ")  # the bytes no longer hash to DIGEST
    with pytest.raises(UpstreamError, match="does not match"):
        await _upstream(hub).get_manifest("library/alpine", DIGEST)
    with pytest.raises(UpstreamError, match="does not match"):
        await _upstream(hub).get_manifest("library/alpine", "3")  # against the header


async def test_a_manifest_over_4_mib_is_refused() -> None:
    hub = FakeHub(content=b" " * (4 * 1024 * 1024 + 1))
    with pytest.raises(UpstreamError, match="4 MiB"):
        await _upstream(hub).get_manifest("library/alpine", "3")


@pytest.mark.parametrize(("status", "retry_after"), [(429, 30), (503, 30), (500, 30)])
async def test_throttling_and_server_errors_carry_the_status(status: int, retry_after: int) -> None:
    with pytest.raises(UpstreamError) as raised:
        await _upstream(FakeHub(status=status)).get_manifest("library/alpine", "3")
    assert (raised.value.status, raised.value.retry_after) == (status, retry_after)


async def test_an_upstream_that_is_down_is_an_error_without_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    settings = UpstreamSettings(name="docker.io", url="http://127.0.0.1:9")
    with pytest.raises(UpstreamError) as raised:
        await Upstream(settings, httpx.MockTransport(refuse)).head_manifest("library/alpine", "3")
    assert raised.value.status is None


async def test_credentials_and_tokens_are_never_logged_nor_in_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    hub = FakeHub()
    upstream = _upstream(hub, username="ci-bot", password=PASSWORD)
    await upstream.get_manifest("jimo/private", "1")
    hub.status = 503
    with pytest.raises(UpstreamError) as raised:
        await upstream.get_manifest("jimo/private", "1")
    token = next(iter(hub.issued))
    for text in (caplog.text, str(raised.value)):
        assert PASSWORD not in text and token not in text
        assert base64.b64encode(f"ci-bot:{PASSWORD}".encode()).decode() not in text


BLOB = b"layer bytes" * 100
BLOB_DIGEST = Digest.parse("sha256:" + hashlib.sha256(BLOB).hexdigest())


def _blob_host(seen: list[httpx.Request], *, length: bool = True) -> httpx.MockTransport:
    """hub.test wants ci-bot's Basic credentials and redirects blobs to cdn.test (as Docker
    Hub redirects to its CDN); cdn.test serves them to anyone."""

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "cdn.test":
            if not length:
                return httpx.Response(200, content=_chunks(BLOB))  # chunked: no length
            return httpx.Response(200, content=BLOB)
        if request.headers.get("authorization") != _basic("ci-bot", PASSWORD):
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="hub"'})
        return httpx.Response(307, headers={"Location": "http://cdn.test/blob?signed=1"})

    return httpx.MockTransport(handle)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_blob_redirects_are_followed_without_sending_the_credentials_on() -> None:
    seen: list[httpx.Request] = []
    settings = UpstreamSettings.model_validate(
        {"name": "docker.io", "url": "http://hub.test", "username": "ci-bot", "password": PASSWORD}
    )
    upstream = Upstream(settings, _blob_host(seen))
    assert await upstream.head_blob("jimo/private", BLOB_DIGEST) == len(BLOB)
    response, length = await upstream.get_blob("jimo/private", BLOB_DIGEST)
    try:
        assert length == len(BLOB) and await response.aread() == BLOB
    finally:
        await response.aclose()
    cdn = [request for request in seen if request.url.host == "cdn.test"]
    assert [request.method for request in cdn] == ["HEAD", "GET"]
    assert all("authorization" not in request.headers for request in cdn)


async def test_a_blob_answer_without_a_valid_content_length_is_an_upstream_error() -> None:
    settings = UpstreamSettings.model_validate(
        {"name": "docker.io", "url": "http://hub.test", "username": "ci-bot", "password": PASSWORD}
    )
    upstream = Upstream(settings, _blob_host([], length=False))
    with pytest.raises(UpstreamError, match="Content-Length"):
        await upstream.get_blob("jimo/private", BLOB_DIGEST)


async def pieces_from_a_loopback_upstream(blob: bytes) -> tuple[int, list[int]]:
    """GET `blob` through `Upstream.get_blob` from a loopback server that writes the whole
    answer at once, reading the body only once the socket holds much of it: the
    Content-Length and the size of each piece the body came in."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(blob)}\r\n\r\n"
        )
        writer.write(head.encode() + blob)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = Upstream(UpstreamSettings(name="hub.test", url=f"http://127.0.0.1:{port}"))
    try:
        response, length = await upstream.get_blob("library/alpine", Digest.of(blob))
        await asyncio.sleep(0.2)  # the sender fills the socket's buffer meanwhile
        pieces = [len(piece) async for piece in response.aiter_bytes()]
        await response.aclose()
    finally:
        await upstream.close()
        server.close()
        await server.wait_closed()
    return length, pieces


async def test_a_blob_is_read_from_a_real_connection_in_pieces_larger_than_64_kib() -> None:
    # httpcore reads 64 KiB at a time by default: every chunk of a blob took a trip through
    # h11, httpx and the cache's flight (docs/performance.md "Pull-through cache"). The
    # upstream client reads what one recv() gives instead. A loopback server sends 4 MiB at
    # once; by the time the body is read, the socket holds more than 64 KiB of it.
    body = bytes(range(256)) * (16 * 1024)
    length, pieces = await pieces_from_a_loopback_upstream(body)
    assert length == sum(pieces) == len(body)
    assert max(pieces) > 64 * 1024, pieces


async def test_a_blob_from_a_real_connection_arrives_in_pieces_larger_than_asyncios_256_kib() -> (
    None
):
    # Every piece of a blob goes through h11, httpx and the cache's flight: asyncio's
    # 256 KiB reads made a 40 MiB blob 160 of them (docs/performance.md "S3 and mirror pulls
    # (session 8)"). A loopback upstream writing the whole answer (16 MiB) at once.
    blob = bytes(range(256)) * (64 * 1024)
    length, pieces = await pieces_from_a_loopback_upstream(blob)
    assert length == len(blob) and sum(pieces) == len(blob)
    assert max(pieces) > 256 * 1024
    assert max(pieces) <= 1024 * 1024
