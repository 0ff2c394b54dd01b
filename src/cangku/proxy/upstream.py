"""The client side of a mirrored registry: the Docker token flow, manifest and blob reads.

The token flow (Docker "Token Authentication Specification"; the OCI distribution spec leaves
authentication to the registry): a request answered 401 with
`WWW-Authenticate: Bearer realm="…",service="…",scope="…"` is retried with a token fetched
from `realm` (`GET ?service=…&scope=repository:<name>:pull`), anonymously or with the
upstream's Basic credentials; a `Basic` challenge is answered with the credentials directly.
Tokens are kept per scope until `expires_in` (60 s when not given, RFC 6750 leaves it
optional) and reused. Neither tokens nor passwords are ever logged or put in an error.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpcore
import httpx

from cangku.config import UpstreamSettings
from cangku.content.digest import Digest
from cangku.content.manifest import MAX_MANIFEST_BYTES
from cangku.content.mediatypes import MANIFEST_MEDIA_TYPES

ACCEPT_MANIFESTS = ", ".join(sorted(MANIFEST_MEDIA_TYPES))
# A token is dropped this many seconds before the upstream says it expires, so a request
# never leaves with one about to expire on the way.
EXPIRY_MARGIN = 5.0
DEFAULT_TOKEN_LIFETIME = 60.0
MAX_TOKEN_RESPONSE = 64 * 1024
_CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')
# The most bytes one read from an upstream connection may return. httpcore asks its network
# stream for 64 KiB at a time; anyio hands over what one recv() gave (asyncio's up to
# 256 KiB) and splits a larger piece by slicing, which copies the rest of it again for every
# 64 KiB taken. A blob then moved through the HTTP stack in 64 KiB steps, each a trip through
# h11, httpx and the cache's flight (~0.2 s of CPU for 200 MiB, docs/performance.md). With
# this, a read returns whatever one recv() gave, unsplit (and a blob's recv() may take up to
# this much: `_read_larger_pieces`). httpcore has no per-client setting:
# it is its class attribute (httpcore is pinned in pyproject.toml), so every async HTTP/1.1
# connection of the process (webhook deliveries too) reads this way, which costs them nothing.
UPSTREAM_READ_BYTES = 1024 * 1024
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = UPSTREAM_READ_BYTES


class UpstreamError(Exception):
    """The upstream could not answer (down, timed out, 429, 5xx, or an answer that breaks
    the protocol). `status`: its HTTP status, None when it never answered; `retry_after`:
    seconds from its Retry-After, if any."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class UpstreamNotFound(Exception):
    """The upstream answered 404 (or 401/403 after authenticating): it has no such content
    for us."""


@dataclass(frozen=True, slots=True)
class UpstreamManifest:
    digest: str
    media_type: str
    content: bytes


@dataclass(slots=True)
class _Token:
    value: str
    expires: float


class Upstream:
    """One mirrored registry. `transport` replaces the network (tests); `clock` gives
    monotonic seconds (token expiry)."""

    def __init__(
        self,
        settings: UpstreamSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.client = httpx.AsyncClient(
            base_url=settings.url, transport=transport, timeout=timeout, follow_redirects=False
        )
        self.tokens: dict[str, _Token] = {}

    async def close(self) -> None:
        await self.client.aclose()

    async def head_manifest(self, name: str, reference: str) -> str:
        """The digest `reference` (tag or digest) points at upstream, from a HEAD (which
        Docker Hub does not count against its pull limit). UpstreamNotFound, UpstreamError
        (also when the upstream gives no valid Docker-Content-Digest)."""
        response = await self._send("HEAD", name, f"/v2/{name}/manifests/{reference}")
        try:
            return str(Digest.parse(response.headers.get("docker-content-digest", "")))
        except ValueError as error:
            raise UpstreamError(f"{self.settings.name}: HEAD gave no valid digest") from error

    async def get_manifest(self, name: str, reference: str) -> UpstreamManifest:
        """The manifest `reference` names upstream, at most 4 MiB, its digest computed here
        and checked against `reference` when that is a digest (and against the upstream's
        Docker-Content-Digest). UpstreamNotFound, UpstreamError."""
        path = f"/v2/{name}/manifests/{reference}"
        request = self.client.build_request("GET", path, headers={"Accept": ACCEPT_MANIFESTS})
        response = await self._authenticated(request, name, stream=True)
        try:
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > MAX_MANIFEST_BYTES:
                    raise UpstreamError(f"{self.settings.name}: manifest larger than 4 MiB")
        finally:
            await response.aclose()
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise UpstreamError(f"{self.settings.name}: manifest of type {media_type[:100]!r}")
        expected = reference if ":" in reference else None
        claimed = response.headers.get("docker-content-digest")
        algorithm = (expected or claimed or "sha256").partition(":")[0]
        if algorithm not in ("sha256", "sha512"):
            raise UpstreamError(f"{self.settings.name}: unsupported digest algorithm")
        digest = str(Digest.of(bytes(content), algorithm))
        for wanted in (expected, claimed):
            if wanted is not None and wanted != digest:
                raise UpstreamError(f"{self.settings.name}: manifest digest does not match")
        return UpstreamManifest(digest, media_type, bytes(content))

    async def head_blob(self, name: str, digest: Digest) -> int:
        """The size in bytes of blob `digest` upstream, from a HEAD (OCI dist-spec "Checking
        if content exists in the registry"; redirects followed, credentials never sent to
        another origin). UpstreamNotFound, UpstreamError (also without a valid
        Content-Length)."""
        request = self.client.build_request("HEAD", f"/v2/{name}/blobs/{digest}")
        response = await self._authenticated(request, name, stream=False, redirects=True)
        return _content_length(response, self.settings.name)

    async def get_blob(self, name: str, digest: Digest) -> tuple[httpx.Response, int]:
        """The open response to a GET of blob `digest` (OCI dist-spec "Pulling blobs";
        redirects, e.g. Docker Hub's to its CDN, followed without our credentials) and its
        Content-Length. The caller reads the body (`aiter_bytes`), verifies it, and closes
        it. UpstreamNotFound, UpstreamError."""
        request = self.client.build_request("GET", f"/v2/{name}/blobs/{digest}")
        response = await self._authenticated(request, name, stream=True, redirects=True)
        _read_larger_pieces(response)
        try:
            return response, _content_length(response, self.settings.name)
        except UpstreamError:
            await response.aclose()
            raise

    async def _send(self, method: str, name: str, path: str) -> httpx.Response:
        request = self.client.build_request(method, path, headers={"Accept": ACCEPT_MANIFESTS})
        return await self._authenticated(request, name, stream=False)

    async def _authenticated(
        self, request: httpx.Request, name: str, *, stream: bool, redirects: bool = False
    ) -> httpx.Response:
        """Send `request` with the token held for the repository's pull scope, fetching one
        on a 401 challenge and retrying once. Answers 2xx only (the body still open when
        `stream`); UpstreamNotFound for 404 and for 401/403 after authenticating."""
        scope = f"repository:{name}:pull"
        token = self.tokens.get(scope)
        if token is not None and token.expires > self.clock():
            request.headers["Authorization"] = f"Bearer {token.value}"
        response = await self._exchange(request, stream, redirects)
        if response.status_code == 401:
            challenge = response.headers.get("www-authenticate", "")
            await response.aclose()
            authorization = await self._answer(challenge, scope)
            if authorization is None:
                raise UpstreamNotFound(f"{self.settings.name}: {name} needs credentials")
            request.headers["Authorization"] = authorization
            response = await self._exchange(request, stream, redirects)
        if 200 <= response.status_code < 300:
            return response
        await response.aclose()
        status = response.status_code
        if status in (401, 403, 404):
            raise UpstreamNotFound(f"{self.settings.name}: {name}: {status}")
        retry_after = response.headers.get("retry-after", "")
        raise UpstreamError(
            f"{self.settings.name} answered {status}",
            status,
            int(retry_after) if retry_after.isdigit() and len(retry_after) < 10 else None,
        )

    async def _exchange(
        self, request: httpx.Request, stream: bool, redirects: bool = False
    ) -> httpx.Response:
        try:
            # httpx drops the Authorization header on a redirect to another origin.
            return await self.client.send(request, stream=stream, follow_redirects=redirects)
        except httpx.HTTPError as error:
            # The error's class only: its text may carry the URL, never a credential, but
            # stays short and uniform in the log.
            raise UpstreamError(f"{self.settings.name}: {type(error).__name__}") from None

    async def _answer(self, challenge: str, scope: str) -> str | None:
        """The Authorization header answering `challenge`; None when it cannot be answered
        (no credentials for Basic, an unknown scheme)."""
        scheme, _, rest = challenge.partition(" ")
        basic = self._basic()
        if scheme.lower() == "basic":
            return basic
        if scheme.lower() != "bearer":
            return None
        parameters = dict(_CHALLENGE_PARAMETER.findall(rest))
        realm = parameters.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise UpstreamError(f"{self.settings.name}: token realm is not an http(s) URL")
        query = {"scope": scope}
        if "service" in parameters:
            query["service"] = parameters["service"]
        headers = {"Authorization": basic} if basic is not None else {}
        try:
            response = await self.client.get(realm, params=query, headers=headers)
        except httpx.HTTPError:
            raise UpstreamError(f"{self.settings.name}: token service unreachable") from None
        if response.status_code in (401, 403):
            return None  # Refused credentials or scope: the content is not ours to have.
        if response.status_code != 200 or len(response.content) > MAX_TOKEN_RESPONSE:
            raise UpstreamError(
                f"{self.settings.name}: token service answered {response.status_code}",
                response.status_code,
            )
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in", DEFAULT_TOKEN_LIFETIME))
        except (ValueError, AttributeError, TypeError):
            raise UpstreamError(f"{self.settings.name}: token response is not JSON") from None
        if not isinstance(value, str) or not value or any(c in value for c in "\r\n "):
            raise UpstreamError(f"{self.settings.name}: token response holds no token")
        self.tokens[scope] = _Token(value, self.clock() + max(lifetime, 0.0) - EXPIRY_MARGIN)
        return f"Bearer {value}"

    def _basic(self) -> str | None:
        if not self.settings.username:
            return None
        password = self.settings.read_password() or ""
        pair = f"{self.settings.username}:{password}".encode()
        return f"Basic {base64.b64encode(pair).decode('ascii')}"  # RFC 7617


def _content_length(response: httpx.Response, upstream: str) -> int:
    length = response.headers.get("content-length", "")
    if not length.isdigit() or len(length) > 18:
        raise UpstreamError(f"{upstream}: blob answer without a valid Content-Length")
    return int(length)


def _read_larger_pieces(response: httpx.Response) -> None:
    """Let the connection under `response` (a blob's body, still to be read) take up to
    UPSTREAM_READ_BYTES per recv() rather than asyncio's 256 KiB (its transports'
    `max_size`): every piece goes through h11, httpx, the cache's flight and the leader's
    send, so a 40 MiB blob in 40-160 pieces instead of 160 costs ~30 % less CPU to receive
    (0.33 against 0.48 ms/MiB, docs/performance.md "S3 and mirror pulls (session 8)").
    Memory: one recv() allocates its size, then shrinks to what came.

    Reached through httpcore's `network_stream` response extension and anyio's asyncio
    stream (`_stream`, `_transport`: private, both pinned in pyproject.toml); anything else
    (another backend, the tests' in-process transport) is left as it is, reading as before.
    Plain HTTP only: over TLS the stream is anyio's TLSStream and each piece is one
    decrypted TLS record (at most 16 KiB) whatever the socket reads, so an `https://`
    upstream (Docker Hub, ghcr.io, quay.io) reads as before (review, session 8)."""
    stream = response.extensions.get("network_stream")
    transport = getattr(getattr(stream, "_stream", None), "_transport", None)
    if isinstance(transport, asyncio.Transport) and hasattr(transport, "max_size"):
        transport.max_size = UPSTREAM_READ_BYTES
