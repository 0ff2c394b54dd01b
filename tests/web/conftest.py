"""The web UI in process: the app with accounts on, over httpx's ASGI transport."""
# ruff: noqa: F811  (pytest fixtures take the names of the fixtures they use)

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cangku.app import create_app
from cangku.config import Settings
from cangku.registry import Registry
from cangku.registry.context import IN_PROCESS, RequestContext
from tests.auth.conftest import (  # noqa: F401  (fixtures used here and in the tests)
    PASSWORDS,
    accounts,
    database_url,
    fast_bcrypt,
    registry,
    settings,
)

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


async def _blob(registry: Registry, name: str, data: bytes) -> dict[str, Any]:
    from cangku.content.digest import Digest

    digest = Digest.of(data)

    async def body() -> AsyncIterator[bytes]:
        yield data

    await registry.repository(name).blobs.upload(str(digest), body(), len(data), IN_PROCESS)
    return {"digest": str(digest), "size": len(data)}


async def store_image(
    registry: Registry,
    name: str,
    tag: str,
    *,
    labels: dict[str, str] | None = None,
    history: list[str] | None = None,
    actor: str | None = "jimo",
) -> str:
    """An image with one layer, pushed through the use cases; returns its digest."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T10:00:00Z",
        "config": {
            "Env": ["PATH=/usr/bin"],
            "Cmd": ["/bin/app", "--serve"],
            "Labels": labels or {},
            "ExposedPorts": {"8080/tcp": {}},
        },
        "history": [{"created_by": line} for line in history or ["COPY app /bin/app"]],
        "salt": os.urandom(8).hex(),
    }
    config_descriptor = await _blob(registry, name, json.dumps(config).encode())
    layer_descriptor = await _blob(registry, name, os.urandom(2048))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **config_descriptor},
            "layers": [{"mediaType": OCI_LAYER, **layer_descriptor}],
        }
    ).encode()
    pushed = await registry.repository(name).manifests.put(
        tag, manifest, OCI_MANIFEST, RequestContext(caller=actor)
    )
    return pushed.digest


def csrf_of(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match, f"no CSRF token on the page:\n{page.text[:2000]}"
    return match.group(1)


class Browser:
    """An httpx client that keeps the session cookie, with sign-in and form helpers."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def sign_in(self, user: str, password: str | None = None) -> httpx.Response:
        form = await self.client.get("/signin")
        return await self.client.post(
            "/signin",
            data={
                "csrf": csrf_of(form),
                "username": user,
                "password": PASSWORDS[user] if password is None else password,
                "next": "/",
            },
        )

    async def csrf(self) -> str:
        return csrf_of(await self.client.get("/signin?next=/"))

    async def post(self, path: str, data: dict[str, str] | None = None) -> httpx.Response:
        """POST a form with this session's CSRF token."""
        return await self.client.post(path, data={"csrf": await self.csrf(), **(data or {})})


async def site_client(settings: Settings, registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, registry)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        yield client


@pytest.fixture
async def browser(
    settings: Settings,
    registry: Registry,
    accounts: Any,
) -> AsyncIterator[Browser]:
    async for client in site_client(settings, registry):
        yield Browser(client)


@pytest.fixture
async def other_browser(
    settings: Settings,
    registry: Registry,
    accounts: Any,
) -> AsyncIterator[Browser]:
    """A second person with a cookie jar of their own."""
    async for client in site_client(settings, registry):
        yield Browser(client)
