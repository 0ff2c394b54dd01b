"""Dispatch of /v2 requests to the handler for each resource and method.

Repository names contain slashes, so each route is a regular expression over the path; the
more specific routes (uploads) are tried before the general ones (blobs).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cangku.content.errors import RegistryError
from cangku.distribution import base, blobs, catalog, manifests, referrers, tags, uploads
from cangku.distribution.errors import error_response, registry_error_response
from cangku.distribution.http import API_VERSION_HEADER, upload_location
from cangku.registry import Registry

Handler = Callable[..., Awaitable[Response]]

ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (re.compile(r"^/v2/?$"), {"GET": base.api_version}),
    (re.compile(r"^/v2/_catalog$"), {"GET": catalog.list_repositories}),
    (re.compile(r"^/v2/(?P<name>.+)/tags/list$"), {"GET": tags.list_tags}),
    (
        re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$"),
        {
            "GET": manifests.get_manifest,
            "HEAD": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
    ),
    (re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/?$"), {"POST": uploads.start_upload}),
    (
        re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]+)$"),
        {
            "GET": uploads.upload_status,
            "PATCH": uploads.append_chunk,
            "PUT": uploads.finish_upload,
            "DELETE": uploads.cancel_upload,
        },
    ),
    (
        re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$"),
        {"GET": blobs.get_blob, "HEAD": blobs.head_blob, "DELETE": blobs.delete_blob},
    ),
    (
        re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)$"),
        {"GET": referrers.list_referrers},
    ),
]


class DistributionApp:
    """The ASGI app behind /v2: routes, calls one handler, maps domain errors to OCI errors."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self.handle(request)
        response.headers.update(API_VERSION_HEADER)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        head = request.method == "HEAD"
        for pattern, methods in ROUTES:
            match = pattern.match(path)
            if match is None:
                continue
            handler = methods.get(request.method)
            if handler is None:
                return error_response(
                    "UNSUPPORTED",
                    f"{request.method} is not supported here",
                    status=405,
                    headers={"Allow": ", ".join(methods)},
                    head=head,
                )
            params: dict[str, Any] = match.groupdict()
            try:
                return await handler(request, self.registry, **params)
            except RegistryError as error:
                location = None
                if "upload_id" in params:
                    location = upload_location(params["name"], params["upload_id"])
                return registry_error_response(error, location=location, head=head)
        return error_response("NAME_UNKNOWN", "no such endpoint", status=404, head=head)
