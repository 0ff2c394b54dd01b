"""Repository facts as JSON: tag history, the version tree, the tag policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.auth.access import AccessControl, Challenge
from cangku.auth.permissions import PULL
from cangku.content.errors import (
    Denied,
    ManifestInvalid,
    NameInvalid,
    NameUnknown,
    RegistryError,
    TooManyRequests,
    Unauthorized,
)
from cangku.registry import Registry

STATUS = {
    NameUnknown: 404,
    NameInvalid: 400,
    ManifestInvalid: 400,
    Unauthorized: 401,
    Denied: 403,
    TooManyRequests: 429,
}


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
            _json_errors(tag_history),
            methods=["GET"],
        ),
        Route("/repositories/{name:path}/versions", _json_errors(versions), methods=["GET"]),
    ]


def _json_errors(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Domain errors as `{"error": {"code", "message"}}` with a fitting status."""

    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except RegistryError as error:
            status = next((s for kind, s in STATUS.items() if isinstance(error, kind)), 400)
            headers = {"WWW-Authenticate": error.header} if isinstance(error, Challenge) else None
            return JSONResponse(
                {"error": {"code": error.code, "message": error.message}},
                status_code=status,
                headers=headers,
            )

    return handle
