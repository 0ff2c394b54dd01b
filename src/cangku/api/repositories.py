"""Repository facts as JSON: tag history, the version tree, the tag policy."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.auth.access import AccessControl
from cangku.auth.permissions import PULL
from cangku.registry import Registry


def routes(registry: Registry, access: AccessControl | None) -> list[BaseRoute]:
    async def may_pull(request: Request) -> None:
        """The same rule as /v2: pulling a repository means seeing its tags and history."""
        if access is not None:
            await access.authorize(request, request.path_params["name"], PULL)

    async def tag_history(request: Request) -> Response:
        name, tag = request.path_params["name"], request.path_params["tag"]
        await may_pull(request)
        changes = await registry.tag_history(name, tag)
        return JSONResponse(
            {"repository": name, "tag": tag, "history": [change.to_json() for change in changes]}
        )

    async def versions(request: Request) -> Response:
        await may_pull(request)
        tree = await registry.version_tree(request.path_params["name"])
        return JSONResponse(tree.to_json())

    return [
        Route(
            "/repositories/{name:path}/tags/{tag}/history",
            json_errors(tag_history),
            methods=["GET"],
        ),
        Route("/repositories/{name:path}/versions", json_errors(versions), methods=["GET"]),
    ]
