"""Dispatch of /v2 requests to the handler for each resource and method.

Repository names contain slashes, so each route is a regular expression over the path; the
more specific routes (uploads) are tried before the general ones (blobs). Each method names
the action it needs, which the access control checks before the handler runs.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from cangku.auth.access import CATALOG, AccessControl
from cangku.auth.permissions import DELETE, PULL, PUSH
from cangku.content.errors import NameUnknown, RegistryError, Unsupported
from cangku.distribution import base, blobs, catalog, manifests, referrers, tags, uploads
from cangku.distribution.http import API_VERSION_RAW, upload_location
from cangku.http_errors import render_error
from cangku.proxy.routing import REQUESTED_NAME
from cangku.registry import Registry

Handler = Callable[..., Awaitable[Response]]
Methods = dict[str, tuple[Handler, str | None]]

# (pattern, route name, methods). The name labels metrics and spans: never the repository.
# Tried in order: the busiest first (manifests, then blobs), each failed try costs a regular
# expression over the path. The patterns exclude each other (each ends in its own literal
# segment) but for uploads, which must come before blobs.
ROUTES: list[tuple[re.Pattern[str], str, Methods]] = [
    (
        re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)"),
        "v2.manifest",
        {
            "GET": (manifests.get_manifest, PULL),
            "HEAD": (manifests.get_manifest, PULL),
            "PUT": (manifests.put_manifest, PUSH),
            "DELETE": (manifests.delete_manifest, DELETE),
        },
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?"),
        "v2.upload_start",
        {"POST": (uploads.start_upload, PUSH)},
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)"),
        "v2.upload",
        {
            "GET": (uploads.upload_status, PUSH),
            "PATCH": (uploads.append_chunk, PUSH),
            "PUT": (uploads.finish_upload, PUSH),
            "DELETE": (uploads.cancel_upload, PUSH),
        },
    ),
    (
        re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)"),
        "v2.blob",
        {
            "GET": (blobs.get_blob, PULL),
            "HEAD": (blobs.head_blob, PULL),
            "DELETE": (blobs.delete_blob, DELETE),
        },
    ),
    (re.compile(r"/v2/(?P<name>.+)/tags/list"), "v2.tags", {"GET": (tags.list_tags, PULL)}),
    (
        re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)"),
        "v2.referrers",
        {"GET": (referrers.list_referrers, PULL)},
    ),
    (re.compile(r"/v2/?"), "v2.base", {"GET": (base.api_version, None)}),
    (re.compile(r"/v2/_catalog"), "v2.catalog", {"GET": (catalog.list_repositories, CATALOG)}),
]

Route = tuple[re.Pattern[str], str, Methods]
# Each pattern ends in a literal segment and at most one `[^/]+` (or `/?`), which fixes the
# path's second-to-last segment: the routes a path can reach, in ROUTES' order, by that
# segment ("/v2/" and "/v2/_catalog": "v2"; ".../blobs/uploads": "blobs"; ".../uploads/"
# and ".../uploads/<id>": "uploads"). Other paths try every route. Without it, `GET /v2/`
# failed six regular expressions before its own, a blob HEAD three.
_SECOND_TO_LAST: dict[str, tuple[str, ...]] = {
    "manifests": ("v2.manifest",),
    "uploads": ("v2.upload_start", "v2.upload"),
    "blobs": ("v2.upload_start", "v2.blob"),
    "tags": ("v2.tags",),
    "referrers": ("v2.referrers",),
    "v2": ("v2.base", "v2.catalog"),
}
_BY_SEGMENT: dict[str, list[Route]] = {
    segment: [route for route in ROUTES if route[1] in names]
    for segment, names in _SECOND_TO_LAST.items()
}


def routes_for(path: str) -> list[Route]:
    """The routes `path` may match, in ROUTES' order (tests/unit/test_route_order.py checks
    that the first match is the same as over all of ROUTES)."""
    parts = path.rsplit("/", 2)
    if len(parts) == 3:
        candidates = _BY_SEGMENT.get(parts[1])
        if candidates is not None:
            return candidates
    return ROUTES


class DistributionApp:
    """The ASGI app behind /v2: routes, checks access, calls one handler, maps domain errors
    to OCI errors. `access` None is the explicit no-authentication mode (`--open`)."""

    def __init__(self, registry: Registry, access: AccessControl | None) -> None:
        self.registry = registry
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self.handle(request)
        # On every answer under /v2, once: handlers must not set it (a response sent in
        # place of the returned one adds it itself: blobs.py). Appended to the raw list:
        # `headers.update` looks for the name among the others first (~130 instructions).
        response.raw_headers.append(API_VERSION_RAW)
        if scope["method"] == "HEAD":
            # RFC 9110 §9.3.2: HEAD is GET without the body (the headers, lengths included).
            async def send_headers_only(message: Message) -> None:
                if message["type"] == "http.response.body" and message.get("body"):
                    message = {**message, "body": b""}
                await send(message)

            await response(scope, receive, send_headers_only)
            return
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        path = request.scope["path"]
        head = request.method == "HEAD"
        for pattern, route_name, methods in routes_for(path):
            match = pattern.fullmatch(path)
            if match is None:
                continue
            request.scope["cangku.route"] = route_name
            route = methods.get(request.method)
            if route is None and head:
                route = methods.get("GET")  # Every GET resource answers HEAD too.
            if route is None:
                allowed = [*methods, "HEAD"] if "GET" in methods else list(methods)
                return render_error(
                    Unsupported(f"{request.method} is not supported here"),
                    headers={"Allow": ", ".join(dict.fromkeys(allowed))},
                    head=head,
                )
            handler, action = route
            params: dict[str, Any] = match.groupdict()
            try:
                if self.access is not None:
                    wanted = (
                        uploads.wanted_access(request) if handler is uploads.start_upload else []
                    )
                    caller = await self.access.authorize(
                        request,
                        params.get("name"),
                        action,
                        wanted=wanted,
                        # proxy/routing.py: the name the client used, when it rewrote it.
                        requested=request.scope.get(REQUESTED_NAME),
                    )
                    request.scope["cangku.access"] = self.access
                    request.scope["cangku.caller"] = caller
                return await handler(request, self.registry, **params)
            except RegistryError as error:
                location = None
                if "upload_id" in params:
                    location = upload_location(params["name"], params["upload_id"])
                return render_error(error, location=location, head=head)
        request.scope["cangku.route"] = "v2.unmatched"
        return render_error(NameUnknown("no such endpoint"), head=head)
