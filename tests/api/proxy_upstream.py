"""An in-process upstream for the pull-through cache's tests: a second cangku app (httpx's
ASGI transport) standing in for docker.io, reached through a `Gate` that records and can
refuse requests, and the cangku under test mirroring it. Nothing leaves the process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import httpx
from starlette.types import ASGIApp

from cangku.app import create_app
from cangku.config import ProxySettings, Settings
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.proxy.cache import mirror_wrapper
from cangku.proxy.stats import CacheStats
from cangku.proxy.upstream import Upstream
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage


@dataclass
class Gate(httpx.AsyncBaseTransport):
    """The way to the upstream: records each request; `down` refuses connections, `status`
    answers every request with that status (Retry-After: 7)."""

    inner: httpx.AsyncBaseTransport
    requests: list[tuple[str, str]] = field(default_factory=list)
    down: bool = False
    status: int | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.status is not None:
            return httpx.Response(self.status, headers={"Retry-After": "7"})
        return await self.inner.handle_async_request(request)


class Clock:
    """The cache's clock (revalidation periods), moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


G = TypeVar("G", bound=Gate)


@dataclass
class Mirror(Generic[G]):
    upstream: httpx.AsyncClient  # pushes to the stand-in for docker.io
    mirror: httpx.AsyncClient  # the cangku mirroring it
    gate: G
    clock: Clock
    registry: Registry  # the mirroring registry
    stats: CacheStats
    mirror_app: ASGIApp


def asgi_client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://registry.test")


@contextlib.asynccontextmanager
async def mirror_of_upstream(
    registry: Registry,
    data_dir: Path,
    upstream_dir: Path,
    proxy: ProxySettings,
    gate_type: Callable[[httpx.AsyncBaseTransport], G],
) -> AsyncIterator[Mirror[G]]:
    """`registry`'s storage and database mirroring `proxy`'s first upstream, which is a
    fresh cangku in `upstream_dir` behind a `gate_type`; the others are configured but
    unreachable."""
    upstream_dir.mkdir()
    upstream_metadata = MetadataStore.open(sqlite_url(upstream_dir))
    try:
        upstream_app = create_app(
            Settings(data=upstream_dir, auth={"open": True}),
            Registry(FilesystemStorage(upstream_dir), upstream_metadata),
        )
        gate = gate_type(httpx.ASGITransport(app=upstream_app))
        clock = Clock()
        mirrored = Registry(registry.storage, registry.metadata)
        stats = CacheStats.of_upstreams(mirrored.pulls, [u.name for u in proxy.upstreams])
        mirrored.cache_stats = stats
        upstreams = {proxy.upstreams[0].name: Upstream(proxy.upstreams[0], gate)}
        mirrored.wrap = mirror_wrapper(proxy, upstreams, mirrored.core, clock, stats)
        mirror_app = create_app(Settings(data=data_dir, auth={"open": True}, proxy=proxy), mirrored)
        async with asgi_client(upstream_app) as upstream, asgi_client(mirror_app) as mirror:
            yield Mirror(upstream, mirror, gate, clock, mirrored, stats, mirror_app)
    finally:
        await upstream_metadata.close()
