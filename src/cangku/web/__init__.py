"""The human UI: server-rendered pages at `/`, on the same port as `/v2/`."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from cangku.auth.access import AccessControl
from cangku.config import EventSettings, ProxySettings
from cangku.registry import Registry
from cangku.web import (
    account,
    admin,
    mirrors,
    repositories,
    retention,
    signin,
    usage_pages,
    webhooks,
)
from cangku.web.sessions import SessionCookies
from cangku.web.site import Site

STATIC = Path(__file__).parent / "static"


def web_app(
    registry: Registry,
    access: AccessControl | None,
    session_key: bytes,
    proxy: ProxySettings | None = None,
    events: EventSettings | None = None,
) -> Starlette:
    """`access` None is the no-authentication mode: everyone may do everything. `proxy`:
    the pull-through cache's upstreams (the mirror pages); `events`: the SSRF guard's
    setting for webhooks made on the pages."""
    scheme_of = (lambda request: access.base_url(request).split(":", 1)[0]) if access else None
    site = Site(registry, access, SessionCookies(session_key, scheme_of), proxy=proxy)
    routes: list[BaseRoute] = [
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        *signin.routes(site),
        *account.routes(site),
        *admin.routes(site),
        # Issue 17: before repositories' catch-all /r/{name:path}.
        *retention.routes(site, repositories.repository_url),
        *webhooks.routes(site, events or EventSettings()),  # issue 16
        *usage_pages.routes(site),
        *mirrors.routes(site),  # issue 13
        *repositories.routes(site),
    ]

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        viewer = await site.viewer(request)
        if error.status_code == 405:
            return site.error_page(
                request, viewer, 405, "Not allowed", "This page does not take that method."
            )
        return site.error_page(request, viewer, 404, "Not found", "There is no such page.")

    async def server_error(request: Request, error: Exception) -> Response:
        # Logged by the server; the page shows no stack trace.
        return site.error_page(
            request, None, 500, "Something went wrong", "The server could not show this page."
        )

    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
