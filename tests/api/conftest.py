"""In-process API tests: the real app over httpx's ASGI transport, data in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message

from cangku.app import create_app
from cangku.config import Settings
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.registry.gc import CollectionPolicy, GarbageCollector
from cangku.storage.filesystem import FilesystemStorage
from tests.databases import fresh_database


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def database_url(data_dir: Path) -> Iterator[str]:
    """A database at the newest schema, the test's own."""
    data_dir.mkdir()
    with fresh_database(data_dir) as url:
        yield url


@pytest.fixture
def empty_database_url(data_dir: Path) -> Iterator[str]:
    """An empty database, for the tests of the migrations themselves."""
    data_dir.mkdir()
    with fresh_database(data_dir, migrated=False) as url:
        yield url


@pytest.fixture
async def registry(data_dir: Path, database_url: str) -> AsyncIterator[Registry]:
    metadata = MetadataStore.open(database_url)
    yield Registry(FilesystemStorage(data_dir), metadata)
    await metadata.close()


@pytest.fixture
def app(registry: Registry, data_dir: Path) -> ASGIApp:
    # The registry API without accounts; tests/auth covers authentication.
    return create_app(Settings(data=data_dir, auth={"open": True}), registry)


@pytest.fixture
async def client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        yield client


async def raw_request(
    app: ASGIApp, method: str, path: str, query: bytes = b""
) -> tuple[int, bytes]:
    """Send a path exactly as given (httpx would normalise away `..` segments)."""
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"registry.test")],
        "client": ("127.0.0.1", 1234),
        "server": ("registry.test", 80),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


@pytest.fixture
def collector(registry: Registry) -> GarbageCollector:
    """A collector with no grace period: everything unreferenced is garbage at once."""
    return GarbageCollector(registry.storage, registry.metadata, CollectionPolicy(grace=0))
