"""`GET /v2/`: the API version check every client makes first."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cangku.distribution.http import API_VERSION_HEADER
from cangku.registry import Registry


async def api_version(request: Request, registry: Registry) -> Response:
    """`GET /v2/` and `HEAD /v2/` (the same answer without a body, RFC 9110 §9.3.2)."""
    headers = API_VERSION_HEADER | {"Content-Length": "2"}
    body = b"" if request.method == "HEAD" else b"{}"
    return Response(body, media_type="application/json", headers=headers)
