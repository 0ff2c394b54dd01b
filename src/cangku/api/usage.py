"""Storage usage and quotas as JSON: `GET /usage`, `/repositories/<name>/usage`, `/quotas`.

Read-only: quotas are set with `cangku quota` until accounts decide who may set them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.registry import Registry


def routes(registry: Registry) -> list[BaseRoute]:
    async def registry_usage(request: Request) -> Response:
        return JSONResponse((await registry.usage()).to_json())

    async def repository_usage(request: Request) -> Response:
        measured = await registry.repository_usage(request.path_params["name"])
        return JSONResponse(measured.to_json())

    async def quotas(request: Request) -> Response:
        return JSONResponse({"quotas": [quota.to_json() for quota in await registry.quotas()]})

    return [
        Route("/usage", json_errors(registry_usage), methods=["GET"]),
        Route("/repositories/{name:path}/usage", json_errors(repository_usage), methods=["GET"]),
        Route("/quotas", json_errors(quotas), methods=["GET"]),
    ]
