"""Repository facts as JSON: tag history, the version tree, the tag policy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cangku.content.errors import ManifestInvalid, NameInvalid, NameUnknown, RegistryError
from cangku.registry import Registry

STATUS = {NameUnknown: 404, NameInvalid: 400, ManifestInvalid: 400}


def routes(registry: Registry) -> list[BaseRoute]:
    async def tag_history(request: Request) -> Response:
        name, tag = request.path_params["name"], request.path_params["tag"]
        changes = await registry.tag_history(name, tag)
        return JSONResponse(
            {"repository": name, "tag": tag, "history": [change.to_json() for change in changes]}
        )

    async def versions(request: Request) -> Response:
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
            return JSONResponse(
                {"error": {"code": error.code, "message": error.message}}, status_code=status
            )

    return handle
