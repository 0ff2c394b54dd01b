"""Repository facts as JSON: tag history, the version tree, visibility."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.api.errors import json_errors
from cangku.auth.access import AccessControl
from cangku.auth.accounts import Accounts
from cangku.auth.permissions import DELETE, PULL
from cangku.content.errors import RequestInvalid, SizeInvalid
from cangku.content.names import validate_repository_name
from cangku.registry import Registry

MAX_JSON_BODY = 4096


def routes(registry: Registry, access: AccessControl | None) -> list[BaseRoute]:
    async def may_pull(request: Request) -> None:
        """The same rule as /v2: pulling a repository means seeing its tags and history."""
        if access is not None:
            await access.authorize(request, request.path_params["name"], PULL)

    async def tag_history(request: Request) -> Response:
        name, tag = request.path_params["name"], request.path_params["tag"]
        await may_pull(request)
        changes = await registry.repository(name).tags.history(tag)
        return JSONResponse(
            {"repository": name, "tag": tag, "history": [change.to_json() for change in changes]}
        )

    accounts = access.accounts if access is not None else Accounts(registry.metadata)

    async def visibility(request: Request) -> Response:
        """GET: whether anyone may pull. PUT {"public": true|false}: for those who may delete
        in the repository (its owners) and admins."""
        name = validate_repository_name(request.path_params["name"])
        if request.method == "GET":
            await may_pull(request)
        else:
            if access is not None:
                await access.authorize(request, name, DELETE)
            public = _public_flag(await _read_json(request))
            await accounts.set_public(name, public)
        return JSONResponse({"repository": name, "public": await accounts.is_public(name)})

    async def versions(request: Request) -> Response:
        await may_pull(request)
        tree = await registry.repository(request.path_params["name"]).tags.version_tree()
        return JSONResponse(tree.to_json())

    return [
        Route(
            "/repositories/{name:path}/tags/{tag}/history",
            json_errors(tag_history),
            methods=["GET"],
        ),
        Route("/repositories/{name:path}/versions", json_errors(versions), methods=["GET"]),
        Route(
            "/repositories/{name:path}/visibility",
            json_errors(visibility),
            methods=["GET", "PUT"],
        ),
    ]


async def _read_json(request: Request) -> object:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise SizeInvalid("the request body is larger than 4 KiB")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise RequestInvalid("the request body must be JSON") from None


def _public_flag(document: object) -> bool:
    flag = document.get("public") if isinstance(document, dict) else None
    if not isinstance(flag, bool):
        raise RequestInvalid('send {"public": true} or {"public": false}')
    return flag
