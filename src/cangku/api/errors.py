"""Domain errors as JSON for the /api/v1 endpoints: `{"error": {"code", "message"}}`,
with the statuses and headers of the error table (`content/errors.py`), as on /v2."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from cangku.content.errors import RegistryError
from cangku.http_errors import render_error

Handler = Callable[[Request], Awaitable[Response]]


def json_errors(handler: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except RegistryError as error:
            return render_error(error, "api")

    return handle
