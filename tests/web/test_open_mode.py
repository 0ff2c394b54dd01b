"""With --open (no authentication) the UI works without signing in: everyone may do all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cangku.app import create_app
from cangku.config import Settings
from cangku.metadata.store import MetadataStore, sqlite_url
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage

from .conftest import Browser, csrf_of, store_image


@pytest.fixture
async def open_registry(tmp_path: Path) -> AsyncIterator[Registry]:
    metadata = MetadataStore.open(sqlite_url(tmp_path))
    yield Registry(FilesystemStorage(tmp_path), metadata)
    await metadata.close()


@pytest.fixture
async def open_browser(tmp_path: Path, open_registry: Registry) -> AsyncIterator[Browser]:
    settings = Settings(data=tmp_path, auth={"open": True})
    transport = httpx.ASGITransport(app=create_app(settings, open_registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        yield Browser(client)


async def test_open_mode_lists_and_deletes_without_signing_in(
    open_browser: Browser, open_registry: Registry
) -> None:
    await store_image(open_registry, "anyone/app", "1.0.0", actor=None)
    page = await open_browser.client.get("/")
    assert "anyone/app" in page.text and "Sign in" not in page.text
    assert "Save settings" in (await open_browser.client.get("/r/anyone/app")).text
    confirmation = await open_browser.client.get("/r/anyone/app/-/tags/1.0.0/delete")
    response = await open_browser.client.post(
        "/r/anyone/app/-/tags/1.0.0/delete", data={"csrf": csrf_of(confirmation)}
    )
    assert response.status_code == 303
    assert "1.0.0" not in (await open_registry.repository("anyone/app").tags.list(None, None)).items
