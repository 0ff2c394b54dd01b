"""`GET /v2/`: the API version check every client makes first."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cangku.registry import Registry


async def api_version(request: Request, registry: Registry) -> Response:
    """`GET /v2/` (and `HEAD /v2/`, which the router answers as GET without the body); the
    router adds `Docker-Distribution-API-Version`, as to every /v2 answer."""
    return Response(b"{}", media_type="application/json")
