"""Storage usage and quotas as JSON: `GET /usage`, `/repositories/<name>/usage`, `/quotas`.

Read-only (quotas are set with `cangku quota`). The registry-wide figures are for admins;
a repository's usage for whoever may pull it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.auth.access import AccessControl
from cangku.auth.permissions import PULL
from cangku.content.errors import Denied
from cangku.registry import Registry


def routes(registry: Registry, access: AccessControl | None) -> list[BaseRoute]:
    async def admin_only(request: Request) -> None:
        if access is None:
            return
        caller = await access.authorize(request, None, None)
        if not caller.principal.is_admin:
            raise Denied("only administrators may see the whole registry's usage")

    async def registry_usage(request: Request) -> Response:
        await admin_only(request)
        return JSONResponse((await registry.usage()).to_json())

    async def repository_usage(request: Request) -> Response:
        if access is not None:
            await access.authorize(request, request.path_params["name"], PULL)
        measured = await registry.repository_usage(request.path_params["name"])
        return JSONResponse(measured.to_json())

    async def quotas(request: Request) -> Response:
        await admin_only(request)
        return JSONResponse({"quotas": [quota.to_json() for quota in await registry.quotas()]})

    return [
        Route("/usage", json_errors(registry_usage), methods=["GET"]),
        Route("/repositories/{name:path}/usage", json_errors(repository_usage), methods=["GET"]),
        Route("/quotas", json_errors(quotas), methods=["GET"]),
    ]
