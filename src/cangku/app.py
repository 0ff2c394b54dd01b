"""The ASGI application: /v2 (the distribution API), the JSON API and the web UI at `/`.

Built once from the settings; everything it needs is passed down explicitly. The lifespan
also runs the garbage-collection schedule (`gc.interval`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cangku.api import api_routes
from cangku.auth.access import AccessControl
from cangku.auth.accounts import Accounts
from cangku.auth.endpoints import token_routes
from cangku.auth.tokens import TokenService, load_or_create_signing_key
from cangku.config import ProxySettings, Settings
from cangku.distribution.routes import DistributionApp
from cangku.events.delivery import Deliverer
from cangku.metadata.store import MetadataStore, is_sqlite_url, sqlite_url
from cangku.observability import (
    MeteredCollector,
    Metrics,
    MetricsListener,
    ObservedApp,
    health_routes,
    metrics_route,
)
from cangku.proxy.cache import mirror_wrapper
from cangku.proxy.eviction import MIN_PROTECT, EvictingCollector, Evictor
from cangku.proxy.routing import UpstreamRouting
from cangku.proxy.stats import CacheStats
from cangku.proxy.upstream import Upstream
from cangku.registry import Registry
from cangku.registry.gc import (
    CollectionPolicy,
    Collector,
    GarbageCollector,
    collect_periodically,
)
from cangku.registry.pulls import flush_periodically
from cangku.registry.repository import RepositoryWrapper
from cangku.registry.retention import RetainingCollector
from cangku.registry.tags import TagPolicy
from cangku.registry.usage_history import snapshot_periodically
from cangku.storage import open_storage
from cangku.storage.base import BlobStorage
from cangku.tracing import TracedStorage, Tracing
from cangku.web import web_app
from cangku.web.sessions import load_or_create_session_key

log = logging.getLogger("cangku")


# Files and directories the server creates: for its own user only (keys, the database,
# blobs of private repositories). Set for the whole process: SQLite creates its files itself.
DATA_UMASK = 0o077


def build_registry(settings: Settings, tracing: Tracing | None = None) -> Registry:
    os.umask(DATA_UMASK)
    settings.data.mkdir(mode=0o700, parents=True, exist_ok=True)
    storage: BlobStorage = open_storage(settings.storage, settings.data)
    url = settings.database_url or sqlite_url(settings.data)
    # The embedded default migrates itself at start; a shared database (several replicas,
    # maybe of two versions during a rollout) only by `cangku db upgrade`, run once.
    metadata = MetadataStore.open(url, upgrade=is_sqlite_url(url))
    if tracing is not None:
        storage = TracedStorage(storage, tracing)
        metadata.span = tracing.span
    tag_defaults = TagPolicy(
        floating=settings.tags.floating, immutable_versions=settings.tags.immutable_versions
    )
    registry = Registry(
        storage,
        metadata,
        tag_defaults,
        automatic_mount=settings.uploads.automatic_mount,
        max_open_uploads=settings.uploads.max_open_per_owner,
        # The filesystem driver locks a session's file across processes; S3 needs the lease.
        session_leases=settings.storage.driver == "s3",
    )
    if settings.proxy.upstreams:
        registry.wrap = mirror_registry(settings.proxy, registry)
    return registry


def mirror_registry(proxy: ProxySettings, registry: Registry) -> RepositoryWrapper:
    """The pull-through cache's wrapper (issue 13, docs/proxy.md) for `registry`."""
    upstreams = {upstream.name: Upstream(upstream) for upstream in proxy.upstreams}
    stats = CacheStats.of_upstreams(registry.pulls, [upstream.name for upstream in proxy.upstreams])
    registry.cache_stats = stats  # observability.py exports it; eviction counts into it
    return mirror_wrapper(proxy, upstreams, registry.core, stats=stats)


def build_access_control(settings: Settings, registry: Registry) -> AccessControl | None:
    """None in the explicit no-authentication mode."""
    if settings.auth.open:
        return None
    accounts = Accounts(
        registry.metadata,
        public_by_default=settings.auth.public_by_default,
        mirrors=settings.proxy,
    )
    key = load_or_create_signing_key(
        settings.auth.token_key or settings.data / "token-signing-key.pem"
    )
    tokens = TokenService(
        key, service=settings.auth.service, lifetime=settings.auth.token_lifetime_seconds
    )
    return AccessControl(accounts, tokens, trusted_proxies=settings.auth.trusted_proxies)


async def create_initial_admin(settings: Settings, access: AccessControl) -> None:
    """First start of an empty data directory: an `admin` account, its password shown once."""
    secret = settings.admin_password
    password = (secret.get_secret_value() if secret is not None else "") or None
    generated = await access.accounts.ensure_initial_admin(settings.data, password)
    if generated is not None:
        log.warning(
            "created the account 'admin' with password %s (also in %s, readable only by you)",
            generated,
            settings.data / "initial-admin-password",
        )


def build_collector(settings: Settings, registry: Registry) -> GarbageCollector:
    policy = CollectionPolicy(
        grace=settings.gc.grace,
        delete_untagged_after=settings.gc.delete_untagged_after,
        upload_expiry=settings.uploads.expire,
    )
    return GarbageCollector(registry.storage, registry.metadata, policy)


def build_evictor(settings: Settings, registry: Registry) -> Evictor | None:
    """Eviction from the pull-through cache (proxy/eviction.py), None when the settings ask
    for none (no upstreams, or neither `proxy.max_size` nor `proxy.evict_after`)."""
    stats = registry.cache_stats if isinstance(registry.cache_stats, CacheStats) else None
    evictor = Evictor(
        registry.metadata,
        settings.proxy,
        registry.pulls,
        protect=max(settings.gc.grace, MIN_PROTECT),
        stats=stats,
    )
    return evictor if evictor.enabled else None


def create_app(
    settings: Settings, registry: Registry | None = None, tracing: Tracing | None = None
) -> ASGIApp:
    """The whole application. `registry` (tests) is used as given: wrapping its storage and
    metadata for tracing is then the caller's part (build_registry does it)."""
    registry = registry or build_registry(settings, tracing)
    registry.pulls.pulled_events = settings.events.pulled  # issue 16, opt-in
    access = build_access_control(settings, registry)
    metrics = Metrics() if settings.metrics.enabled else None
    if metrics is not None:
        metrics.watch_registry(registry)
    listener = None
    if metrics is not None and settings.metrics.listen is not None:
        listener = MetricsListener(metrics, settings.metrics.listen)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        collecting = None
        if settings.gc.interval > 0:
            collector = build_collector(settings, registry)
            scheduled: Collector = (
                MeteredCollector(collector, metrics) if metrics is not None else collector
            )
            # Issue 13: eviction from the pull-through cache before the collection.
            evictor = build_evictor(settings, registry)
            if evictor is not None:
                scheduled = EvictingCollector(scheduled, evictor)
            # Issue 17: retention policies run first, in every scheduled collection.
            collecting = asyncio.create_task(
                collect_periodically(
                    RetainingCollector(scheduled, registry.metadata, registry.pulls),
                    settings.gc.interval,
                )
            )
        # Issue 17: buffered pull counts reach the database every FLUSH_SECONDS; usage
        # snapshots for the charts every SNAPSHOT_SECONDS.
        flushing_pulls = asyncio.create_task(flush_periodically(registry.pulls))
        snapshots = asyncio.create_task(snapshot_periodically(registry.metadata))
        # Issue 16: the outbox goes to the configured endpoints (events/delivery.py).
        # Always running: owners add webhooks at run time (events/webhooks.py).
        deliverer = Deliverer(
            registry.metadata,
            settings.events,
            observe=metrics.observe_event_delivery if metrics is not None else None,
        )
        delivering = asyncio.create_task(deliverer.run())
        if access is not None:
            await create_initial_admin(settings, access)
        if listener is not None:
            listener.start()
        yield
        delivering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await delivering
        await deliverer.close()
        for task in (flushing_pulls, snapshots):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await registry.pulls.flush()
        except Exception:
            log.exception("could not write the last pull statistics")
        try:
            await registry.core.sessions.record()
        except Exception:
            log.exception("could not record the open upload sessions")
        if listener is not None:
            listener.stop()
        if collecting is not None:
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting
        await registry.metadata.close()
        if tracing is not None:
            tracing.shutdown()

    routes: list[BaseRoute] = list(health_routes(registry))
    if metrics is not None and listener is None:
        routes.append(metrics_route(metrics))
    if access is not None:
        routes += token_routes(access)
    routes.append(Mount("/api/v1", routes=api_routes(registry, access, settings.events)))
    session_key = load_or_create_session_key(settings.data / "web-session-key")
    routes.append(
        Mount("/", app=web_app(registry, access, session_key, settings.proxy, settings.events))
    )
    site = Starlette(routes=routes, lifespan=lifespan)
    distribution: ASGIApp = DistributionApp(registry, access)
    if settings.proxy.upstreams:
        # Issue 13: reads routed by `ns` or to the default upstream reach the mirror's namespace.
        distribution = UpstreamRouting(distribution, settings.proxy, registry.metadata)
    return ObservedApp(RegistryApp(distribution, site), metrics, tracing)


class RegistryApp:
    """Sends /v2 straight to the distribution API (the hot path) and the rest to the site;
    over TLS, adds `Strict-Transport-Security` to every response (`sending_hsts`, here in
    the same call: a middleware layer of its own cost every request a coroutine)."""

    def __init__(self, distribution: ASGIApp, site: ASGIApp) -> None:
        self.distribution = distribution
        self.site = site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.site(scope, receive, send)
            return
        if scope.get("scheme") == "https":
            send = sending_hsts(send)
        path = scope["path"]
        if path == "/v2" or path.startswith("/v2/"):
            await self.distribution(scope, receive, send)
        else:
            await self.site(scope, receive, send)


# RFC 6797: a year, for this host only.
HSTS_HEADER = (b"strict-transport-security", b"max-age=31536000")


def sending_hsts(send: Send) -> Send:
    """`send`, adding `Strict-Transport-Security` to the response's start: for every response
    served over TLS (RFC 6797 section 7.1: never over plain HTTP, where an attacker could
    have added or removed it). Behind a TLS-terminating proxy the proxy is the HTTPS server
    and sets it there."""

    async def send_with_header(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), HSTS_HEADER]
        await send(message)

    return send_with_header
