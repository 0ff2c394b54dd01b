"""The app with accounts and token authentication on, over httpx's ASGI transport."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cangku.app import build_access_control, create_app
from cangku.auth import passwords
from cangku.auth.access import AccessControl
from cangku.auth.accounts import Accounts
from cangku.config import Settings
from cangku.metadata.store import MetadataStore
from cangku.registry import Registry
from cangku.storage.filesystem import FilesystemStorage
from tests.databases import fresh_database

PASSWORDS = {"admin": "admin-password", "jimo": "jimo-password", "lee": "lee-password"}


@pytest.fixture(autouse=True)
def fast_bcrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cost factor only changes the speed; the code paths are the same.
    monkeypatch.setattr(passwords, "BCRYPT_ROUNDS", 4)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data=tmp_path / "data", auth={"trusted_proxies": ["10.0.0.1"]})


@pytest.fixture
def database_url(settings: Settings) -> Iterator[str]:
    settings.data.mkdir()
    with fresh_database(settings.data) as url:
        yield url


@pytest.fixture
async def registry(settings: Settings, database_url: str) -> AsyncIterator[Registry]:
    metadata = MetadataStore.open(database_url)
    yield Registry(FilesystemStorage(settings.data), metadata)
    await metadata.close()


@pytest.fixture
async def accounts(registry: Registry) -> Accounts:
    accounts = Accounts(registry.metadata)
    await accounts.add_user("admin", PASSWORDS["admin"], admin=True)
    await accounts.add_user("jimo", PASSWORDS["jimo"])
    await accounts.add_user("lee", PASSWORDS["lee"])
    return accounts


@pytest.fixture
def access(settings: Settings, registry: Registry) -> AccessControl:
    built = build_access_control(settings, registry)
    assert built is not None
    return built


@pytest.fixture
async def client(
    settings: Settings, registry: Registry, accounts: Accounts
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, registry)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4321))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        yield client


@pytest.fixture
def app_for_address(settings: Settings, registry: Registry, accounts: Accounts) -> object:
    """A client of the same app as `client`, calling from another address."""
    app = create_app(settings, registry)

    @contextlib.asynccontextmanager
    async def open_client(address: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=app, client=(address, 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as c:
            yield c

    return open_client


def basic(user: str, password: str | None = None) -> dict[str, str]:
    secret = PASSWORDS[user] if password is None else password
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


async def token_for(client: httpx.AsyncClient, user: str | None, *scopes: str) -> str:
    response = await client.get(
        "/auth/token",
        params=[("service", "cangku"), *(("scope", scope) for scope in scopes)],
        headers=basic(user) if user else {},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class As:
    """Temporarily send every request of `client` with these credentials."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers

    def __enter__(self) -> httpx.AsyncClient:
        self.client.headers.update(self.headers)
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.headers.pop("Authorization", None)
