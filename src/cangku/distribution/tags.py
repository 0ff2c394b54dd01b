"""`GET /v2/<name>/tags/list` with `?n=&last=` pagination."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from cangku.distribution.http import page_size, request_path
from cangku.registry import Registry
from cangku.registry.records import Page


async def list_tags(request: Request, registry: Registry, name: str) -> Response:
    limit = page_size(request)
    page = await registry.repository(name).tags.list(limit, request.query_params.get("last"))
    body = json.dumps({"name": name, "tags": page.items}).encode()
    return Response(body, media_type="application/json", headers=next_link(request, page, limit))


def next_link(request: Request, page: Page, limit: int | None) -> dict[str, str]:
    """OCI dist-spec: a `Link: <...>; rel="next"` header when more results remain."""
    if page.next_last is None:
        return {}
    query = urlencode(
        {"n": limit if limit is not None else len(page.items), "last": page.next_last}
    )
    return {"Link": f'<{request_path(request)}?{query}>; rel="next"'}
