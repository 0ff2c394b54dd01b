"""Error pages take their status and headers from the one error table (content/errors.py)."""

# ruff: noqa: F811  (pytest fixtures take the names of the fixtures they use)
from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from cangku.auth.errors import Challenge
from cangku.content.errors import (
    BlobUnknown,
    NameInvalid,
    RegistryError,
    TooManyRequests,
)
from cangku.registry import Registry
from cangku.web.sessions import SessionCookies
from cangku.web.site import Site, Viewer
from tests.web.conftest import (  # noqa: F401  (fixtures)
    Browser,
    accounts,
    browser,
    database_url,
    fast_bcrypt,
    registry,
    settings,
)


async def test_a_rate_limited_sign_in_says_when_to_come_back(browser: Browser) -> None:
    for _ in range(10):
        assert (await browser.sign_in("jimo", "wrong-guess")).status_code == 401
    limited = await browser.sign_in("jimo")
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0


async def _page_for(registry: Registry, error: RegistryError) -> httpx.Response:
    site = Site(registry, None, SessionCookies(b"k" * 32))

    async def failing(request: Request, viewer: Viewer) -> Response:
        raise error

    transport = httpx.ASGITransport(app=_asgi(site.page(failing)))
    async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
        return await client.get("/page")


def _asgi(endpoint: Callable[[Request], Awaitable[Response]]) -> Router:
    return Router([Route("/page", endpoint)])


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (TooManyRequests("slow down", retry_after=3), 429, {"Retry-After": "3"}),
        (BlobUnknown("no such blob"), 404, {}),
        (NameInvalid("bad name"), 404, {}),
        # Pages never challenge: a refused credential is a 403 without WWW-Authenticate.
        (Challenge("sign in", 'Bearer realm="x"'), 403, {"WWW-Authenticate": None}),
    ],
)
async def test_error_pages_use_the_error_table(
    registry: Registry, error: RegistryError, status: int, headers: dict[str, str | None]
) -> None:
    page = await _page_for(registry, error)
    assert page.status_code == status
    assert error.message in page.text
    for name, value in headers.items():
        assert page.headers.get(name) == value


async def test_a_rate_limited_password_change_says_when_to_come_back(browser: Browser) -> None:
    await browser.sign_in("jimo")
    form = {"new_password": "a-new-long-password", "repeat_password": "a-new-long-password"}
    for _ in range(10):
        wrong = await browser.post("/account/password", {"current_password": "guess", **form})
        assert wrong.status_code == 400
    limited = await browser.post("/account/password", {"current_password": "jimo-password", **form})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    assert "Too many failed attempts" in limited.text
