"""`GET /v2/_catalog` with `?n=&last=` pagination."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from cangku.distribution.http import caller_of, page_size
from cangku.distribution.tags import next_link
from cangku.registry import Registry


async def list_repositories(request: Request, registry: Registry) -> Response:
    limit = page_size(request)
    checked = caller_of(request)
    visible = await checked[0].visibility(checked[1]) if checked else None
    page = await registry.list_repositories(limit, request.query_params.get("last"), visible)
    body = json.dumps({"repositories": page.items}).encode()
    return Response(body, media_type="application/json", headers=next_link(request, page, limit))
