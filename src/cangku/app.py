"""The ASGI application: /v2 (the distribution API), the JSON API and the web UI at `/`.

Built once from the settings; everything it needs is passed down explicitly. The lifespan
also runs the garbage-collection schedule (`gc.interval`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cangku.api import api_routes
from cangku.auth.access import AccessControl
from cangku.auth.accounts import Accounts
from cangku.auth.endpoints import token_routes
from cangku.auth.tokens import TokenService, load_or_create_signing_key
from cangku.config import Settings
from cangku.distribution.routes import DistributionApp
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.registry import Registry
from cangku.registry.gc import CollectionPolicy, GarbageCollector, collect_periodically
from cangku.registry.tags import TagPolicy
from cangku.server import ZERO_COPY_SEND
from cangku.storage import open_storage
from cangku.web import web_app
from cangku.web.sessions import load_or_create_session_key

log = logging.getLogger("cangku")
access_log = logging.getLogger("cangku.access")


def build_registry(settings: Settings) -> Registry:
    settings.data.mkdir(parents=True, exist_ok=True)
    storage = open_storage(settings.storage, settings.data)
    metadata = MetadataStore.open(settings.database_url or sqlite_url(settings.data))
    tag_defaults = TagPolicy(
        floating=settings.tags.floating, immutable_versions=settings.tags.immutable_versions
    )
    return Registry(
        storage, metadata, tag_defaults, automatic_mount=settings.uploads.automatic_mount
    )


def build_access_control(settings: Settings, registry: Registry) -> AccessControl | None:
    """None in the explicit no-authentication mode."""
    if settings.auth.open:
        return None
    accounts = Accounts(registry.metadata, public_by_default=settings.auth.public_by_default)
    key = load_or_create_signing_key(
        settings.auth.token_key or settings.data / "token-signing-key.pem"
    )
    tokens = TokenService(
        key, service=settings.auth.service, lifetime=settings.auth.token_lifetime_seconds
    )
    return AccessControl(accounts, tokens, trusted_proxies=settings.auth.trusted_proxies)


async def create_initial_admin(settings: Settings, access: AccessControl) -> None:
    """First start of an empty data directory: an `admin` account, its password shown once."""
    password = os.environ.get("CANGKU_ADMIN_PASSWORD") or None
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


def create_app(settings: Settings, registry: Registry | None = None) -> ASGIApp:
    registry = registry or build_registry(settings)
    access = build_access_control(settings, registry)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        collecting = None
        if settings.gc.interval > 0:
            collecting = asyncio.create_task(
                collect_periodically(build_collector(settings, registry), settings.gc.interval)
            )
        if access is not None:
            await create_initial_admin(settings, access)
        yield
        if collecting is not None:
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting
        await registry.metadata.close()

    routes: list[BaseRoute] = [Route("/healthz", health)]
    if access is not None:
        routes += token_routes(access)
    routes.append(Mount("/api/v1", routes=api_routes(registry, access)))
    session_key = load_or_create_session_key(settings.data / "web-session-key")
    routes.append(Mount("/", app=web_app(registry, access, session_key)))
    site = Starlette(routes=routes, lifespan=lifespan)
    return AccessLog(RegistryApp(DistributionApp(registry, access), site))


class RegistryApp:
    """Sends /v2 straight to the distribution API (the hot path) and the rest to the site."""

    def __init__(self, distribution: ASGIApp, site: ASGIApp) -> None:
        self.distribution = distribution
        self.site = site

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/v2" or scope["path"].startswith("/v2/")):
            await self.distribution(scope, receive, send)
        else:
            await self.site(scope, receive, send)


class AccessLog:
    """One line per request: method, path, status, bytes, duration, request id, user.

    The query string is left out: it may carry tokens once accounts exist.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        state: dict[str, Any] = {"status": 0, "bytes": 0}

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY_SEND:
                # Handed to the server, as for bodies; blobs.py always gives the count.
                state["bytes"] += message["count"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d %d %.1fms id=%s user=%s",
                    scope["method"],
                    scope["path"],
                    state["status"],
                    state["bytes"],
                    (time.perf_counter() - started) * 1000,
                    request_id,
                    scope.get("user_name", "-"),
                )
